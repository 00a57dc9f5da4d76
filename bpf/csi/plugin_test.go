package csi

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// unmountAll removes every mount stacked on path.
func unmountAll(path string) {
	for {
		if m, _ := IsMountPoint(path); !m {
			return
		}
		if unix.Unmount(path, unix.MNT_DETACH) != nil {
			return
		}
	}
}

// env is a kubelet directory whose pods/ is a shared mount with a peer: what the plugin
// mounts under pods/ shows up under peer/ as it does in the kubelet's mount namespace.
type env struct {
	plugin *Plugin
	pods   string // <kubelet>/pods
	peer   string // the kubelet's view of pods/
	target string
}

func fixture(t *testing.T) env {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("bind mounts need root")
	}
	dir, err := os.MkdirTemp("/tmp", "csi") // short: a socket path is at most 107 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	source := filepath.Join(dir, "agent")
	kubelet := filepath.Join(dir, "k")
	pods := filepath.Join(kubelet, "pods")
	peer := filepath.Join(dir, "peer")
	staging := filepath.Join(dir, "staged")
	for _, d := range []string{source, pods, peer} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	l, err := net.Listen("unix", filepath.Join(source, "agent.sock"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("ok"))
			c.Close()
		}
	}()
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(unix.Mount("tmpfs", pods, "tmpfs", 0, "size=1m"))
	t.Cleanup(func() { unmountAll(peer); unmountAll(pods); unmountAll(staging) })
	must(unix.Mount("", pods, "", unix.MS_SHARED, ""))
	must(unix.Mount(pods, peer, "", unix.MS_BIND, "")) // a peer: mounts propagate both ways
	must(Stage(source, staging))
	target := filepath.Join(pods, "0f1e-uid", "volumes", "kubernetes.io~csi", "cloudtaser-agent", "mount")
	must(os.MkdirAll(filepath.Dir(target), 0o750)) // the kubelet makes the volume's directory
	return env{
		plugin: &Plugin{NodeID: "n", KubeletDir: kubelet, Source: staging, Socket: "agent.sock"},
		pods:   pods, peer: peer, target: target,
	}
}

func publish(target string) *csipb.NodePublishVolumeRequest {
	return &csipb.NodePublishVolumeRequest{
		VolumeId: "csi-0123", TargetPath: target, Readonly: true,
		VolumeContext: map[string]string{EphemeralKey: "true", "csi.storage.k8s.io/pod.name": "p"},
	}
}

func TestPublishMountsTheAgentSocketReadOnlyInTheKubeletsViewToo(t *testing.T) {
	e := fixture(t)
	ctx := context.Background()
	for range 2 { // the kubelet may publish again: the same mount, not a second one
		if _, err := e.plugin.NodePublishVolume(ctx, publish(e.target)); err != nil {
			t.Fatal(err)
		}
	}
	seen := filepath.Join(e.peer, strings.TrimPrefix(e.target, e.pods))
	for _, view := range []string{e.target, seen} {
		c, err := net.Dial("unix", filepath.Join(view, "agent.sock"))
		if err != nil {
			t.Fatalf("the agent socket through %s: %v", view, err)
		}
		buf := make([]byte, 2)
		if n, _ := c.Read(buf); string(buf[:n]) != "ok" {
			t.Fatalf("read %q through %s", buf[:n], view)
		}
		c.Close()
		err = os.WriteFile(filepath.Join(view, "planted"), []byte("x"), 0o644)
		if !errors.Is(err, unix.EROFS) {
			t.Fatalf("writing into %s: %v, want EROFS", view, err)
		}
		var st unix.Statfs_t
		if err := unix.Statfs(view, &st); err != nil {
			t.Fatal(err)
		}
		for _, flag := range []int64{unix.ST_RDONLY, unix.ST_NOSUID, unix.ST_NODEV, unix.ST_NOEXEC} {
			if st.Flags&flag == 0 {
				t.Fatalf("%s: mount flags %#x lack %#x", view, st.Flags, flag)
			}
		}
	}
	var st unix.Stat_t
	if err := unix.Stat(e.target, &st); err != nil {
		t.Fatal(err)
	}
	unix.Unmount(e.target, unix.MNT_DETACH) // a second publish would show as a second layer
	if m, _ := IsMountPoint(e.target); m {
		t.Fatal("two publishes stacked two mounts")
	}
	if _, err := e.plugin.NodePublishVolume(ctx, publish(e.target)); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := e.plugin.NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{VolumeId: "csi-0123", TargetPath: e.target}); err != nil {
			t.Fatal(err)
		}
	}
	for _, view := range []string{e.target, seen} {
		if _, err := os.Stat(view); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s after unpublish: %v", view, err)
		}
	}
}

