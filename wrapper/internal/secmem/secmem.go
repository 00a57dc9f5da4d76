// Package secmem holds the wrapper's plaintext (the service-account token,
// OpenBao's answers and client token, the values) outside the Go heap: each
// Buffer is its own anonymous mapping, mlocked (never swapped), left out of
// core dumps (MADV_DONTDUMP) and zero in a forked child (MADV_WIPEONFORK).
// The garbage collector never moves or copies it, so Wipe reaches the only
// copy. The package keeps a list of live mappings: the sweep before exec
// (package sweep) treats them as the places plaintext may be.
package secmem

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sort"
	"strings"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ErrLimit is wrapped when the kernel refuses to lock a buffer in memory.
var ErrLimit = errors.New("RLIMIT_MEMLOCK")

// RaiseHint says how to give a container more locked memory.
const RaiseHint = "set ipcLock: true on the SecretBinding (adds CAP_IPC_LOCK, which Pod Security " +
	"baseline and restricted refuse) or raise the container runtime's memlock limit " +
	"(containerd inherits its own RLIMIT_MEMLOCK: LimitMEMLOCK= in its systemd unit)"

// LimitNote is this process's RLIMIT_MEMLOCK and what it has locked, for an error line.
func LimitNote() string {
	var r unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_MEMLOCK, &r); err != nil {
		return "RLIMIT_MEMLOCK unknown"
	}
	locked := ""
	if status, err := os.ReadFile("/proc/self/status"); err == nil {
		for _, line := range strings.Split(string(status), "\n") {
			if v, ok := strings.CutPrefix(line, "VmLck:"); ok {
				locked = ", " + strings.TrimSpace(v) + " locked"
			}
		}
	}
	if r.Cur == unix.RLIM_INFINITY {
		return "RLIMIT_MEMLOCK unlimited" + locked
	}
	return fmt.Sprintf("RLIMIT_MEMLOCK %d KiB%s", r.Cur/1024, locked)
}

// Strict makes New fail when a buffer cannot be locked (the binding's
// requireSecretMem); otherwise an unlocked buffer is used and Unlocked says so.
var Strict bool

var (
	mu       sync.Mutex
	live     = map[uintptr]int{} // start -> length of every live mapping
	unlocked int                 // bytes in mappings mlock refused
)

// Buffer is a growable byte buffer in a mapping of its own.
type Buffer struct {
	mem []byte
	n   int
}

// New returns an empty buffer with room for at least capacity bytes.
func New(capacity int) (*Buffer, error) {
	mem, err := mapping(capacity)
	if err != nil {
		return nil, err
	}
	return &Buffer{mem: mem}, nil
}

// From returns a new buffer holding a copy of p.
func From(p []byte) (*Buffer, error) {
	b, err := New(len(p))
	if err != nil {
		return nil, err
	}
	return b, b.Append(p)
}

func pageRound(n int) int {
	page := unix.Getpagesize()
	if n <= 0 {
		return page
	}
	return (n + page - 1) / page * page
}

func mapping(capacity int) ([]byte, error) {
	size := pageRound(capacity)
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("secret buffer of %d bytes: mmap: %w", size, err)
	}
	_ = unix.Madvise(mem, unix.MADV_DONTDUMP)
	_ = unix.Madvise(mem, unix.MADV_WIPEONFORK)
	if err := unix.Mlock(mem); err != nil {
		if Strict {
			_ = unix.Munmap(mem)
			return nil, fmt.Errorf("cannot lock %d bytes of secret buffers in memory (%w: %v; %s): %s; "+
				"the binding sets requireSecretMem", size, ErrLimit, err, LimitNote(), RaiseHint)
		}
		mu.Lock()
		unlocked += size
		mu.Unlock()
	}
	mu.Lock()
	live[addr(mem)] = size
	mu.Unlock()
	return mem, nil
}

func addr(mem []byte) uintptr {
	return uintptr(unsafe.Pointer(unsafe.SliceData(mem)))
}

