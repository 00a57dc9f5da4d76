//go:build linux && (amd64 || arm64 || riscv64)

package cloudtaser

import "golang.org/x/sys/unix"

// memfdSecret creates a memfd_secret fd; x/sys wraps it on these arches.
func memfdSecret() (int, error) { return unix.MemfdSecret(unix.O_CLOEXEC) }
