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

// fixture: an agent socket directory with a listening socket, and a target path.
func fixture(t *testing.T) (*Plugin, string) {
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
	if err := os.Mkdir(source, 0o755); err != nil {
		t.Fatal(err)
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
	target := filepath.Join(dir, "pods", "uid", "mount")
	t.Cleanup(func() {
		for {
			if m, _ := IsMountPoint(target); !m {
				return
			}
			unix.Unmount(target, unix.MNT_DETACH)
		}
	})
	return &Plugin{NodeID: "n", Source: source, Socket: "agent.sock"}, target
}

func publish(target string) *csipb.NodePublishVolumeRequest {
	return &csipb.NodePublishVolumeRequest{
		VolumeId: "csi-0123", TargetPath: target, Readonly: true,
		VolumeContext: map[string]string{EphemeralKey: "true", "csi.storage.k8s.io/pod.name": "p"},
	}
}

func TestPublishMountsTheAgentSocketReadOnly(t *testing.T) {
	p, target := fixture(t)
	ctx := context.Background()
	for range 2 { // the kubelet may publish again: the same mount, not a second one
		if _, err := p.NodePublishVolume(ctx, publish(target)); err != nil {
			t.Fatal(err)
		}
	}
	c, err := net.Dial("unix", filepath.Join(target, "agent.sock"))
	if err != nil {
		t.Fatalf("the agent socket through the volume: %v", err)
	}
	buf := make([]byte, 2)
	if n, _ := c.Read(buf); string(buf[:n]) != "ok" {
		t.Fatalf("read %q through the volume", buf[:n])
	}
	c.Close()
	err = os.WriteFile(filepath.Join(target, "planted"), []byte("x"), 0o644)
	if !errors.Is(err, unix.EROFS) {
		t.Fatalf("writing into the volume: %v, want EROFS", err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(target, &st); err != nil {
		t.Fatal(err)
	}
	for _, flag := range []int64{unix.ST_RDONLY, unix.ST_NOSUID, unix.ST_NODEV, unix.ST_NOEXEC} {
		if st.Flags&flag == 0 {
			t.Fatalf("mount flags %#x lack %#x", st.Flags, flag)
		}
	}
	mounts := 0
	data, _ := os.ReadFile("/proc/self/mountinfo")
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == target {
			mounts++
		}
	}
	if mounts != 1 {
		t.Fatalf("%d mounts on the target after two publishes", mounts)
	}
	for range 2 {
		if _, err := p.NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{VolumeId: "csi-0123", TargetPath: target}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(target); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("target after unpublish: %v", err)
	}
}

func TestPublishRefusesWhatItDoesNotServe(t *testing.T) {
	p, target := fixture(t)
	cases := map[string]func(*csipb.NodePublishVolumeRequest){
		"serves only ephemeral inline volumes": func(r *csipb.NodePublishVolumeRequest) { delete(r.VolumeContext, EphemeralKey) },
		"set readOnly: true":                   func(r *csipb.NodePublishVolumeRequest) { r.Readonly = false },
		"volumeAttributes.path":                func(r *csipb.NodePublishVolumeRequest) { r.VolumeContext["path"] = "/etc" },
		"is not an absolute path":              func(r *csipb.NodePublishVolumeRequest) { r.TargetPath = "rel" },
		"volume_id is empty":                   func(r *csipb.NodePublishVolumeRequest) { r.VolumeId = "" },
	}
	for want, change := range cases {
		req := publish(target)
		change(req)
		_, err := p.NodePublishVolume(context.Background(), req)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v", want, err)
		}
		if m, _ := IsMountPoint(target); m {
			t.Fatalf("%s: mounted anyway", want)
		}
	}
}

func TestProbeWaitsForTheAgentSocket(t *testing.T) {
	p, _ := fixture(t)
	if _, err := p.Probe(context.Background(), &csipb.ProbeRequest{}); err != nil {
		t.Fatal(err)
	}
	p.Socket = "absent.sock"
	if _, err := p.Probe(context.Background(), &csipb.ProbeRequest{}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("probe without the socket: %v", err)
	}
}

func TestUnescapeReadsMountinfoEscapes(t *testing.T) {
	if got := unescape(`/a\040b\134c`); got != `/a b\c` {
		t.Fatalf("unescape = %q", got)
	}
}
