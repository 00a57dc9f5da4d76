// Package testcaps lets a test run as a process without CAP_IPC_LOCK would
// (RLIMIT_MEMLOCK then applies). Only tests import it.
package testcaps

import (
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// WithoutIPCLock drops CAP_IPC_LOCK from this thread's effective set until
// the test ends (capabilities are per thread: the test stays on this one).
func WithoutIPCLock(t *testing.T) {
	t.Helper()
	runtime.LockOSThread()
	header := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&header, &data[0]); err != nil {
		t.Fatal(err)
	}
	saved := data
	data[0].Effective &^= 1 << unix.CAP_IPC_LOCK
	if err := unix.Capset(&header, &data[0]); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = unix.Capset(&header, &saved[0])
		runtime.UnlockOSThread()
	})
}

// MemlockLimit sets RLIMIT_MEMLOCK's soft limit until the test ends.
func MemlockLimit(t *testing.T, bytes uint64) {
	t.Helper()
	var saved unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_MEMLOCK, &saved); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setrlimit(unix.RLIMIT_MEMLOCK, &unix.Rlimit{Cur: bytes, Max: saved.Max}); err != nil {
		t.Skip(err)
	}
	t.Cleanup(func() { _ = unix.Setrlimit(unix.RLIMIT_MEMLOCK, &saved) })
}
