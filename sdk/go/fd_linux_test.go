//go:build linux

package cloudtaser

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// writeMapped writes data at offset 0 of fd through a shared mapping, the
// way the wrapper and its refresher do (memfd_secret has no write()).
func writeMapped(t *testing.T, fd int, data []byte) {
	t.Helper()
	if len(data) == 0 {
		return
	}
	m, err := unix.Mmap(fd, 0, len(data), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatalf("mmap fd %d for writing: %v", fd, err)
	}
	copy(m, data)
	if err := unix.Munmap(m); err != nil {
		t.Fatal(err)
	}
}

// newSecretFD returns a memfd_secret fd holding data, closed at cleanup.
func newSecretFD(t *testing.T, data []byte) int {
	t.Helper()
	fd, err := memfdSecret()
	if errors.Is(err, unix.ENOSYS) {
		t.Skip("memfd_secret not available on this kernel")
	}
	if err != nil {
		t.Fatalf("memfd_secret: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Ftruncate(fd, int64(len(data))); err != nil {
		t.Fatalf("ftruncate memfd_secret: %v", err)
	}
	writeMapped(t, fd, data)
	return fd
}

// newMemfd returns an ordinary memfd holding data; sealed adds the seals the
// wrapper's fallback uses (no shrink, grow, write or further seals).
func newMemfd(t *testing.T, data []byte, sealed bool) int {
	t.Helper()
	fd, err := unix.MemfdCreate("cloudtaser-test", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		t.Fatalf("memfd_create: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Ftruncate(fd, int64(len(data))); err != nil {
		t.Fatal(err)
	}
	writeMapped(t, fd, data)
	if sealed {
		seals := unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE | unix.F_SEAL_SEAL
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals); err != nil {
			t.Fatalf("F_ADD_SEALS: %v", err)
		}
	}
	return fd
}

func mustStore(t *testing.T, manifest string) *store {
	t.Helper()
	s, err := parseManifest(manifest)
	if err != nil {
		t.Fatalf("parseManifest: %v", err)
	}
	return s
}

func checkGet(t *testing.T, s *store, name string, want []byte) {
	t.Helper()
	got, err := s.get(name)
	if err != nil {
		t.Fatalf("get(%q): %v", name, err)
	}
	if got == nil || !bytes.Equal(got, want) {
		t.Fatalf("get(%q): %d bytes (sha256 %x), want %d bytes (sha256 %x)",
			name, len(got), sha256.Sum256(got), len(want), sha256.Sum256(want))
	}
}

func TestGetSecretMemfdSecret(t *testing.T) {
	secrets := map[string][]byte{
		"db-password": randomBytes(t, 32),
		"api-token":   randomBytes(t, 4097), // crosses a page boundary
		"one-byte":    randomBytes(t, 1),
		"empty":       {},
		"one-mib":     randomBytes(t, 1<<20),
		"with spaces": randomBytes(t, 64),
	}
	fileData := randomBytes(t, 48)
	var lines []string
	lines = append(lines, fmt.Sprintf("file %d /etc/app/tls.key", newSecretFD(t, fileData)))
	for name, data := range secrets {
		lines = append(lines, fmt.Sprintf("sdk %d %s", newSecretFD(t, data), name))
	}
	s := mustStore(t, strings.Join(lines, "\n")+"\n")

	want := []string{"api-token", "db-password", "empty", "one-byte", "one-mib", "with spaces"}
	if got := s.secrets(); !slices.Equal(got, want) {
		t.Fatalf("secrets() = %q, want %q", got, want)
	}
	for name, data := range secrets {
		checkGet(t, s, name, data)
	}

	// The result is a private copy: changing it leaves the fd alone.
	got, _ := s.get("db-password")
	Wipe(got)
	checkGet(t, s, "db-password", secrets["db-password"])

	// The file entry is not an SDK secret.
	if _, err := s.get("/etc/app/tls.key"); !errors.Is(err, ErrUnknownSecret) {
		t.Fatalf("get(file entry) = %v; want ErrUnknownSecret", err)
	}
	_, err := s.get("missing")
	if !errors.Is(err, ErrUnknownSecret) {
		t.Fatalf("get(missing) = %v", err)
	}
	for name, data := range secrets {
		if len(data) >= 8 && strings.Contains(err.Error(), string(data)) {
			t.Fatalf("error contains the bytes of %q", name)
		}
	}
}

func TestGetSecretSealedMemfdFallback(t *testing.T) {
	small, big := randomBytes(t, 100), randomBytes(t, 1<<20)
	s := mustStore(t, fmt.Sprintf("sdk %d small\nsdk %d big\nsdk %d empty",
		newMemfd(t, small, true), newMemfd(t, big, true), newMemfd(t, nil, true)))
	checkGet(t, s, "small", small)
	checkGet(t, s, "big", big)
	checkGet(t, s, "empty", []byte{})
}

func TestRewriteInPlace(t *testing.T) {
	// memfd_secret: same size, new contents, written through the
	// refresher's own mapping.
	v1 := randomBytes(t, 256)
	sfd := newSecretFD(t, v1)
	s := mustStore(t, fmt.Sprintf("sdk %d token", sfd))
	checkGet(t, s, "token", v1)
	v2 := randomBytes(t, 256)
	writeMapped(t, sfd, v2)
	checkGet(t, s, "token", v2)

	// New sizes: grow, shrink, empty, grow again. Current kernels refuse to
	// resize a memfd_secret whose size is already set (EINVAL), so the size
	// changes are exercised on an unsealed memfd, read the same way.
	mfd := newMemfd(t, randomBytes(t, 10), false)
	s = mustStore(t, fmt.Sprintf("sdk %d token", mfd))
	for _, n := range []int{5000, 3, 0, 1 << 20, 17} {
		v := randomBytes(t, n)
		if err := unix.Ftruncate(mfd, int64(n)); err != nil {
			t.Fatal(err)
		}
		writeMapped(t, mfd, v)
		checkGet(t, s, "token", v)
	}
}

func TestFDErrors(t *testing.T) {
	// A closed fd.
	fd, err := unix.MemfdCreate("closed", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(fd)
	s := mustStore(t, fmt.Sprintf("sdk %d gone", fd))
	_, err = s.get("gone")
	if !errors.Is(err, unix.EBADF) {
		t.Fatalf("get(closed fd) = %v; want EBADF", err)
	}
	for _, want := range []string{strconv.Itoa(fd), `"gone"`, "fstat"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %s", err, want)
		}
	}

	// fds that are not memory files: a pipe and a directory.
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	dir, err := os.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	for name, fd := range map[string]int{"pipe": p[0], "dir": int(dir.Fd())} {
		s = mustStore(t, fmt.Sprintf("sdk %d %s", fd, name))
		b, err := s.get(name)
		if err == nil {
			t.Fatalf("get(%s fd) returned %d bytes, want an error", name, len(b))
		}
		for _, want := range []string{fmt.Sprintf("fd %d", fd), strconv.Quote(name), "not a memory file"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q lacks %s", err, want)
			}
		}
	}
}

