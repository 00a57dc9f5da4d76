// Package csi is the node agent's CSI node plugin: it gives each injected pod
// the agent's registration socket through an ephemeral inline CSI volume
// (driver csi.cloudtaser.io), which every Pod Security level allows, instead
// of a hostPath volume, which baseline and restricted refuse. SPIFFE/SPIRE's
// CSI driver answers the same question for its agent's socket.
//
// NodePublishVolume bind-mounts the agent's socket directory read-only
// (nosuid, nodev, noexec) onto the kubelet's target path; connecting to a
// unix socket needs no write access to its file system, and a directory (not
// the socket file) keeps working when the agent restarts and binds a new
// socket. The plugin registers itself with the kubelet's plugin watcher
// (pluginregistration v1), so no node-driver-registrar sidecar is needed.
// Registration with the agent keeps its identity checks: the agent still
// learns a caller from SO_PEERCRED and its cgroup, whatever path it came by.
package csi

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strings"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	registration "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// Driver is the CSI driver's name: the CSIDriver object and the pods' volumes use it.
const Driver = "csi.cloudtaser.io"

// EphemeralKey is set to "true" by the kubelet for an ephemeral inline volume.
const EphemeralKey = "csi.storage.k8s.io/ephemeral"

// Plugin serves the CSI identity and node services and the kubelet's registration service.
type Plugin struct {
	csipb.UnimplementedIdentityServer
	csipb.UnimplementedNodeServer
	registration.UnimplementedRegistrationServer

	Version    string
	NodeID     string
	KubeletDir string // the kubelet's --root-dir: every target path lies under its pods/
	Source     string // the staged, read-only view of the agent's socket directory (Stage)
	Socket     string // the agent socket's file name in Source (Probe checks it)
	Endpoint   string // the CSI socket's path, as the kubelet sees it
	// Registered is called with the kubelet's answer to the registration.
	Registered func(ok bool, reason string)
}

// --- identity -------------------------------------------------------------------------------

func (p *Plugin) GetPluginInfo(context.Context, *csipb.GetPluginInfoRequest) (*csipb.GetPluginInfoResponse, error) {
	return &csipb.GetPluginInfoResponse{Name: Driver, VendorVersion: p.Version}, nil
}

func (p *Plugin) GetPluginCapabilities(context.Context, *csipb.GetPluginCapabilitiesRequest) (*csipb.GetPluginCapabilitiesResponse, error) {
	return &csipb.GetPluginCapabilitiesResponse{}, nil // a node plugin only: no controller service
}

// Probe is ready while the agent's socket is there to be mounted.
func (p *Plugin) Probe(context.Context, *csipb.ProbeRequest) (*csipb.ProbeResponse, error) {
	fi, err := os.Stat(filepath.Join(p.Source, p.Socket))
	if err != nil || fi.Mode()&os.ModeSocket == 0 {
		return nil, status.Errorf(codes.FailedPrecondition, "the agent's socket %s is not there yet",
			filepath.Join(p.Source, p.Socket))
	}
	return &csipb.ProbeResponse{}, nil
}

// --- node -----------------------------------------------------------------------------------

func (p *Plugin) NodeGetInfo(context.Context, *csipb.NodeGetInfoRequest) (*csipb.NodeGetInfoResponse, error) {
	return &csipb.NodeGetInfoResponse{NodeId: p.NodeID}, nil
}

func (p *Plugin) NodeGetCapabilities(context.Context, *csipb.NodeGetCapabilitiesRequest) (*csipb.NodeGetCapabilitiesResponse, error) {
	return &csipb.NodeGetCapabilitiesResponse{}, nil // no staging, no stats
}

// NodePublishVolume mounts the agent's socket directory read-only at the target path.
func (p *Plugin) NodePublishVolume(_ context.Context, req *csipb.NodePublishVolumeRequest) (*csipb.NodePublishVolumeResponse, error) {
	target := req.GetTargetPath()
	if err := p.checkPublish(req); err != nil {
		return nil, err
	}
	mounted, err := IsMountPoint(target)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "reading the mount table: %v", err)
	}
	if mounted { // published before (the kubelet retries after a timeout): nothing to do
		return &csipb.NodePublishVolumeResponse{}, nil
	}
	if err := os.MkdirAll(target, 0o750); err != nil {
		return nil, status.Errorf(codes.Internal, "creating %s: %v", target, errors.Unwrap(err))
	}
	// A bind of the staged mount is born read-only, nosuid, nodev, noexec: the copy that
	// propagates to the kubelet's namespace has those flags too (a remount after the bind
	// would change this namespace's copy only).
	if err := unix.Mount(p.Source, target, "", unix.MS_BIND, ""); err != nil {
		return nil, status.Errorf(codes.Internal, "bind-mounting %s on %s: %v", p.Source, target, err)
	}
	log.Printf("published the agent socket to pod %s/%s (%s)", req.GetVolumeContext()["csi.storage.k8s.io/pod.namespace"],
		req.GetVolumeContext()["csi.storage.k8s.io/pod.name"], req.GetVolumeId())
	return &csipb.NodePublishVolumeResponse{}, nil
}

