// Package sweep zeroes the copies of secrets the wrapper could not keep out of
// ordinary memory, just before it execs the app (and after each refresh).
//
// The wrapper's own code keeps every secret in secmem buffers. What remains
// elsewhere is what crypto/tls did: it decrypts each TLS record in place in
// its heap buffer (Conn.rawInput) and keeps the bytes until they are
// overwritten; the AES-GCM seal of a request overwrites its plaintext, but
// register spills may leave pieces on stacks. So, for every secret (each
// value, the raw JSON text of escaped values, the client tokens, the
// service-account token), the sweep zeroes
//   - every whole occurrence of at least MinWhole bytes, and
//   - every piece of at least MinPiece bytes of a longer secret: a value that
//     straddled two TLS records leaves its halves in different places,
//
// in every private writable mapping of the process except the secmem buffers
// (the secrets' own places, wiped or exec'd away next), reading only resident
// pages (mincore: a page never touched holds zeros).
//
// What it cannot reach: pieces shorter than MinPiece of a value that
// straddled records, and secrets shorter than MinWhole (their bytes occur by
// chance everywhere; zeroing them would damage unrelated data). The memory
// scan test (build tag memscan) checks what is left just before exec.
package sweep

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"os"
	"runtime"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cloudtaser/cloudtaser/wrapper/internal/secmem"
)

// Thresholds (bytes).
const (
	MinWhole = 4
	MinPiece = 16
)

// Stats counts what a sweep zeroed.
type Stats struct {
	Whole, Pieces int
	Bytes         int // resident bytes looked at
}

// Region is one mapping of /proc/self/maps.
type Region struct {
	Start, End uintptr
	Perms      string
	Name       string
}

// Maps lists the process's mappings.
func Maps() ([]Region, error) {
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Region
	lines := bufio.NewScanner(f)
	for lines.Scan() {
		fields := strings.Fields(lines.Text())
		if len(fields) < 5 {
			continue
		}
		lo, hi, _ := strings.Cut(fields[0], "-")
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil {
			continue
		}
		r := Region{Start: uintptr(start), End: uintptr(end), Perms: fields[1]}
		if len(fields) >= 6 {
			r.Name = fields[5]
		}
		out = append(out, r)
	}
	return out, lines.Err()
}

// Excluded reports whether r overlaps one of the secmem buffers.
func Excluded(r Region, secret []secmem.Region) bool {
	for _, s := range secret {
		if r.Start < s.End && s.Start < r.End {
			return true
		}
	}
	return false
}

// Resident calls f for each run of resident pages of [start, end).
func Resident(start, end uintptr, f func(lo, hi uintptr)) {
	page := uintptr(unix.Getpagesize())
	const batch = 4096 // pages per mincore call
	vec := make([]byte, batch)
	runStart, inRun := uintptr(0), false
	for at := start; at < end; {
		n := (end - at) / page
		if n > batch {
			n = batch
		}
		_, _, errno := unix.Syscall(unix.SYS_MINCORE, at, n*page, uintptr(unsafe.Pointer(&vec[0])))
		for i := uintptr(0); i < n; i++ {
			resident := errno == 0 && vec[i]&1 == 1
			addr := at + i*page
			if resident && !inRun {
				runStart, inRun = addr, true
			} else if !resident && inRun {
				f(runStart, addr)
				inRun = false
			}
		}
		at += n * page
	}
	if inRun {
		f(runStart, end)
	}
}

// memory is [lo, hi) of this process as a slice (a mapping of its own, never
// a Go object: the address comes from /proc/self/maps).
func memory(lo, hi uintptr) []byte {
	return unsafe.Slice(*(**byte)(unsafe.Pointer(&lo)), hi-lo)
}

