// Package secretfd makes the fds the app inherits: one memfd_secret region per
// delivered value (Linux 5.14+), or a sealed memfd where the kernel lacks it.
//
// memfd_secret pages are removed from the kernel's direct map and unevictable;
// the kernel maps every mapping of them locked and left out of core dumps,
// whoever maps them (the wrapper while it writes, the SDKs and the interposer
// in the app), and /proc/PID/mem gives EIO for them, root included. Such an fd
// cannot be read() (readers mmap it, sized by fstat). Each mapping is charged
// to RLIMIT_MEMLOCK. The sealed-memfd fallback is ordinary shmem: readable
// through /proc/PID/mem by root unless the node agent stops it, and its pages
// can reach swap; hence the warning, or the refusal when the binding says
// requireSecretMem.
package secretfd

import (
	"bytes"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/cloudtaser/cloudtaser/wrapper/internal/secmem"
)

// memfdSecret is the syscall (a test stands in a kernel without it).
var memfdSecret = unix.MemfdSecret

// Kinds of secret fd.
const (
	Secret = "memfd_secret"
	Sealed = "memfd"
)

// Error is a secret fd that could not be made as required; its message is the
// line the user sees.
type Error struct{ msg string }

func (e *Error) Error() string { return e.msg }

func errorf(format string, args ...any) error { return &Error{fmt.Sprintf(format, args...)} }

// Fd is a filled secret fd, inherited across execve (no close-on-exec).
type Fd struct {
	FD   int
	Kind string
	// Fallback says why a sealed memfd was used where memfd_secret was
	// wanted ("" for a memfd_secret fd); for the warning line.
	Fallback string
}

// unavailable: no secretmem in this kernel, disabled, or blocked by seccomp.
func unavailable(err error) bool {
	return errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM) || errors.Is(err, unix.EOPNOTSUPP)
}

// overLimit: the mapping does not fit in RLIMIT_MEMLOCK.
func overLimit(err error) bool {
	return errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.ENOMEM)
}

// Store copies value into a new inheritable secret fd. sealed applies to the
// memfd fallback only (a refresher rewrites in place, so it needs it unsealed).
func Store(value []byte, requireSecretMem, sealed bool) (Fd, error) {
	fd, err := memfdSecret(0)
	reason := ""
	switch {
	case err == nil:
		err = fill(fd, value)
		if err == nil {
			return Fd{FD: fd, Kind: Secret}, nil
		}
		_ = unix.Close(fd)
		if !overLimit(err) {
			return Fd{}, errorf("memfd_secret could not be filled: %v", err)
		}
		if requireSecretMem {
			return Fd{}, errorf("memfd_secret needs %d more bytes of locked memory than the container "+
				"has (%s): %s; the binding sets requireSecretMem", len(value), secmem.LimitNote(), secmem.RaiseHint)
		}
		reason = fmt.Sprintf("RLIMIT_MEMLOCK has no room for %d more bytes (%s)", len(value), secmem.LimitNote())
	case unavailable(err):
		if requireSecretMem {
			return Fd{}, errorf("memfd_secret is unavailable on this node (kernel without " +
				"CONFIG_SECRETMEM or secretmem.enable=0) and the binding sets requireSecretMem")
		}
		reason = "memfd_secret unavailable"
	default:
		return Fd{}, errorf("memfd_secret failed: %v", err)
	}
	fd, err = unix.MemfdCreate("cloudtaser-secret", unix.MFD_ALLOW_SEALING)
	if err != nil {
		return Fd{}, errorf("memfd_create failed: %v", err)
	}
	if err := fill(fd, value); err != nil {
		_ = unix.Close(fd)
		return Fd{}, errorf("memfd could not be filled: %v", err)
	}
	if sealed {
		seals := unix.F_SEAL_SEAL | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals); err != nil {
			_ = unix.Close(fd)
			return Fd{}, errorf("memfd could not be sealed: %v", err)
		}
	}
	return Fd{FD: fd, Kind: Sealed, Fallback: reason}, nil
}

func fill(fd int, value []byte) error {
	if err := unix.Ftruncate(fd, int64(len(value))); err != nil {
		return err
	}
	if len(value) == 0 {
		return nil
	}
	region, err := unix.Mmap(fd, 0, len(value), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return err
	}
	copy(region, value)
	return unix.Munmap(region)
}

func size(fd int) (int, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, err
	}
	return int(st.Size), nil
}

// Rewrite replaces an fd's contents in place (the refresher). memfd_secret
// cannot be resized once sized, and the app knows its fds only by number, so
// a value of another length needs a restart of the pod.
func Rewrite(fd int, value []byte) error {
	n, err := size(fd)
	if err != nil {
		return errorf("fstat of the secret fd: %v", err)
	}
	if n != len(value) {
		return errorf("the new value is %d bytes but the secret memory holds %d: secret memory "+
			"cannot be resized; restart the pod to pick up the new value", len(value), n)
	}
	if n == 0 {
		return nil
	}
	region, err := unix.Mmap(fd, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return errorf("mapping the secret fd: %v", err)
	}
	copy(region, value)
	return unix.Munmap(region)
}

// Equal reports whether the fd holds exactly value (compared in the mapping,
// no copy).
func Equal(fd int, value []byte) (bool, error) {
	n, err := size(fd)
	if err != nil || n != len(value) {
		return false, err
	}
	if n == 0 {
		return true, nil
	}
	region, err := unix.Mmap(fd, 0, n, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return false, err
	}
	same := bytes.Equal(region, value)
	return same, unix.Munmap(region)
}

// With calls f with a read-only mapping of the fd's contents (tests, the
// memory scan); the mapping is gone when f returns.
func With(fd int, f func([]byte)) error {
	n, err := size(fd)
	if err != nil {
		return err
	}
	if n == 0 {
		f(nil)
		return nil
	}
	region, err := unix.Mmap(fd, 0, n, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return err
	}
	f(region)
	return unix.Munmap(region)
}