// checkTarget: a target path is the kubelet's place for one pod's CSI volume,
// <kubelet>/pods/<uid>/volumes/kubernetes.io~csi/<volume>/mount, with no symlink on the way
// (so a mount or an unmount cannot land anywhere else on the node).
func (p *Plugin) checkTarget(target string) error {
	pods := filepath.Join(p.KubeletDir, "pods") + "/"
	rest, under := strings.CutPrefix(target, pods)
	parts := strings.Split(rest, "/")
	if !under || filepath.Clean(target) != target || len(parts) != 5 || parts[1] != "volumes" ||
		parts[2] != "kubernetes.io~csi" || parts[4] != "mount" || parts[0] == "" || parts[3] == "" ||
		parts[0] == ".." || parts[3] == ".." {
		return status.Errorf(codes.InvalidArgument,
			"target_path %q is not %s<pod uid>/volumes/kubernetes.io~csi/<volume>/mount", target, pods)
	}
	fd, err := unix.Openat2(unix.AT_FDCWD, filepath.Dir(target), &unix.OpenHow{
		Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: unix.RESOLVE_NO_SYMLINKS})
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "target_path %q: its directory: %v", target, err)
	}
	_ = unix.Close(fd)
	if fi, err := os.Lstat(target); err == nil && !fi.IsDir() {
		return status.Errorf(codes.InvalidArgument, "target_path %q is not a directory", target)
	}
	return nil
}

func (p *Plugin) checkPublish(req *csipb.NodePublishVolumeRequest) error {
	switch {
	case req.GetVolumeId() == "":
		return status.Error(codes.InvalidArgument, "volume_id is empty")
	case req.GetVolumeContext()[EphemeralKey] != "true":
		return status.Errorf(codes.InvalidArgument,
			"%s serves only ephemeral inline volumes (a pod's spec.volumes[].csi), not persistent ones", Driver)
	case !req.GetReadonly():
		return status.Errorf(codes.InvalidArgument,
			"%s volumes are read-only: set readOnly: true on the pod's csi volume", Driver)
	}
	for key := range req.GetVolumeContext() {
		if !strings.HasPrefix(key, "csi.storage.k8s.io/") {
			return status.Errorf(codes.InvalidArgument,
				"volumeAttributes.%s: %s takes no attributes", key, Driver)
		}
	}
	return p.checkTarget(req.GetTargetPath())
}

// NodeUnpublishVolume unmounts the target path and removes it; done twice is no error.
func (p *Plugin) NodeUnpublishVolume(_ context.Context, req *csipb.NodeUnpublishVolumeRequest) (*csipb.NodeUnpublishVolumeResponse, error) {
	target := req.GetTargetPath()
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume_id is empty")
	}
	if err := p.checkTarget(target); err != nil {
		return nil, err
	}
	for {
		mounted, err := IsMountPoint(target)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "reading the mount table: %v", err)
		}
		if !mounted {
			break
		}
		if err := unix.Unmount(target, 0); err != nil {
			return nil, status.Errorf(codes.Internal, "unmounting %s: %v", target, err)
		}
	}
	if err := unix.Rmdir(target); err != nil && !errors.Is(err, unix.ENOENT) {
		return nil, status.Errorf(codes.Internal, "removing %s: %v", target, errors.Unwrap(err))
	}
	return &csipb.NodeUnpublishVolumeResponse{}, nil
}

// --- the kubelet's plugin registration ---------------------------------------------------------

func (p *Plugin) GetInfo(context.Context, *registration.InfoRequest) (*registration.PluginInfo, error) {
	return &registration.PluginInfo{
		Type:              registration.CSIPlugin,
		Name:              Driver,
		Endpoint:          p.Endpoint,
		SupportedVersions: []string{"1.0.0"},
	}, nil
}

func (p *Plugin) NotifyRegistrationStatus(_ context.Context, s *registration.RegistrationStatus) (*registration.RegistrationStatusResponse, error) {
	if p.Registered != nil {
		p.Registered(s.GetPluginRegistered(), s.GetError())
	}
	return &registration.RegistrationStatusResponse{}, nil
}

// IsMountPoint reports whether path is the root of a mount (statx STATX_ATTR_MOUNT_ROOT,
// Linux 5.8: no parsing of the mount table, whose paths a pod's subPath can make ambiguous).
// A path that does not exist is no mount point.
func IsMountPoint(path string) (bool, error) {
	var st unix.Statx_t
	err := unix.Statx(unix.AT_FDCWD, path, unix.AT_SYMLINK_NOFOLLOW|unix.AT_NO_AUTOMOUNT, 0, &st)
	if errors.Is(err, unix.ENOENT) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if st.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT == 0 {
		return false, errors.New("this kernel does not report STATX_ATTR_MOUNT_ROOT (Linux >= 5.8 needed)")
	}
	return st.Attributes&unix.STATX_ATTR_MOUNT_ROOT != 0, nil
}

// Stage makes a private, read-only, nosuid, nodev, noexec bind of source at staging: the
// one place every published volume is bound from, so each is born with those flags.
func Stage(source, staging string) error {
	if err := os.MkdirAll(staging, 0o700); err != nil {
		return err
	}
	if mounted, err := IsMountPoint(staging); err != nil {
		return err
	} else if mounted { // a restarted plugin in the same container
		if err := unix.Unmount(staging, unix.MNT_DETACH); err != nil {
			return fmt.Errorf("unmounting the old staging mount %s: %w", staging, err)
		}
	}
	if err := unix.Mount(source, staging, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind-mounting %s on %s: %w", source, staging, err)
	}
	const ro = unix.MS_BIND | unix.MS_REMOUNT | unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC
	if err := unix.Mount("", staging, "", ro, ""); err != nil {
		_ = unix.Unmount(staging, unix.MNT_DETACH)
		return fmt.Errorf("making %s read-only: %w", staging, err)
	}
	if err := unix.Mount("", staging, "", unix.MS_PRIVATE, ""); err != nil {
		_ = unix.Unmount(staging, unix.MNT_DETACH)
		return fmt.Errorf("making %s private: %w", staging, err)
	}
	return nil
}