func TestPublishRefusesWhatItDoesNotServe(t *testing.T) {
	e := fixture(t)
	volume := filepath.Dir(e.target)
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	// a symlink on the way, as node root or a confused kubelet might leave one
	real := filepath.Join(e.pods, "real-uid", "volumes", "kubernetes.io~csi", "v")
	must(os.MkdirAll(real, 0o750))
	must(os.MkdirAll(filepath.Join(e.pods, "link-uid", "volumes", "kubernetes.io~csi"), 0o750))
	must(os.Symlink(real, filepath.Join(e.pods, "link-uid", "volumes", "kubernetes.io~csi", "v")))
	cases := map[string]func(*csipb.NodePublishVolumeRequest){
		"serves only ephemeral inline volumes": func(r *csipb.NodePublishVolumeRequest) { delete(r.VolumeContext, EphemeralKey) },
		"set readOnly: true":                   func(r *csipb.NodePublishVolumeRequest) { r.Readonly = false },
		"volumeAttributes.path":                func(r *csipb.NodePublishVolumeRequest) { r.VolumeContext["path"] = "/etc" },
		"volume_id is empty":                   func(r *csipb.NodePublishVolumeRequest) { r.VolumeId = "" },
		"is not " + e.pods:                     func(r *csipb.NodePublishVolumeRequest) { r.TargetPath = "/etc/mount" },
		"kubernetes.io~csi/<volume>/mount": func(r *csipb.NodePublishVolumeRequest) {
			r.TargetPath = filepath.Join(volume, "other")
		},
		"/mount\" is not ": func(r *csipb.NodePublishVolumeRequest) { r.TargetPath = volume + "/../x/mount" },
		"its directory: too many levels of symbolic links": func(r *csipb.NodePublishVolumeRequest) {
			r.TargetPath = filepath.Join(e.pods, "link-uid", "volumes", "kubernetes.io~csi", "v", "mount")
		},
	}
	for want, change := range cases {
		req := publish(e.target)
		change(req)
		_, err := e.plugin.NodePublishVolume(context.Background(), req)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v", want, err)
		}
		if m, _ := IsMountPoint(req.TargetPath); m {
			t.Fatalf("%s: mounted anyway", want)
		}
	}
	if m, _ := IsMountPoint(filepath.Join(real, "mount")); m {
		t.Fatal("a mount landed through the symlink")
	}
	_, err := e.plugin.NodeUnpublishVolume(context.Background(), &csipb.NodeUnpublishVolumeRequest{
		VolumeId: "v", TargetPath: "/run/cloudtaser/agent.sock"})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("unpublish outside the pods directory: %v", err)
	}
}

// A directory whose name holds a no-break space and another pod's target path makes a line of
// the mount table that splits, with strings.Fields, into that target: statx is not fooled.
func TestAMountWithATrickNameIsNotTheTarget(t *testing.T) {
	e := fixture(t)
	trick := filepath.Join(e.pods, "x\u00a0"+e.target)
	if err := os.MkdirAll(trick, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", trick, "tmpfs", 0, "size=64k"); err != nil {
		t.Fatal(err)
	}
	defer unmountAll(trick)
	if m, err := IsMountPoint(e.target); m || err != nil {
		t.Fatalf("IsMountPoint(target) = %v, %v", m, err)
	}
	if _, err := e.plugin.NodePublishVolume(context.Background(), publish(e.target)); err != nil {
		t.Fatal(err)
	}
	if m, _ := IsMountPoint(e.target); !m {
		t.Fatal("publish skipped: the trick name passed for the target")
	}
}

func TestProbeWaitsForTheAgentSocket(t *testing.T) {
	e := fixture(t)
	if _, err := e.plugin.Probe(context.Background(), &csipb.ProbeRequest{}); err != nil {
		t.Fatal(err)
	}
	e.plugin.Socket = "absent.sock"
	if _, err := e.plugin.Probe(context.Background(), &csipb.ProbeRequest{}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("probe without the socket: %v", err)
	}
}
