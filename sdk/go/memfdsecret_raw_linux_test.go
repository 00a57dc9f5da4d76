//go:build linux && !(amd64 || arm64 || riscv64)

package cloudtaser

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// sysMemfdSecret is memfd_secret's number in the generic syscall table.
const sysMemfdSecret = 447

// memfdSecret creates a memfd_secret fd via the raw syscall where x/sys has
// no wrapper.
func memfdSecret() (int, error) {
	fd, _, errno := unix.Syscall(sysMemfdSecret, uintptr(unix.O_CLOEXEC), 0, 0)
	if errno != 0 {
		return -1, syscall.Errno(errno)
	}
	return int(fd), nil
}
