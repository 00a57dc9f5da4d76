package cloudtaser

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// EnvVar is the environment variable in which the wrapper describes the
// inherited secret fds.
const EnvVar = "CLOUDTASER_FDS"

var (
	// ErrNotConfigured is returned when CLOUDTASER_FDS is not set, i.e. the
	// process was not started by the cloudtaser wrapper.
	ErrNotConfigured = errors.New("cloudtaser: " + EnvVar + " is not set (process not started by the cloudtaser wrapper)")

	// ErrUnknownSecret is returned (wrapped, with the requested and the
	// known names) when no "sdk" entry has the requested name.
	ErrUnknownSecret = errors.New("cloudtaser: unknown secret")

	// ErrMalformedManifest is returned (wrapped, with the line number) when
	// CLOUDTASER_FDS cannot be parsed.
	ErrMalformedManifest = errors.New("cloudtaser: malformed " + EnvVar)
)

// Kinds of manifest entries.
const (
	kindFile = "file"
	kindSDK  = "sdk"
)

// store is the parsed manifest: the fd of every "sdk" entry by name.
// "file" entries are validated but not kept; this package does not read them.
type store struct {
	fds   map[string]int
	names []string // sorted
}

// maxFD bounds the fd field; kernel file descriptors are non-negative ints.
const maxFD = 1<<31 - 1

// parseManifest parses the CLOUDTASER_FDS format: lines "KIND FD NAME"
// separated by '\n', one trailing newline tolerated. Errors name the line
// number and which part is wrong, but never echo the malformed line, so a
// value pasted into the manifest by mistake does not end up in logs.
func parseManifest(manifest string) (*store, error) {
	s := &store{fds: map[string]int{}}
	manifest = strings.TrimSuffix(manifest, "\n") // one trailing newline
	if manifest == "" {
		return s, nil
	}
	lines := strings.Split(manifest, "\n")
	for i, line := range lines {
		n := i + 1
		kind, rest, ok := strings.Cut(line, " ")
		if !ok {
			return nil, fmt.Errorf("%w: line %d: want \"KIND FD NAME\"", ErrMalformedManifest, n)
		}
		if kind != kindFile && kind != kindSDK {
			return nil, fmt.Errorf("%w: line %d: kind must be %q or %q", ErrMalformedManifest, n, kindFile, kindSDK)
		}
		fdField, name, ok := strings.Cut(rest, " ")
		if !ok {
			return nil, fmt.Errorf("%w: line %d: want \"KIND FD NAME\"", ErrMalformedManifest, n)
		}
		fd, ok := parseFD(fdField)
		if !ok {
			return nil, fmt.Errorf("%w: line %d: fd must be a decimal number in 0..%d", ErrMalformedManifest, n, maxFD)
		}
		if name == "" {
			return nil, fmt.Errorf("%w: line %d: empty name (fd %d)", ErrMalformedManifest, n, fd)
		}
		if kind != kindSDK {
			continue
		}
		if _, dup := s.fds[name]; dup {
			return nil, fmt.Errorf("%w: line %d: duplicate sdk name %q", ErrMalformedManifest, n, name)
		}
		s.fds[name] = fd
		s.names = append(s.names, name)
	}
	sort.Strings(s.names)
	return s, nil
}

// parseFD accepts only plain decimal digits (no sign, no spaces).
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
	if err != nil || v > maxFD {
		return 0, false
	}
	return int(v), true
}

// newStore loads the manifest through lookup (os.LookupEnv in production).
func newStore(lookup func(string) (string, bool)) (*store, error) {
	manifest, ok := lookup(EnvVar)
	if !ok {
		return nil, ErrNotConfigured
	}
	return parseManifest(manifest)
}

// secrets returns a copy of the sorted sdk names.
func (s *store) secrets() []string {
	return append([]string(nil), s.names...)
}

// get returns a fresh copy of the secret called name.
func (s *store) get(name string) ([]byte, error) {
	fd, ok := s.fds[name]
	if !ok {
		known := "none"
		if len(s.names) > 0 {
			q := make([]string, len(s.names))
			for i, n := range s.names {
				q[i] = strconv.Quote(n)
			}
			known = strings.Join(q, ", ")
		}
		return nil, fmt.Errorf("%w %q (known: %s)", ErrUnknownSecret, name, known)
	}
	return readSecretFD(fd, name)
}

var (
	defaultOnce  sync.Once
	defaultStore *store
	defaultErr   error
)

// load parses CLOUDTASER_FDS once per process.
func load() (*store, error) {
	defaultOnce.Do(func() {
		defaultStore, defaultErr = newStore(os.LookupEnv)
	})
	return defaultStore, defaultErr
}

// GetSecret returns a new copy of the secret called name, read from its
// memory fd at the time of the call.
//
// The copy is ordinary Go heap memory (see the package documentation); call
// [Wipe] on it when done. Errors: [ErrNotConfigured] when CLOUDTASER_FDS is
// absent, [ErrMalformedManifest] when it cannot be parsed, [ErrUnknownSecret]
// (wrapped) when there is no "sdk" entry called name, and an error naming the
// fd and the secret when the fd cannot be stat'ed or mapped.
func GetSecret(name string) ([]byte, error) {
	s, err := load()
	if err != nil {
		return nil, err
	}
	return s.get(name)
}

// Secrets returns the sorted names of the secrets available to GetSecret
// ("sdk" entries only). It returns nil when CLOUDTASER_FDS is absent or
// malformed; GetSecret reports the reason.
func Secrets() []string {
	s, err := load()
	if err != nil {
		return nil
	}
	return s.secrets()
}

// Wipe overwrites b with zeros. Call it on a slice returned by GetSecret once
// the secret is no longer needed. It cannot reach copies the Go runtime or
// your own code made elsewhere.
func Wipe(b []byte) {
	clear(b)
	runtime.KeepAlive(b)
}
