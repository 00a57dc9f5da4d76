package secretfd

import (
	"crypto/rand"
	"errors"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cloudtaser/cloudtaser/wrapper/internal/testcaps"
)

func read(t *testing.T, fd int) []byte {
	t.Helper()
	var out []byte
	if err := With(fd, func(b []byte) { out = append([]byte{}, b...) }); err != nil {
		t.Fatal(err)
	}
	return out
}

func link(fd int) string {
	target, _ := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	return target
}

func secretmem(t *testing.T) {
	fd, err := unix.MemfdSecret(0)
	if err != nil {
		t.Skipf("no memfd_secret here (the kernel, or qemu-user, lacks it): %v", err)
	}
	unix.Close(fd)
}

func TestStorePutsTheValueInMemfdSecret(t *testing.T) {
	secretmem(t)
	value := make([]byte, 100)
	_, _ = rand.Read(value)
	held, err := Store(value, true, true)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(held.FD)
	if held.Kind != Secret || !strings.HasPrefix(link(held.FD), "/secretmem") {
		t.Fatalf("fd %d is %s (%s)", held.FD, held.Kind, link(held.FD))
	}
	if flags, _ := unix.FcntlInt(uintptr(held.FD), unix.F_GETFD, 0); flags&unix.FD_CLOEXEC != 0 {
		t.Fatal("the fd would not survive execve")
	}
	if string(read(t, held.FD)) != string(value) {
		t.Fatal("the fd holds another value")
	}
	if _, err := unix.Read(held.FD, make([]byte, 10)); err == nil { // why readers mmap
		t.Fatal("read() of a memfd_secret fd worked")
	}
}

// Every mapping of a memfd_secret fd is locked and left out of core dumps
// (VmFlags lo, dd), whoever maps it.
func TestEveryMappingOfTheSecretIsLockedAndNotDumped(t *testing.T) {
	secretmem(t)
	held, err := Store(make([]byte, 4096), true, true)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(held.FD)
	region, err := unix.Mmap(held.FD, 0, 4096, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(region)
	sink = region[0] // fault the page in
	smaps, _ := os.ReadFile("/proc/self/smaps")
	for _, block := range regexp.MustCompile(`\n(?:[0-9a-f]+-[0-9a-f]+ )`).Split("\n"+string(smaps), -1) {
		if !strings.Contains(strings.SplitN(block, "\n", 2)[0], "/secretmem") {
			continue
		}
		flags := regexp.MustCompile(`(?m)^VmFlags: (.*)$`).FindStringSubmatch(block)
		locked := regexp.MustCompile(`(?m)^Locked:\s+(\d+) kB$`).FindStringSubmatch(block)
		if flags == nil || !strings.Contains(" "+flags[1]+" ", " lo ") || !strings.Contains(" "+flags[1]+" ", " dd ") {
			t.Fatalf("flags of the secret mapping: %v", flags)
		}
		if n, _ := strconv.Atoi(locked[1]); n < 4 {
			t.Fatalf("locked: %s kB", locked[1])
		}
		return
	}
	t.Fatal("no /secretmem mapping in smaps")
}

var sink byte

func TestAnEmptyValueIsAnEmptyRegion(t *testing.T) {
	held, err := Store(nil, false, true)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(held.FD)
	if len(read(t, held.FD)) != 0 {
		t.Fatal("not empty")
	}
}

func withoutSecretmem(t *testing.T) {
	saved := memfdSecret
	memfdSecret = func(int) (int, error) { return -1, unix.ENOSYS } // as on a kernel without it
	t.Cleanup(func() { memfdSecret = saved })
}

func TestTheFallbackIsASealedMemfdOrARefusal(t *testing.T) {
	withoutSecretmem(t)
	held, err := Store([]byte("abc"), false, true)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(held.FD)
	if held.Kind != Sealed || held.Fallback != "memfd_secret unavailable" ||
		!strings.HasPrefix(link(held.FD), "/memfd:cloudtaser-secret") {
		t.Fatalf("held = %+v (%s)", held, link(held.FD))
	}
	if string(read(t, held.FD)) != "abc" {
		t.Fatal("wrong contents")
	}
	if _, err := unix.Write(held.FD, []byte("x")); !errors.Is(err, unix.EPERM) {
		t.Fatalf("write to the sealed memfd: %v", err)
	}
	_, err = Store([]byte("abc"), true, true)
	if err == nil || !strings.HasSuffix(err.Error(), "and the binding sets requireSecretMem") {
		t.Fatalf("Store with requireSecretMem = %v", err)
	}
}

// memfd_secret mappings count against RLIMIT_MEMLOCK: without room the error
// names it (requireSecretMem), or a sealed memfd is used with that reason.
func TestNoRoomInRLIMIT_MEMLOCK(t *testing.T) {
	secretmem(t)
	testcaps.MemlockLimit(t, 0)
	testcaps.WithoutIPCLock(t) // CAP_IPC_LOCK (root) would lift the limit
	_, err := Store(make([]byte, 4096), true, true)
	// one line naming the limit, its value and both ways to raise it
	for _, want := range []string{"RLIMIT_MEMLOCK 0 KiB", "ipcLock: true", "LimitMEMLOCK="} {
		if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "\n") {
			t.Fatalf("Store = %v, want %q in one line", err, want)
		}
	}
	held, err := Store(make([]byte, 4096), false, true)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(held.FD)
	if held.Kind != Sealed || !strings.Contains(held.Fallback, "RLIMIT_MEMLOCK") {
		t.Fatalf("held = %+v", held)
	}
}

func TestRewriteInPlaceKeepsTheFdAndRefusesANewLength(t *testing.T) {
	held, err := Store([]byte("old-value"), false, false)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(held.FD)
	if err := Rewrite(held.FD, []byte("new-value")); err != nil {
		t.Fatal(err)
	}
	if same, _ := Equal(held.FD, []byte("new-value")); !same {
		t.Fatal("not rewritten")
	}
	err = Rewrite(held.FD, []byte("longer-value"))
	if err == nil || !strings.Contains(err.Error(), "cannot be resized; restart the pod") {
		t.Fatalf("Rewrite = %v", err)
	}
	if same, _ := Equal(held.FD, []byte("new-value")); !same {
		t.Fatal("a refused rewrite changed the value")
	}
}