// TestCopyMappedSurvivesTruncation: a mapping whose file was truncated under
// it raises SIGBUS on access; copyMapped must turn that into an error.
func TestCopyMappedSurvivesTruncation(t *testing.T) {
	fd := newMemfd(t, randomBytes(t, 3*4096), false)
	m, err := unix.Mmap(fd, 0, 3*4096, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	if err := unix.Ftruncate(fd, 0); err != nil {
		t.Fatal(err)
	}
	if err := copyMapped(make([]byte, len(m)), m); !errors.Is(err, errChanged) {
		t.Fatalf("copyMapped after truncate = %v; want errChanged", err)
	}
}

const helperEnv = "CLOUDTASER_SDK_TEST_HELPER"

// TestHelperProcess is not a test: run as a child by TestEndToEndChildProcess,
// it reports through the public API what it received, then exits.
func TestHelperProcess(t *testing.T) {
	mode := os.Getenv(helperEnv)
	if mode == "" {
		t.Skip("helper for TestEndToEndChildProcess")
	}
	switch mode {
	case "configured":
		for _, name := range Secrets() {
			b, err := GetSecret(name)
			if err != nil {
				fmt.Printf("ERR %s %v\n", name, err)
				continue
			}
			fmt.Printf("OK %d %x %s\n", len(b), sha256.Sum256(b), name)
			Wipe(b)
		}
		_, err := GetSecret("/etc/app/tls.key")
		fmt.Printf("UNKNOWN %v\n", errors.Is(err, ErrUnknownSecret))
	case "unconfigured":
		_, err := GetSecret("db-password")
		fmt.Printf("NOTCONFIGURED %v %v\n", errors.Is(err, ErrNotConfigured), Secrets() == nil)
	}
	os.Exit(0)
}

// TestEndToEndChildProcess runs this test binary as a child that inherits
// real memfd_secret and sealed memfd fds and reads them through the
// CLOUDTASER_FDS environment variable, as an application under the wrapper.
func TestEndToEndChildProcess(t *testing.T) {
	type sec struct {
		name string
		data []byte
		fd   int
	}
	secrets := []sec{
		{name: "db-password", data: randomBytes(t, 32)},
		{name: "api-token", data: randomBytes(t, 200)},
		{name: "empty", data: []byte{}},
		{name: "one-mib", data: randomBytes(t, 1<<20)},
		{name: "fallback memfd", data: randomBytes(t, 77)},
	}
	for i := range secrets {
		if secrets[i].name == "fallback memfd" {
			secrets[i].fd = newMemfd(t, secrets[i].data, true)
		} else {
			secrets[i].fd = newSecretFD(t, secrets[i].data)
		}
	}
	fileFD := newSecretFD(t, randomBytes(t, 40))

	// ExtraFiles[i] becomes fd 3+i in the child. Hand over dups so the
	// *os.File finalizers never close the fds the test owns.
	var extra []*os.File
	add := func(fd int, name string) int {
		d, err := unix.Dup(fd)
		if err != nil {
			t.Fatal(err)
		}
		f := os.NewFile(uintptr(d), name)
		t.Cleanup(func() { f.Close() })
		extra = append(extra, f)
		return 2 + len(extra)
	}
	lines := []string{fmt.Sprintf("file %d /etc/app/tls.key", add(fileFD, "file"))}
	for _, s := range secrets {
		lines = append(lines, fmt.Sprintf("sdk %d %s", add(s.fd, s.name), s.name))
	}
	manifest := strings.Join(lines, "\n") + "\n"

	run := func(mode string, env ...string) string {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
		cmd.Env = append(os.Environ(), helperEnv+"="+mode)
		cmd.Env = slices.DeleteFunc(cmd.Env, func(kv string) bool { return strings.HasPrefix(kv, EnvVar+"=") })
		cmd.Env = append(cmd.Env, env...)
		cmd.ExtraFiles = extra
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("helper (%s): %v\n%s", mode, err, out)
		}
		return string(out)
	}

	// The child lists Secrets() in sorted order.
	slices.SortFunc(secrets, func(a, b sec) int { return strings.Compare(a.name, b.name) })
	var want []string
	for _, s := range secrets {
		want = append(want, fmt.Sprintf("OK %d %s %s", len(s.data), hexSum(s.data), s.name))
	}
	want = append(want, "UNKNOWN true")
	got := strings.Split(strings.TrimSuffix(run("configured", EnvVar+"="+manifest), "\n"), "\n")
	if !slices.Equal(got, want) {
		t.Fatalf("child reported\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	if got := run("unconfigured"); got != "NOTCONFIGURED true true\n" {
		t.Fatalf("child without %s reported %q", EnvVar, got)
	}
}

func hexSum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
