package agent

import (
	"bufio"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// serveOnce answers one registration on a real unix socket and reports the
// caller's PID as the kernel gives it (SO_PEERCRED) and the request.
func serveOnce(t *testing.T, path, reply string) <-chan [2]any {
	t.Helper()
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	seen := make(chan [2]any, 1)
	go func() {
		defer l.Close()
		conn, err := l.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		raw, _ := conn.(*net.UnixConn).SyscallConn()
		var pid int32
		_ = raw.Control(func(fd uintptr) {
			cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
			if err == nil {
				pid = cred.Pid
			}
		})
		line, _ := bufio.NewReader(conn).ReadString('\n')
		var request map[string]any
		_ = json.Unmarshal([]byte(line), &request)
		_, _ = conn.Write([]byte(reply))
		seen <- [2]any{pid, request}
	}()
	return seen
}

func TestRegisterSendsVersion2AndTheKernelNamesTheCaller(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.sock")
	seen := serveOnce(t, path, `{"ok": true, "backend": "tracepoint", "mode": "enforce", "protections": ["environ", "mem"]}`+"\n")
	reg, err := Register(path, EnvironSecret, nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if reg.Backend != "tracepoint" || reg.Mode != "enforce" || !reg.Protects("mem") || reg.Protects("fds") {
		t.Fatalf("registration = %+v", reg)
	}
	got := <-seen
	want := map[string]any{"op": "register", "version": float64(2), "exec_environ": "secret"}
	if got[0].(int32) != int32(os.Getpid()) || !equal(got[1].(map[string]any), want) {
		t.Fatalf("the agent saw pid %v and %v", got[0], got[1])
	}
}

func TestRegisterNamesTheCredentials(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.sock")
	seen := serveOnce(t, path, `{"ok": true, "backend": "lsm", "mode": "enforce", "protections": []}`+"\n")
	creds := []string{"/var/run/secrets/cloudtaser/token/token", "/var/run/secrets/cloudtaser/tls/tls.key"}
	if _, err := Register(path, EnvironClean, creds, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	got := (<-seen)[1].(map[string]any)["credentials"].([]any)
	if len(got) != 2 || got[0] != creds[0] || got[1] != creds[1] {
		t.Fatalf("the agent saw credentials %v", got)
	}
}

func equal(a, b map[string]any) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func TestRefusalAndAbsenceAreDistinctErrors(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "agent.sock")
	serveOnce(t, path, `{"ok": false, "error": "not in a pod"}`+"\n")
	_, err := Register(path, EnvironClean, nil, 5*time.Second)
	var refused *Refused
	if !errors.As(err, &refused) || err.Error() != "node agent refused the registration: not in a pod" {
		t.Fatalf("Register = %v", err)
	}
	_, err = Register(filepath.Join(dir, "absent.sock"), EnvironClean, nil, 5*time.Second)
	var absent *Unavailable
	want := "node agent not reachable at " + filepath.Join(dir, "absent.sock") + ": No such file or directory"
	if !errors.As(err, &absent) || err.Error() != want {
		t.Fatalf("Register = %v, want %q", err, want)
	}
	serveOnce(t, path+"2", "not json\n")
	if _, err = Register(path+"2", EnvironClean, nil, 5*time.Second); !errors.As(err, &refused) ||
		!strings.Contains(err.Error(), "sent an unreadable reply") {
		t.Fatalf("Register = %v", err)
	}
}

// TestABusyAgentIsRetriedUntilItAccepts: a burst of pods fills the agent's
// accept queue and connect() fails with EAGAIN at once; that is retried, not
// taken for an absent agent.
func TestABusyAgentIsRetriedUntilItAccepts(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.sock")
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	var fillers []int
	for i := 0; i < 8; i++ { // fill the queue until a non-blocking connect gets EAGAIN
		f, _ := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK, 0)
		if err := unix.Connect(f, &unix.SockaddrUnix{Name: path}); err != nil {
			unix.Close(f)
			if !errors.Is(err, syscall.EAGAIN) {
				t.Fatalf("filler connect: %v", err)
			}
			break
		}
		fillers = append(fillers, f)
	}
	if _, err := net.DialTimeout("unix", path, time.Second); !errors.Is(err, syscall.EAGAIN) {
		t.Fatalf("the queue is not full: %v", err)
	}
	go func() {
		time.Sleep(500 * time.Millisecond)
		for _, f := range fillers {
			unix.Close(f) // the agent reads EOF from them
		}
		for {
			conn, _, err := unix.Accept(fd)
			if err != nil {
				return
			}
			buf := make([]byte, 512)
			n, _ := unix.Read(conn, buf)
			if n > 0 {
				_, _ = unix.Write(conn, []byte(`{"ok": true, "backend": "tracepoint"}`+"\n"))
				unix.Close(conn)
				return
			}
			unix.Close(conn)
		}
	}()
	defer unix.Close(fd)
	reg, err := Register(path, EnvironClean, nil, 10*time.Second)
	if err != nil || reg.Backend != "tracepoint" {
		t.Fatalf("Register = %+v, %v", reg, err)
	}
}

func TestNotTraced(t *testing.T) {
	if pid, err := Traced(); err != nil || pid != 0 {
		t.Fatalf("Traced = %d, %v", pid, err)
	}
}
