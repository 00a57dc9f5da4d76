//go:build linux

package cloudtaser

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// expectEnv is "NAME SHA256 LENGTH" of the secret TestUnderTheWrapper should
// find; the value itself never reaches this test.
const expectEnv = "CLOUDTASER_SDK_EXPECT"

// TestUnderTheWrapper is `go test` against fds made by the real wrapper:
// tests/e2e/test_wrapper.py builds this package's test binary (`go test -c`)
// and starts it as the app of `python -m cloudtaser.wrapper` against the local
// stack's OpenBao, with -test.run=^TestUnderTheWrapper$. The manifest, the fd
// and its memory are then the wrapper's own. Run any other way, it skips.
func TestUnderTheWrapper(t *testing.T) {
	expect := strings.Fields(os.Getenv(expectEnv))
	if len(expect) == 0 {
		t.Skip("run by tests/e2e/test_wrapper.py as the app of the real wrapper")
	}
	if len(expect) != 3 {
		t.Fatalf("%s must be NAME SHA256 LENGTH", expectEnv)
	}
	name, wantSum := expect[0], expect[1]
	wantLen, err := strconv.Atoi(expect[2])
	if err != nil {
		t.Fatal(err)
	}
	if got := Secrets(); !slices.Equal(got, []string{name}) {
		t.Fatalf("Secrets() = %q, want [%q]", got, name)
	}
	b, err := GetSecret(name)
	if err != nil {
		t.Fatalf("GetSecret(%q): %v", name, err)
	}
	sum := sha256.Sum256(b)
	n := len(b)
	Wipe(b)
	if n != wantLen || hex.EncodeToString(sum[:]) != wantSum {
		t.Fatalf("GetSecret(%q): %d bytes, sha256 %x; want %d bytes, sha256 %s", name, n, sum, wantLen, wantSum)
	}

	// The wrapper's fd is a memfd_secret region, which read(2) refuses: the
	// SDK got the value through mmap.
	fd := -1
	for _, line := range strings.Split(os.Getenv(EnvVar), "\n") {
		if parts := strings.SplitN(line, " ", 3); len(parts) == 3 && parts[0] == "sdk" && parts[2] == name {
			fd, _ = strconv.Atoi(parts[1])
		}
	}
	if fd < 0 {
		t.Fatalf("no sdk line for %q in %s", name, EnvVar)
	}
	target, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil || !strings.HasPrefix(target, "/secretmem") {
		t.Fatalf("fd %d is %q (%v), want a memfd_secret region", fd, target, err)
	}
	if _, err := unix.Read(fd, make([]byte, 1)); err == nil {
		t.Fatalf("read(2) of the memfd_secret fd %d succeeded", fd)
	}
}
