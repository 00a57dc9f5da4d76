// Package manifest is the fd manifest (CLOUDTASER_FDS) as contracts/README.md
// defines it ("The fd manifest": grammar, limits, errors), parsed and written in
// one place for the Go SDK (which reads it) and the Go wrapper (which writes
// it): Go's one implementation, run over every "manifest" vector of
// contracts/wrapper-contract.json by its tests.
//
//	MANIFEST = [ LINE *( "\n" LINE ) [ "\n" ] ]
//	LINE     = KIND " " FD " " NAME        ; KIND: file | sdk | env
//
// Every line is validated, also of kinds a reader does not use, and errors
// name the line number but never echo the line: a value pasted into the
// manifest by mistake must not reach a log.
package manifest

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// EnvVar is the environment variable holding the manifest.
const EnvVar = "CLOUDTASER_FDS"

// Kinds of entries.
const (
	File = "file" // NAME is an absolute path the interposer serves
	SDK  = "sdk"  // NAME is what GetSecret/get_secret asks for
	Env  = "env"  // NAME is an environment variable the interposer sets
)

// MaxFD bounds the fd field (kernel fds are non-negative ints).
const MaxFD = 1<<31 - 1

// ErrMalformed is wrapped by every parse and validation error.
var ErrMalformed = errors.New("malformed " + EnvVar)

// Entry is one line.
type Entry struct {
	Kind string
	FD   int
	Name string
}

// Parse returns the entries of a manifest, or the first problem as an error
// naming its (1-based) line.
func Parse(text string) ([]Entry, error) {
	text = strings.TrimSuffix(text, "\n") // one trailing newline
	if text == "" {
		return nil, nil
	}
	var entries []Entry
	seen := map[[2]string]bool{}
	for i, line := range strings.Split(text, "\n") {
		e, err := parseLine(line)
		if err == nil {
			err = check(e, seen)
		}
		if err != nil {
			return nil, fmt.Errorf("%w: line %d: %v", ErrMalformed, i+1, err)
		}
		entries = append(entries, e)
	}
	return entries, nil
}

// Format writes entries as a manifest, after checking each one by the same
// rules Parse applies, so a wrapper never hands an app what its readers
// would refuse.
func Format(entries []Entry) (string, error) {
	var b strings.Builder
	seen := map[[2]string]bool{}
	for i, e := range entries {
		if err := checkFD(e.FD); err != nil {
			return "", fmt.Errorf("%w: entry %d: %v", ErrMalformed, i+1, err)
		}
		if err := check(e, seen); err != nil {
			return "", fmt.Errorf("%w: entry %d: %v", ErrMalformed, i+1, err)
		}
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(e.Kind + " " + strconv.Itoa(e.FD) + " " + e.Name)
	}
	return b.String(), nil
}

func parseLine(line string) (Entry, error) {
	kind, rest, ok := strings.Cut(line, " ")
	if !ok {
		return Entry{}, errors.New(`want "KIND FD NAME"`)
	}
	fdField, name, ok := strings.Cut(rest, " ")
	if !ok {
		return Entry{}, errors.New(`want "KIND FD NAME"`)
	}
	fd, ok := parseFD(fdField)
	if !ok {
		return Entry{}, fmt.Errorf("fd must be a decimal number in 0..%d", MaxFD)
	}
	return Entry{Kind: kind, FD: fd, Name: name}, nil
}

// check applies the per-entry rules and the (KIND, NAME) uniqueness.
func check(e Entry, seen map[[2]string]bool) error {
	switch e.Kind {
	case File, SDK, Env:
	default:
		return fmt.Errorf("kind must be %q, %q or %q", File, SDK, Env)
	}
	if e.Name == "" {
		return errors.New("empty name")
	}
	if strings.ContainsAny(e.Name, "\n\x00") {
		return errors.New("the name holds a newline or NUL")
	}
	switch e.Kind {
	case File:
		if e.Name[0] != '/' {
			return errors.New("a file name must be an absolute path")
		}
	case Env:
		if !IsEnvName(e.Name) {
			return errors.New("an env name must match [A-Za-z_][A-Za-z0-9_]*")
		}
		if e.Name == EnvVar { // the interposer rewrites that variable itself
			return errors.New("an env line cannot set the manifest's own variable")
		}
	}
	key := [2]string{e.Kind, e.Name}
	if seen[key] {
		return fmt.Errorf("duplicate %s name", e.Kind)
	}
	seen[key] = true
	return nil
}

func checkFD(fd int) error {
	if fd < 0 || fd > MaxFD {
		return fmt.Errorf("fd must be in 0..%d", MaxFD)
	}
	return nil
}

// parseFD accepts 1 to 10 plain decimal digits (no sign, no spaces).
func parseFD(f string) (int, bool) {
	if f == "" || len(f) > 10 {
		return 0, false
	}
	for i := 0; i < len(f); i++ {
		if f[i] < '0' || f[i] > '9' {
			return 0, false
		}
	}
	v, err := strconv.ParseUint(f, 10, 64)
	if err != nil || v > MaxFD {
		return 0, false
	}
	return int(v), true
}

// IsEnvName reports whether name is a portable environment variable name.
func IsEnvName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		letter := c == '_' || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')
		if !letter && (i == 0 || c < '0' || c > '9') {
			return false
		}
	}
	return true
}
