// cloudtaser-csi: the node agent's CSI node plugin (see package csi). It runs
// beside the agent in the chart's DaemonSet pod and serves two unix sockets:
// the CSI endpoint under the kubelet's plugins directory and the registration
// socket the kubelet's plugin watcher finds in plugins_registry.
//
//	cloudtaser-csi --kubelet-dir /var/lib/kubelet --source /run/cloudtaser --node NAME
package main

import (
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	registration "k8s.io/kubelet/pkg/apis/pluginregistration/v1"

	"github.com/cloudtaser/cloudtaser/bpf/csi"
)

var version = "dev"

// staging: this container's private, read-only view of the agent's socket directory.
const staging = "/run/cloudtaser-csi/agent"

func main() {
	log.SetFlags(0)
	log.SetPrefix("cloudtaser-csi: ")
	if err := run(); err != nil {
		log.Printf("error: %v", err)
		os.Exit(1)
	}
}

func run() error {
	kubeletDir := flag.String("kubelet-dir", "/var/lib/kubelet", "the kubelet's --root-dir, at the same path in this container")
	source := flag.String("source", "/run/cloudtaser", "the agent's socket directory, as this container sees it")
	socket := flag.String("socket", "agent.sock", "the agent socket's file name in --source")
	node := flag.String("node", os.Getenv("NODE_NAME"), "this node's name (default $NODE_NAME)")
	flag.Parse()
	if flag.NArg() != 0 {
		return fmt.Errorf("unexpected argument %q", flag.Arg(0))
	}
	if *node == "" {
		return errors.New("--node (or $NODE_NAME) is required")
	}
	if fi, err := os.Stat(*source); err != nil || !fi.IsDir() {
		return fmt.Errorf("--source %s is not a directory: mount the agent's socket directory there", *source)
	}
	if err := csi.Stage(*source, staging); err != nil {
		return fmt.Errorf("staging the agent's socket directory: %w", err)
	}
	endpoint := filepath.Join(*kubeletDir, "plugins", csi.Driver, "csi.sock")
	regSocket := filepath.Join(*kubeletDir, "plugins_registry", csi.Driver+"-reg.sock")
	failed := make(chan error, 3)
	plugin := &csi.Plugin{
		Version: version, NodeID: *node, KubeletDir: filepath.Clean(*kubeletDir), Source: staging,
		Socket: *socket, Endpoint: endpoint,
		Registered: func(ok bool, reason string) {
			if ok {
				log.Printf("registered with the kubelet as %s (node %s)", csi.Driver, *node)
				return
			}
			failed <- fmt.Errorf("the kubelet refused the registration: %s", reason)
		},
	}
	servers := []*grpc.Server{}
	ours := map[string]uint64{} // socket path -> inode: removed at exit only if still ours
	serve := func(path string, register func(*grpc.Server)) error {
		if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
			return fmt.Errorf("creating %s: %w", filepath.Dir(path), err)
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("removing the old socket %s: %w", path, err)
		}
		l, err := net.Listen("unix", path)
		if err != nil {
			return fmt.Errorf("listening on %s: %w", path, err)
		}
		l.(*net.UnixListener).SetUnlinkOnClose(false) // removed below, if still ours
		var st unix.Stat_t
		if err := unix.Stat(path, &st); err == nil {
			ours[path] = st.Ino
		}
		s := grpc.NewServer()
		register(s)
		servers = append(servers, s)
		go func() { failed <- s.Serve(l) }()
		return nil
	}
	if err := serve(endpoint, func(s *grpc.Server) {
		csipb.RegisterIdentityServer(s, plugin)
		csipb.RegisterNodeServer(s, plugin)
	}); err != nil {
		return err
	}
	// Last: the kubelet dials the CSI endpoint as soon as it sees the registration socket.
	if err := serve(regSocket, func(s *grpc.Server) { registration.RegisterRegistrationServer(s, plugin) }); err != nil {
		return err
	}
	log.Printf("serving %s at %s (agent socket directory %s)", csi.Driver, endpoint, *source)
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	var err error
	select {
	case sig := <-stop:
		log.Printf("%s: stopping", sig)
	case err = <-failed:
	}
	for _, s := range servers {
		s.Stop()
	}
	// The kubelet deregisters the plugin when its socket goes; a successor (a rolling
	// update) may have bound new sockets at the same paths already: those stay.
	for path, ino := range ours {
		var st unix.Stat_t
		if unix.Stat(path, &st) == nil && st.Ino == ino {
			_ = os.Remove(path)
		}
	}
	return err
}
