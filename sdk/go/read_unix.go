//go:build unix

package cloudtaser

import (
	"errors"
	"fmt"
	"runtime/debug"

	"golang.org/x/sys/unix"
)

// readAttempts bounds the retries when the secret changes size while it is
// being copied (the refresher rewrites in place: ftruncate, then write).
const readAttempts = 5

// errChanged marks an attempt that raced with a rewrite of the secret.
var errChanged = errors.New("secret changed size while being read")

// readSecretFD maps fd read-only and returns a copy of its contents. The
// size comes from fstat on every call. memfd_secret fds cannot be read with
// read(2)/pread(2), so the shared mapping is the only way in.
func readSecretFD(fd int, name string) ([]byte, error) {
	var err error
	for attempt := 0; attempt < readAttempts; attempt++ {
		var b []byte
		b, err = readOnce(fd, name)
		if err == nil {
			return b, nil
		}
		if !errors.Is(err, errChanged) {
			return nil, err
		}
	}
	return nil, err
}

func fdSize(fd int, name string) (int, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, fmt.Errorf("cloudtaser: secret %q (fd %d): fstat: %w", name, fd, err)
	}
	// memfd_secret and memfd are both regular files; anything else means
	// the fd number does not refer to what the wrapper handed over.
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return 0, fmt.Errorf("cloudtaser: secret %q (fd %d): not a memory file (mode %#o)", name, fd, st.Mode)
	}
	if st.Size < 0 || uint64(st.Size) > uint64(maxInt) {
		return 0, fmt.Errorf("cloudtaser: secret %q (fd %d): unusable size %d", name, fd, st.Size)
	}
	return int(st.Size), nil
}

const maxInt = int(^uint(0) >> 1)

func readOnce(fd int, name string) ([]byte, error) {
	size, err := fdSize(fd, name)
	if err != nil {
		return nil, err
	}
	if size == 0 {
		// mmap of length 0 is EINVAL; an empty secret is valid.
		return []byte{}, nil
	}
	m, err := unix.Mmap(fd, 0, size, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		hint := ""
		if errors.Is(err, unix.EAGAIN) {
			// memfd_secret mappings are charged to the locked-memory limit.
			hint = " (RLIMIT_MEMLOCK too low for memfd_secret?)"
		}
		return nil, fmt.Errorf("cloudtaser: secret %q (fd %d): mmap %d bytes%s: %w", name, fd, size, hint, err)
	}
	out := make([]byte, size)
	copyErr := copyMapped(out, m)
	if err := unix.Munmap(m); err != nil {
		Wipe(out)
		return nil, fmt.Errorf("cloudtaser: secret %q (fd %d): munmap: %w", name, fd, err)
	}
	if copyErr != nil {
		// The file shrank under the mapping (SIGBUS): a rewrite raced us.
		Wipe(out)
		return nil, fmt.Errorf("cloudtaser: secret %q (fd %d): %w", name, fd, errChanged)
	}
	// A rewrite that changed the size during the copy left a mix of old
	// and new bytes; read again. (A same-size rewrite cannot be detected
	// without a protocol on the fd.)
	now, err := fdSize(fd, name)
	if err != nil {
		Wipe(out)
		return nil, err
	}
	if now != size {
		Wipe(out)
		return nil, fmt.Errorf("cloudtaser: secret %q (fd %d): %w", name, fd, errChanged)
	}
	return out, nil
}

// copyMapped copies src (a file mapping) into dst. If the file was truncated
// after mapping, touching pages past the new end raises SIGBUS; with
// SetPanicOnFault that becomes a recoverable panic instead of a crash.
func copyMapped(dst, src []byte) (err error) {
	old := debug.SetPanicOnFault(true)
	defer func() {
		debug.SetPanicOnFault(old)
		if r := recover(); r != nil {
			if _, fault := r.(interface{ Addr() uintptr }); !fault {
				panic(r)
			}
			err = errChanged
		}
	}()
	copy(dst, src)
	return nil
}
