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

	"github.com/cloudtaser/cloudtaser/sdk/go/manifest"
)

// EnvVar is the environment variable in which the wrapper describes the
// inherited secret fds.
const EnvVar = manifest.EnvVar

var (
	// ErrNotConfigured is returned when CLOUDTASER_FDS is not set, i.e. the
	// process was not started by the cloudtaser wrapper.
	ErrNotConfigured = errors.New("cloudtaser: " + EnvVar + " is not set (process not started by the cloudtaser wrapper)")

	// ErrUnknownSecret is returned (wrapped, with the requested and the
	// known names) when no "sdk" entry has the requested name.
	ErrUnknownSecret = errors.New("cloudtaser: unknown secret")

	// ErrMalformedManifest is returned (wrapped, with the line number) when
	// CLOUDTASER_FDS cannot be parsed.
	ErrMalformedManifest = manifest.ErrMalformed
)

// store is the parsed manifest: the fd of every "sdk" entry by name. The
// other kinds are validated (by the manifest package) but not kept.
type store struct {
	fds   map[string]int
	names []string // sorted
}

// parseManifest parses CLOUDTASER_FDS as contracts/README.md defines it
// (the manifest package: one parser for the SDK and the wrapper). Errors name
// the line number but never echo the line, so a value pasted into the
// manifest by mistake does not end up in logs.
func parseManifest(text string) (*store, error) {
	entries, err := manifest.Parse(text)
	if err != nil {
		return nil, fmt.Errorf("cloudtaser: %w", err)
	}
	s := &store{fds: map[string]int{}}
	for _, e := range entries {
		if e.Kind == manifest.SDK {
			s.fds[e.Name] = e.FD
			s.names = append(s.names, e.Name)
		}
	}
	sort.Strings(s.names)
	return s, nil
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
