//go:build linux

package cloudtaser

import (
	"testing"

	"golang.org/x/sys/unix"
)

// The test binary imports this package, so its init has run: not dumpable.
func TestTheProcessIsNotDumpable(t *testing.T) {
	dumpable, err := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if dumpable != 0 {
		t.Fatalf("PR_GET_DUMPABLE = %d after the package's init, want 0", dumpable)
	}
}
