package launch

import (
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cloudtaser/cloudtaser/wrapper/internal/secmem"
)

// EnvValue is an env delivery passed in envp: its value stays in secret
// buffers up to the kernel's copy into the new program's stack.
type EnvValue struct {
	Name  string
	Value []byte
}

// Image is the execve arguments (path, argv, envp: pointer arrays and the
// strings they point to), all in one secret buffer: execve needs no Go string
// that holds a value, so the sweep can zero every copy elsewhere first.
type Image struct {
	buf                *secmem.Buffer
	path, argvp, envpp uintptr
}

// NewImage lays out path, argv and env (plain) plus secret (NAME=VALUE).
func NewImage(path string, argv, env []string, secret []EnvValue) (*Image, error) {
	pointers := (len(argv) + 1 + len(env) + len(secret) + 1) * 8
	size := pointers + len(path) + 1
	for _, s := range argv {
		size += len(s) + 1
	}
	for _, s := range env {
		size += len(s) + 1
	}
	for _, e := range secret {
		size += len(e.Name) + 1 + len(e.Value) + 1
	}
	buf, err := secmem.New(size)
	if err != nil {
		return nil, err
	}
	buf.Commit(pointers) // the pointer arrays come first (8-aligned: the mapping is)
	first := unsafe.SliceData(buf.Bytes())
	slots := unsafe.Slice((*uintptr)(unsafe.Pointer(first)), pointers/8)
	base := uintptr(unsafe.Pointer(first))
	add := func(parts ...[]byte) uintptr {
		at := base + uintptr(buf.Len())
		for _, p := range parts {
			_ = buf.Append(p) // sized above: never grows (and never moves)
		}
		_ = buf.Append([]byte{0})
		return at
	}
	img := &Image{buf: buf, path: add([]byte(path))}
	i := 0
	img.argvp = base
	for _, s := range argv {
		slots[i] = add([]byte(s))
		i++
	}
	slots[i] = 0
	i++
	img.envpp = base + uintptr(i)*8
	for _, s := range env {
		slots[i] = add([]byte(s))
		i++
	}
	for _, e := range secret {
		slots[i] = add([]byte(e.Name), []byte("="), e.Value)
		i++
	}
	slots[i] = 0
	return img, nil
}

// Exec replaces this process with the app (same PID); it returns only on
// failure. No allocation, no Go string: a raw execve on the image.
func (img *Image) Exec() unix.Errno {
	_, _, errno := unix.RawSyscall(unix.SYS_EXECVE, img.path, img.argvp, img.envpp)
	return errno
}

// Free wipes and unmaps the image.
func (img *Image) Free() {
	if img != nil {
		img.buf.Free()
	}
}

func closeFd(fd int) error { return unix.Close(fd) }
