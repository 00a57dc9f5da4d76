package manifest

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// vector is one "manifest" test vector of contracts/wrapper-contract.json.
type vector struct {
	Name    string `json:"name"`
	Text    string `json:"text"`
	Valid   bool   `json:"valid"`
	Entries []struct {
		Kind string `json:"kind"`
		FD   int    `json:"fd"`
		Name string `json:"name"`
	} `json:"entries"`
	ErrorLine int `json:"error_line"`
}

func vectors(t *testing.T) []vector {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "..", "..", "contracts", "wrapper-contract.json"))
	if err != nil {
		t.Fatal(err)
	}
	var contract struct {
		Manifest []vector `json:"manifest"`
	}
	if err := json.Unmarshal(raw, &contract); err != nil {
		t.Fatal(err)
	}
	if len(contract.Manifest) < 10 {
		t.Fatalf("only %d manifest vectors", len(contract.Manifest))
	}
	return contract.Manifest
}

func (v vector) want() []Entry {
	var out []Entry
	for _, e := range v.Entries {
		out = append(out, Entry{e.Kind, e.FD, e.Name})
	}
	return out
}

// TestParseVectors: the reader (the Go SDK's) against every vector.
func TestParseVectors(t *testing.T) {
	for _, v := range vectors(t) {
		t.Run(v.Name, func(t *testing.T) {
			got, err := Parse(v.Text)
			if v.Valid {
				if err != nil {
					t.Fatalf("Parse: %v", err)
				}
				if !reflect.DeepEqual(got, v.want()) {
					t.Fatalf("Parse = %v, want %v", got, v.want())
				}
				return
			}
			if err == nil {
				t.Fatalf("Parse accepted it: %v", got)
			}
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("%v is not ErrMalformed", err)
			}
			if !strings.Contains(err.Error(), fmt.Sprintf("line %d:", v.ErrorLine)) {
				t.Fatalf("%q does not name line %d", err, v.ErrorLine)
			}
			checkNoEcho(t, err, v.Text)
		})
	}
}

// checkNoEcho: the error holds no name of the text (the kinds and numbers it
// names are not secret; a name could be a value pasted by mistake).
func checkNoEcho(t *testing.T, err error, text string) {
	t.Helper()
	_, reason, _ := strings.Cut(err.Error(), ": line ") // after the fixed prefix
	for _, line := range strings.Split(text, "\n") {
		fields := strings.SplitN(line, " ", 3)
		if len(fields) == 3 && len(fields[2]) >= 3 && strings.Contains(reason, fields[2]) {
			t.Fatalf("%q echoes the name %q", err, fields[2])
		}
	}
}

// TestFormatVectors: the writer (the Go wrapper's) writes every valid
// vector's entries as text that parses back to them, and refuses the entries
// of every invalid vector whose lines can be expressed as entries at all.
func TestFormatVectors(t *testing.T) {
	refused := 0
	for _, v := range vectors(t) {
		t.Run(v.Name, func(t *testing.T) {
			if v.Valid {
				text, err := Format(v.want())
				if err != nil {
					t.Fatalf("Format: %v", err)
				}
				back, err := Parse(text)
				if err != nil || !reflect.DeepEqual(back, v.want()) {
					t.Fatalf("Format wrote %q, which parses as %v, %v", text, back, err)
				}
				return
			}
			entries, ok := lenient(v.Text)
			if !ok {
				t.Skip("a syntax error: no entries express it")
			}
			if _, err := Format(entries); err == nil {
				t.Fatalf("Format accepted %v", entries)
			} else if !strings.Contains(err.Error(), fmt.Sprintf("entry %d:", v.ErrorLine)) {
				t.Fatalf("%q does not name entry %d", err, v.ErrorLine)
			}
			refused++
		})
	}
	if refused < 8 {
		t.Fatalf("only %d invalid vectors reached Format", refused)
	}
}

// lenient splits text into entries without any check but the fd's syntax.
func lenient(text string) ([]Entry, bool) {
	var out []Entry
	for _, line := range strings.Split(text, "\n") {
		fields := strings.SplitN(line, " ", 3)
		if len(fields) != 3 {
			return nil, false
		}
		fd, ok := parseFD(fields[1])
		if !ok {
			return nil, false
		}
		out = append(out, Entry{fields[0], fd, fields[2]})
	}
	return out, true
}

func TestFormatRefusesOutOfRangeFDs(t *testing.T) {
	for _, fd := range []int{-1, MaxFD + 1} {
		if _, err := Format([]Entry{{SDK, fd, "x"}}); err == nil {
			t.Fatalf("Format accepted fd %d", fd)
		}
	}
}
