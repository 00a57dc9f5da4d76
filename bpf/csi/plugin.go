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

	Version  string
	NodeID   string
	Source   string // the agent's socket directory, as this process sees it
	Socket   string // the agent socket's file name in Source (Probe checks it)
	Endpoint string // the CSI socket's path, as the kubelet sees it
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
	if err := unix.Mount(p.Source, target, "", unix.MS_BIND, ""); err != nil {
		return nil, status.Errorf(codes.Internal, "bind-mounting %s on %s: %v", p.Source, target, err)
	}
	const ro = unix.MS_BIND | unix.MS_REMOUNT | unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC
	if err := unix.Mount("", target, "", ro, ""); err != nil {
		_ = unix.Unmount(target, unix.MNT_DETACH) // never leave it writable
		return nil, status.Errorf(codes.Internal, "making %s read-only: %v", target, err)
	}
	log.Printf("published the agent socket to pod %s/%s (%s)", req.GetVolumeContext()["csi.storage.k8s.io/pod.namespace"],
		req.GetVolumeContext()["csi.storage.k8s.io/pod.name"], req.GetVolumeId())
	return &csipb.NodePublishVolumeResponse{}, nil
}

func (p *Plugin) checkPublish(req *csipb.NodePublishVolumeRequest) error {
	switch {
	case req.GetVolumeId() == "":
		return status.Error(codes.InvalidArgument, "volume_id is empty")
	case req.GetTargetPath() == "" || !filepath.IsAbs(req.GetTargetPath()):
		return status.Errorf(codes.InvalidArgument, "target_path %q is not an absolute path", req.GetTargetPath())
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
	return nil
}

// NodeUnpublishVolume unmounts the target path and removes it; done twice is no error.
func (p *Plugin) NodeUnpublishVolume(_ context.Context, req *csipb.NodeUnpublishVolumeRequest) (*csipb.NodeUnpublishVolumeResponse, error) {
	target := req.GetTargetPath()
	if req.GetVolumeId() == "" || target == "" || !filepath.IsAbs(target) {
		return nil, status.Errorf(codes.InvalidArgument, "volume_id %q and an absolute target_path %q are required",
			req.GetVolumeId(), target)
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
	if err := os.Remove(target); err != nil && !errors.Is(err, os.ErrNotExist) {
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

// IsMountPoint reports whether path is a mount point in this mount namespace.
func IsMountPoint(path string) (bool, error) {
	clean := filepath.Clean(path)
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		fields := strings.Fields(line)
		if len(fields) > 4 && unescape(fields[4]) == clean {
			return true, nil
		}
	}
	return false, nil
}

// unescape undoes mountinfo's octal escapes (\040 for a space and the like).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v int
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &v); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