// Quiet blocks every signal on the calling goroutine's thread (locked to it)
// until restore, which the caller runs right before execve. The sweep and the
// memory scan compare memory with secret bytes in vector registers; a signal
// arriving meanwhile would write those registers back into memory the sweep
// has already passed: the kernel's signal frame (the full FP state on the
// signal stack) and Go's asynchronous preemption (asyncPreempt spills X0-X15
// onto the goroutine's stack). Blocked, such signals (SIGURG: preemption) wait
// until restore, after which only execve runs: it discards the address space.
// A process-directed signal (SIGTERM) goes to another thread meanwhile.
func Quiet() (restore func()) {
	runtime.LockOSThread()
	var all, old unix.Sigset_t
	for i := range all.Val {
		all.Val[i] = ^uint64(0)
	}
	if err := unix.PthreadSigmask(unix.SIG_BLOCK, &all, &old); err != nil {
		runtime.UnlockOSThread()
		return func() {}
	}
	return func() {
		_ = unix.PthreadSigmask(unix.SIG_SETMASK, &old, nil)
		runtime.UnlockOSThread()
	}
}

// Hook, when set (the memscan build only), runs just before exec with the
// secrets and the sweep's result; production builds leave it nil.
var Hook func(secrets [][]byte, swept Stats)

// Disabled skips the sweep (settable in the memscan build only, to show the
// scan finds what the sweep removes).
var Disabled bool

// Sweep zeroes the secrets' copies outside the secmem buffers.
func Sweep(secrets [][]byte) (Stats, error) {
	var stats Stats
	if Disabled {
		return stats, nil
	}
	maps, err := Maps()
	if err != nil {
		return stats, err
	}
	pieces, err := newPieces(secrets)
	if err != nil {
		return stats, err
	}
	defer pieces.free()
	exclude := secmem.Regions()
	argLo, envHi := argEnvArea()
	for _, r := range maps {
		if !strings.HasPrefix(r.Perms, "rw") || r.Perms[3] != 'p' || Excluded(r, exclude) ||
			strings.HasPrefix(r.Name, "[v") { // [vvar], [vsyscall], [vdso]
			continue
		}
		Resident(r.Start, r.End, func(lo, hi uintptr) {
			for _, span := range outside(lo, hi, argLo, envHi) {
				mem := memory(span[0], span[1])
				stats.Bytes += len(mem)
				for _, s := range secrets {
					if len(s) >= MinWhole {
						stats.Whole += zeroAll(mem, s)
					}
				}
				stats.Pieces += pieces.find(mem, true)
			}
		})
	}
	return stats, nil
}

// argEnvArea is [arg_start, env_end) of this process (fields 48 and 51 of
// /proc/self/stat): its argv and environment strings, which hold no secret
// (the wrapper passes none to itself) but whatever short values occur in the
// config by chance: zeroing those would break the refresher's re-exec. (0, 0)
// when neither source gives it.
func argEnvArea() (uintptr, uintptr) {
	if lo, hi := statArgEnvArea(); lo != 0 && hi > lo {
		return lo, hi
	}
	return runtimeArgEnvArea()
}

func statArgEnvArea() (uintptr, uintptr) {
	raw, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return 0, 0
	}
	i := bytes.LastIndexByte(raw, ')')
	if i < 0 {
		return 0, 0
	}
	fields := strings.Fields(string(raw[i+1:])) // fields 3..: index = field - 3
	if len(fields) < 51-2 {
		return 0, 0
	}
	lo, err1 := strconv.ParseUint(fields[48-3], 10, 64)
	hi, err2 := strconv.ParseUint(fields[51-3], 10, 64)
	if err1 != nil || err2 != nil || hi < lo {
		return 0, 0
	}
	return uintptr(lo), uintptr(hi)
}

// runtimeArgEnvArea finds the area where the kernel wrote it, for when
// /proc/self/stat shows zeros there (qemu-user emulates that file so): Go's
// runtime makes os.Args and the initial environment strings point into the
// original argv/envp strings without copying them. The area starts at argv[0]
// and runs to the end of the last string within maxArgEnv of it (strings set
// later by os.Setenv live on the heap, far away).
func runtimeArgEnvArea() (uintptr, uintptr) {
	const maxArgEnv = 8 << 20
	if len(os.Args) == 0 || len(os.Args[0]) == 0 {
		return 0, 0
	}
	lo := uintptr(unsafe.Pointer(unsafe.StringData(os.Args[0])))
	hi := lo + uintptr(len(os.Args[0])) + 1
	for _, s := range append(append([]string(nil), os.Args...), os.Environ()...) {
		if len(s) == 0 {
			continue
		}
		p := uintptr(unsafe.Pointer(unsafe.StringData(s)))
		if p >= lo && p-lo < maxArgEnv && p+uintptr(len(s))+1 > hi {
			hi = p + uintptr(len(s)) + 1 // with its NUL
		}
	}
	return lo, hi
}

