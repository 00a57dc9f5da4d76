package sweep

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"

	"github.com/cloudtaser/cloudtaser/wrapper/internal/secmem"
)

var keep [][]byte // heap copies the compiler cannot drop

// The sweep zeroes whole copies and long pieces in ordinary memory (heap,
// here) and leaves the secmem buffers alone.
func TestSweepZeroesHeapCopiesAndPieces(t *testing.T) {
	raw := make([]byte, 24)
	_, _ = rand.Read(raw)
	value := []byte(hex.EncodeToString(raw)) // 48 printable bytes, like a password
	secret, err := secmem.From(value)
	if err != nil {
		t.Fatal(err)
	}
	defer secret.Free()
	short, _ := secmem.From([]byte("pw42"))
	defer short.Free()
	whole := append([]byte("header "), value...)
	// The two halves of a value that straddled two TLS records, apart.
	split := append(append(append([]byte{}, value[:20]...), bytes.Repeat([]byte{'.'}, 22)...), value[20:]...)
	tooShort := append([]byte("<"), value[10:24]...) // 14 bytes: below MinPiece
	shortCopy := []byte("xxpw42yy")
	keep = [][]byte{whole, split, tooShort, shortCopy}
	clear(value) // the test's own copy (it would be swept too)

	stats, err := Sweep([][]byte{secret.Bytes(), short.Bytes()})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(whole[7:], make([]byte, 48)) || string(whole[:7]) != "header " {
		t.Fatalf("the whole copy was not zeroed exactly: %q", whole)
	}
	if !bytes.Equal(split[:20], make([]byte, 20)) || !bytes.Equal(split[42:], make([]byte, 28)) ||
		!bytes.Equal(split[20:42], bytes.Repeat([]byte{'.'}, 22)) {
		t.Fatalf("the pieces were not zeroed exactly: %q", split)
	}
	if bytes.Equal(tooShort[1:], make([]byte, 14)) {
		t.Fatal("a 14-byte piece was zeroed (below MinPiece: it must stay, as documented)")
	}
	if string(shortCopy) != "xx\x00\x00\x00\x00yy" {
		t.Fatalf("a short secret's whole copy stayed: %q", shortCopy)
	}
	if bytes.Equal(secret.Bytes(), make([]byte, 48)) || string(short.Bytes()) != "pw42" {
		t.Fatal("the sweep zeroed a secmem buffer")
	}
	if stats.Whole < 2 || stats.Pieces < 2 || stats.Bytes == 0 {
		t.Fatalf("stats %+v", stats)
	}
}

func TestResidentSkipsUntouchedPages(t *testing.T) {
	b, _ := secmem.New(1 << 20) // mlocked: resident
	defer b.Free()
	regions := secmem.Regions()
	total := 0
	for _, r := range regions {
		Resident(r.Start, r.End, func(lo, hi uintptr) { total += int(hi - lo) })
	}
	if total < 1<<20 {
		t.Fatalf("resident %d of the locked buffer", total)
	}
}

func TestOutsideSplitsAroundTheArgumentsAndEnvironment(t *testing.T) {
	cases := []struct {
		lo, hi, skipLo, skipHi uintptr
		want                   [][2]uintptr
	}{
		{0, 100, 200, 300, [][2]uintptr{{0, 100}}},
		{0, 100, 40, 60, [][2]uintptr{{0, 40}, {60, 100}}},
		{0, 100, 0, 100, nil},
		{0, 100, 50, 150, [][2]uintptr{{0, 50}}},
		{0, 100, 0, 0, [][2]uintptr{{0, 100}}},
	}
	for _, c := range cases {
		got := outside(c.lo, c.hi, c.skipLo, c.skipHi)
		if len(got) != len(c.want) {
			t.Fatalf("outside(%v) = %v, want %v", c, got, c.want)
		}
		for i := range got {
			if got[i] != c.want[i] {
				t.Fatalf("outside(%v) = %v, want %v", c, got, c.want)
			}
		}
	}
}

// Where /proc/self/stat shows the area (a real kernel), the runtime's strings
// lie inside it: the fallback for qemu-user finds the same place.
func TestTheRuntimeStringsLieInTheStatArea(t *testing.T) {
	lo, hi := runtimeArgEnvArea()
	if lo == 0 || hi <= lo {
		t.Fatalf("runtimeArgEnvArea() = %#x, %#x", lo, hi)
	}
	statLo, statHi := statArgEnvArea()
	if statLo == 0 {
		t.Skip("/proc/self/stat shows no argv/environment area here (qemu-user)")
	}
	if lo != statLo || hi > statHi {
		t.Fatalf("runtime area [%#x, %#x) is not the start of the stat area [%#x, %#x)", lo, hi, statLo, statHi)
	}
}

func TestTheEnvironmentSurvivesASweep(t *testing.T) {
	lo, hi := argEnvArea()
	if lo == 0 || hi <= lo {
		t.Fatalf("argEnvArea() = %#x, %#x", lo, hi)
	}
	// The test binary's name is in argv[0], so in the area (os.Args point into it). Held in a
	// secmem buffer like every real secret: the sweep skips its own needles.
	name := filepath.Base(os.Args[0])
	needle, err := secmem.New(len(name))
	if err != nil {
		t.Fatal(err)
	}
	defer needle.Free()
	needle.Commit(copy(needle.Spare(), name))
	if bytes.Count(memory(lo, hi), needle.Bytes()) == 0 {
		t.Fatalf("%q is not in the argv/environment area", name)
	}
	before := sha256.Sum256(memory(lo, hi))
	if _, err := Sweep([][]byte{needle.Bytes()}); err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(memory(lo, hi)) != before {
		t.Fatal("the sweep changed the argv/environment area")
	}
}
