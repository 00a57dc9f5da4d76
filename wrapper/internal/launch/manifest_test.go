package launch

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/cloudtaser/cloudtaser/sdk/go/manifest"
	"github.com/cloudtaser/cloudtaser/wrapper/internal/config"
)

// manifestVector is one "manifest" vector of contracts/wrapper-contract.json.
type manifestVector struct {
	Name  string `json:"name"`
	Text  string `json:"text"`
	Valid bool   `json:"valid"`
}

// line is one "KIND FD NAME" line split without any check but the fd's digits.
type line struct {
	kind, name string
	fd         int
}

// lines splits text like the grammar, or says it has a line no config key can ask for.
func lines(text string) ([]line, bool) {
	text = strings.TrimSuffix(text, "\n")
	var out []line
	for _, l := range strings.Split(text, "\n") {
		f := strings.SplitN(l, " ", 3)
		if len(f) != 3 || f[2] == "" {
			return nil, false // a syntax error, or an empty name (no delivery)
		}
		if f[0] != manifest.File && f[0] != manifest.SDK && f[0] != manifest.Env {
			return nil, false // an unknown kind
		}
		fd, err := strconv.ParseUint(f[1], 10, 31) // no sign, at most 2147483647
		if err != nil || len(f[1]) > 10 {
			return nil, false
		}
		out = append(out, line{f[0], f[2], int(fd)})
	}
	return out, text != ""
}

// keysFor is one config key per line (shared: per fd, when the lines of each fd are one
// file, sdk and env line at most, in that order, as the wrapper writes them).
func keysFor(ls []line, shared bool) ([]config.Key, bool) {
	var keys []config.Key
	index := map[int]int{} // fd -> key
	for i, l := range ls {
		k, ok := index[l.fd]
		if !shared || !ok {
			k = len(keys)
			index[l.fd] = k
			keys = append(keys, config.Key{Key: fmt.Sprintf("key-%d", i)})
		}
		key := &keys[k]
		order := map[string]int{manifest.File: 0, manifest.SDK: 1, manifest.Env: 2}
		last := -1
		for kind, name := range map[string]string{manifest.File: key.File, manifest.SDK: key.SDK,
			manifest.Env: key.Env} {
			if name != "" {
				last = max(last, order[kind])
			}
		}
		if order[l.kind] <= last || (shared && k != len(keys)-1) {
			return nil, false // not in the order of the wrapper's lines
		}
		switch l.kind {
		case manifest.File:
			key.File = l.name
		case manifest.SDK:
			key.SDK = l.name
		case manifest.Env:
			key.Env = l.name
		}
	}
	return keys, true
}

// TestTheManifestVectorsAsDeliveries: the manifest the wrapper writes, through the
// contract's vectors (contracts/README.md, "The fd manifest"). Each valid vector whose lines
// a config can ask for is written as those lines (the wrapper's own fd numbers, shared
// where the vector shares one); each invalid one whose lines a config can ask for is
// refused before the app gets it.
func TestTheManifestVectorsAsDeliveries(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "..", "..", "contracts", "wrapper-contract.json"))
	if err != nil {
		t.Fatal(err)
	}
	var contract struct {
		Manifest []manifestVector `json:"manifest"`
	}
	if err := json.Unmarshal(raw, &contract); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	_ = os.WriteFile(InterposerFile(dir, Glibc), nil, 0o644)
	written, refused := 0, 0
	for _, v := range contract.Manifest {
		t.Run(v.Name, func(t *testing.T) {
			ls, ok := lines(v.Text)
			var keys []config.Key
			if ok {
				keys, ok = keysFor(ls, v.Valid)
			}
			if !ok {
				t.Skip("no config asks for these lines")
			}
			cfg := configWith(keys...)
			values := map[string]string{}
			for _, k := range keys {
				values[k.Key] = "value of " + k.Key
			}
			plan, err := PlanFor(cfg, App{Path: "/bin/app", Libc: Glibc}, dir)
			if err != nil {
				t.Fatal(err)
			}
			d, err := Prepare(cfg, plan, fetched(t, cfg, values), []string{"app"}, nil)
			if !v.Valid {
				if err == nil {
					d.Close()
					t.Fatal("Prepare wrote the manifest")
				}
				if !strings.HasPrefix(err.Error(), "the fd manifest would be malformed (") {
					t.Fatalf("Prepare = %v", err)
				}
				refused++
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			_, _, envp := d.Image.strings()
			got, err := manifest.Parse(envMap(envp)[manifest.EnvVar])
			if err != nil {
				t.Fatal(err)
			}
			want, fds, used := []manifest.Entry{}, map[int]int{}, map[int]bool{} // vector fd -> wrapper fd
			for i, l := range ls {
				if _, seen := fds[l.fd]; !seen && i < len(got) && !used[got[i].FD] {
					fds[l.fd], used[got[i].FD] = got[i].FD, true
				}
				want = append(want, manifest.Entry{Kind: l.kind, FD: fds[l.fd], Name: l.name})
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("wrote %v, want %v", got, want)
			}
			written++
		})
	}
	if written < 10 || refused < 8 {
		t.Fatalf("only %d valid vectors written and %d invalid ones refused", written, refused)
	}
}