// Bytes is the buffer's contents (valid until the next Append, Grow or Free).
func (b *Buffer) Bytes() []byte { return b.mem[:b.n] }

// Len is the number of bytes held.
func (b *Buffer) Len() int { return b.n }

// Spare is the unused room after the contents (for reads straight into the
// buffer); Commit(n) then takes n of those bytes into the contents.
func (b *Buffer) Spare() []byte { return b.mem[b.n:] }

// Commit adds n bytes written into Spare to the contents.
func (b *Buffer) Commit(n int) { b.n += n }

// Truncate drops everything after the first n bytes (and wipes it).
func (b *Buffer) Truncate(n int) {
	Wipe(b.mem[n:b.n])
	b.n = n
}

// Grow makes room for at least n more bytes: a new mapping, the contents
// copied over, the old one wiped and unmapped.
func (b *Buffer) Grow(n int) error {
	if len(b.mem)-b.n >= n {
		return nil
	}
	size := 2 * len(b.mem)
	if size < b.n+n {
		size = b.n + n
	}
	mem, err := mapping(size)
	if err != nil {
		return err
	}
	copy(mem, b.mem[:b.n])
	release(b.mem)
	b.mem = mem
	return nil
}

// Append adds p to the contents, growing the buffer as needed.
func (b *Buffer) Append(p []byte) error {
	if err := b.Grow(len(p)); err != nil {
		return err
	}
	b.n += copy(b.mem[b.n:], p)
	return nil
}

// AppendString adds s (never a secret: request lines, header names).
func (b *Buffer) AppendString(s string) error {
	if err := b.Grow(len(s)); err != nil {
		return err
	}
	b.n += copy(b.mem[b.n:], s)
	return nil
}

// Reset wipes the contents and keeps the mapping.
func (b *Buffer) Reset() { b.Truncate(0) }

// Free wipes and unmaps the buffer; a freed buffer must not be used again.
func (b *Buffer) Free() {
	if b == nil || b.mem == nil { // nil: nothing to free
		return
	}
	release(b.mem)
	b.mem, b.n = nil, 0
}

func release(mem []byte) {
	Wipe(mem)
	mu.Lock()
	delete(live, addr(mem))
	mu.Unlock()
	_ = unix.Munmap(mem)
}

// Wipe overwrites p with zeros; KeepAlive keeps the compiler from dropping
// stores to memory it could prove unused afterwards.
func Wipe(p []byte) {
	clear(p)
	runtime.KeepAlive(p)
}

// Region is a live mapping, [Start, End).
type Region struct{ Start, End uintptr }

// Regions lists the live mappings, sorted.
func Regions() []Region {
	mu.Lock()
	defer mu.Unlock()
	out := make([]Region, 0, len(live))
	for start, size := range live {
		out = append(out, Region{start, start + uintptr(size)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Start < out[j].Start })
	return out
}

// Unlocked is the number of bytes in buffers mlock refused (0 when all are
// locked).
func Unlocked() int {
	mu.Lock()
	defer mu.Unlock()
	return unlocked
}

// ReadFile reads a file straight into a new buffer (os.ReadFile would leave
// a copy in the Go heap), without leading and trailing white space: the
// service-account token.
func ReadFile(path string) (*Buffer, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	b, err := New(8 << 10)
	if err != nil {
		return nil, err
	}
	for {
		if len(b.Spare()) == 0 {
			if err := b.Grow(len(b.mem)); err != nil {
				b.Free()
				return nil, err
			}
		}
		n, err := unix.Read(fd, b.Spare())
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			b.Free()
			return nil, err
		}
		if n == 0 {
			break
		}
		b.Commit(n)
	}
	data := b.Bytes()
	start, end := 0, len(data)
	for start < end && isSpace(data[start]) {
		start++
	}
	for end > start && isSpace(data[end-1]) {
		end--
	}
	copy(data, data[start:end])
	b.Truncate(end - start)
	return b, nil
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'
}
