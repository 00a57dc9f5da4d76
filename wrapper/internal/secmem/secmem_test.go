package secmem

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cloudtaser/cloudtaser/wrapper/internal/testcaps"
)

func TestABufferGrowsIntoANewMappingAndForgetsTheOld(t *testing.T) {
	b, err := New(10)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Free()
	first := Regions()
	chunk := bytes.Repeat([]byte("x"), 5000)
	for i := 0; i < 3; i++ {
		if err := b.Append(chunk); err != nil {
			t.Fatal(err)
		}
	}
	if b.Len() != 15000 || !bytes.Equal(b.Bytes(), bytes.Repeat([]byte("x"), 15000)) {
		t.Fatal("the contents did not survive growing")
	}
	if len(Regions()) != len(first) {
		t.Fatalf("regions %v, before %v: the old mappings are still listed", Regions(), first)
	}
	b.Truncate(3)
	if b.Len() != 3 {
		t.Fatal("Truncate")
	}
}

// Strict (requireSecretMem): a buffer mlock refuses is an error naming
// RLIMIT_MEMLOCK; otherwise it is used and counted.
func TestAnUnlockableBuffer(t *testing.T) {
	testcaps.MemlockLimit(t, 0)
	testcaps.WithoutIPCLock(t)
	Strict = true
	_, err := New(4096)
	Strict = false
	if !errors.Is(err, ErrLimit) || !strings.Contains(err.Error(), "RLIMIT_MEMLOCK") ||
		!strings.Contains(err.Error(), "requireSecretMem") {
		t.Fatalf("New in strict mode = %v", err)
	}
	before := Unlocked()
	b, err := New(4096)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Free()
	if Unlocked() != before+4096 {
		t.Fatalf("unlocked %d, before %d", Unlocked(), before)
	}
}

func TestReadFileTrimsAndKeepsEverythingElse(t *testing.T) {
	path := filepath.Join(t.TempDir(), "token")
	_ = os.WriteFile(path, []byte("\n  eyJ.a b.c \t\n"), 0o600)
	b, err := ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Free()
	if string(b.Bytes()) != "eyJ.a b.c" {
		t.Fatalf("ReadFile = %q", b.Bytes())
	}
	if _, err := ReadFile(path + ".absent"); err == nil {
		t.Fatal("no error for an absent file")
	}
}
