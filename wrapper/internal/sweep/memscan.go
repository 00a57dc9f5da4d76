//go:build memscan

// The memory scan of the test build (go build -tags memscan), never in the
// production binary: just before exec it reads every readable mapping of the
// wrapper through /proc/self/mem, except the secmem buffers, and reports
// every whole secret and every piece of at least MinPiece bytes it finds to
// the file $CLOUDTASER_MEMSCAN_REPORT (counts and places, never bytes). Like
// the sweep it leaves out the argv/environment strings the kernel wrote before
// the wrapper ran (argEnvArea): they hold no secret unless the caller put one
// there, and short values occur in them by chance (the config names the role,
// the namespace); the test checks what it passed.
// CLOUDTASER_MEMSCAN_NOSWEEP=1 skips the sweep, to show what it removes.

package sweep

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/cloudtaser/cloudtaser/wrapper/internal/secmem"
)

func init() {
	Hook = scan
	Disabled = os.Getenv("CLOUDTASER_MEMSCAN_NOSWEEP") == "1"
}

type report struct {
	Secrets int      `json:"secrets"`
	Swept   Stats    `json:"swept"`
	Scanned int      `json:"scanned_bytes"`
	ArgsEnv int      `json:"args_env_bytes"` // left out: the argv/environment area
	Whole   int      `json:"whole"`
	Pieces  int      `json:"pieces"`
	Found   []string `json:"found"`
}

func scan(secrets [][]byte, swept Stats) {
	out := os.Getenv("CLOUDTASER_MEMSCAN_REPORT")
	if out == "" {
		return
	}
	r := report{Secrets: len(secrets), Swept: swept}
	fail := func(err error) {
		r.Found = append(r.Found, "scan error: "+err.Error())
	}
	maps, err := Maps()
	if err != nil {
		fail(err)
	}
	mem, err := os.Open("/proc/self/mem")
	if err != nil {
		fail(err)
	}
	p, err := newPieces(secrets)
	if err != nil {
		fail(err)
	}
	buf, err := secmem.New(1 << 20) // excluded from the scan, like every secmem buffer
	if err != nil {
		fail(err)
	}
	exclude := secmem.Regions()
	argLo, envHi := argEnvArea()
	for _, region := range maps {
		if region.Perms[0] != 'r' || Excluded(region, exclude) || mem == nil || p == nil || buf == nil {
			continue
		}
		// The whole mapping at once: a secret across a chunk boundary is not missed.
		buf.Reset()
		if err := buf.Grow(int(region.End - region.Start)); err != nil {
			fail(err)
			continue
		}
		got, err := unix.Pread(int(mem.Fd()), buf.Spare()[:region.End-region.Start], int64(region.Start))
		if err != nil || got <= 0 {
			continue // [vvar] and the like
		}
		buf.Commit(got)
		all := buf.Bytes()
		for _, span := range outside(region.Start, region.Start+uintptr(len(all)), argLo, envHi) {
			data := all[span[0]-region.Start : span[1]-region.Start]
			r.Scanned += len(data)
			for i, s := range secrets {
				if len(s) >= MinWhole {
					if c := countAll(data, s); c > 0 {
						r.Whole += c
						r.Found = append(r.Found, fmt.Sprintf("secret %d whole x%d in %s %s %#x", i, c,
							region.Perms, region.Name, span[0]))
					}
				}
			}
			if c := p.find(data, false); c > 0 {
				r.Pieces += c
				r.Found = append(r.Found, fmt.Sprintf("%d piece(s) in %s %s %#x", c, region.Perms,
					region.Name, span[0]))
			}
		}
		r.ArgsEnv += len(all) - spanBytes(region.Start, region.Start+uintptr(len(all)), argLo, envHi)
	}
	text, _ := json.Marshal(r)
	_ = os.WriteFile(out, text, 0o600)
}

func countAll(mem, needle []byte) int {
	count := 0
	for i := 0; ; {
		j := bytes.Index(mem[i:], needle)
		if j < 0 {
			return count
		}
		count++
		i += j + len(needle)
	}
}

func spanBytes(lo, hi, skipLo, skipHi uintptr) int {
	n := 0
	for _, span := range outside(lo, hi, skipLo, skipHi) {
		n += int(span[1] - span[0])
	}
	return n
}