// outside splits [lo, hi) into the spans that lie outside [skipLo, skipHi).
func outside(lo, hi, skipLo, skipHi uintptr) [][2]uintptr {
	if skipHi <= lo || skipLo >= hi || skipLo == skipHi {
		return [][2]uintptr{{lo, hi}}
	}
	var spans [][2]uintptr
	if skipLo > lo {
		spans = append(spans, [2]uintptr{lo, skipLo})
	}
	if skipHi < hi {
		spans = append(spans, [2]uintptr{skipHi, hi})
	}
	return spans
}

func zeroAll(mem, needle []byte) int {
	count := 0
	for i := 0; i+len(needle) <= len(mem); {
		j := bytes.Index(mem[i:], needle)
		if j < 0 {
			break
		}
		secmem.Wipe(mem[i+j : i+j+len(needle)])
		count++
		i += j + len(needle)
	}
	return count
}

// pieces finds any run of at least MinPiece bytes shared with a secret: every
// such run holds a whole aligned 8-byte word of memory, so memory is read a
// word at a time and each word looked up among all 8-byte windows of the
// secrets (an open-addressing table, itself in a secmem buffer: its keys are
// secret bytes), then a hit is extended both ways.
type pieces struct {
	secrets [][]byte
	table   *secmem.Buffer
	slots   []slot
	mask    uint64
}

type slot struct {
	word          uint64
	secret, start uint32 // secret index+1 (0: empty), window offset
}

func newPieces(secrets [][]byte) (*pieces, error) {
	p := &pieces{secrets: secrets}
	windows := 0
	for _, s := range secrets {
		if len(s) >= MinPiece {
			windows += len(s) - 7
		}
	}
	if windows == 0 {
		return p, nil
	}
	size := 16
	for size < 2*windows {
		size *= 2
	}
	table, err := secmem.New(size * int(unsafe.Sizeof(slot{})))
	if err != nil {
		return nil, err
	}
	table.Commit(size * int(unsafe.Sizeof(slot{})))
	p.table = table
	p.slots = unsafe.Slice((*slot)(unsafe.Pointer(unsafe.SliceData(table.Bytes()))), size)
	p.mask = uint64(size - 1)
	for i, s := range secrets {
		if len(s) < MinPiece {
			continue
		}
		for off := 0; off+8 <= len(s); off++ {
			w := binary.LittleEndian.Uint64(s[off:])
			h := hash(w) & p.mask
			for p.slots[h].secret != 0 {
				h = (h + 1) & p.mask
			}
			p.slots[h] = slot{word: w, secret: uint32(i + 1), start: uint32(off)}
		}
	}
	return p, nil
}

func (p *pieces) free() { p.table.Free() }

func hash(w uint64) uint64 { return (w * 0x9E3779B97F4A7C15) >> 17 }

// find counts (and with wipe, zeroes) every shared run of at least MinPiece
// bytes in mem.
func (p *pieces) find(mem []byte, wipe bool) int {
	if p.slots == nil {
		return 0
	}
	count := 0
	for i := 0; i+8 <= len(mem); i += 8 {
		w := binary.LittleEndian.Uint64(mem[i:])
		if w == 0 {
			continue
		}
		for h := hash(w) & p.mask; p.slots[h].secret != 0; h = (h + 1) & p.mask {
			s := p.slots[h]
			if s.word != w {
				continue
			}
			secret := p.secrets[s.secret-1]
			lo, hi := i, i+8 // memory [lo, hi) == secret[start-(i-lo) : ...]
			for lo > 0 && int(s.start)-(i-lo) > 0 && mem[lo-1] == secret[int(s.start)-(i-lo)-1] {
				lo--
			}
			for hi < len(mem) && int(s.start)+(hi-i) < len(secret) && mem[hi] == secret[int(s.start)+(hi-i)] {
				hi++
			}
			if hi-lo >= MinPiece {
				if wipe {
					secmem.Wipe(mem[lo:hi])
				}
				count++
				i = (hi+7)/8*8 - 8 // go on after the wiped run
				break
			}
		}
	}
	return count
}
