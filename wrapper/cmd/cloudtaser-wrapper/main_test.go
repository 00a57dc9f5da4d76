package main

// The wrapper as a program: built once (production, and the memscan test
// build), run as a container would run it, against a scripted OpenBao over
// mutual TLS and a stand-in node agent on a real unix socket (the real agent
// and OpenBao: tests/e2e, tests/attacks).

import (
	"bufio"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cloudtaser/cloudtaser/wrapper/internal/testbao"
)

var binaries = map[string]string{} // "" and "memscan" -> path

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "cloudtaser-wrapper-test")
	if err != nil {
		panic(err)
	}
	for _, tags := range []string{"", "memscan"} {
		out := filepath.Join(dir, "build-"+tags, "wrapper")
		cmd := exec.Command("go", "build", "-trimpath", "-tags", tags, "-o", out, ".")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if msg, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "go build -tags %q: %v\n%s", tags, err, msg)
			os.Exit(1)
		}
		binaries[tags] = out
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type result struct {
	code           int
	stdout, stderr string
	pid            int
}

func runWrapper(t *testing.T, binary string, env []string, args ...string) result {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = env
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Start()
	if err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("the wrapper hung")
	}
	return result{cmd.ProcessState.ExitCode(), out.String(), errOut.String(), pid}
}

func baseEnv(extra ...string) []string {
	return append([]string{"PATH=/usr/bin:/bin"}, extra...)
}

type source struct {
	address, ca, cert, key string
	keys                   []map[string]string
}

func configJSON(token, socket string, required bool, refresh int, sources ...source) string {
	var list []map[string]any
	for _, s := range sources {
		list = append(list, map[string]any{"binding": "ns/b", "address": s.address, "authMount": "kubernetes",
			"role": "r", "caFile": s.ca, "clientCertFile": s.cert, "clientKeyFile": s.key,
			"secrets": []map[string]any{{"mount": "secret", "path": "p", "keys": s.keys}}})
	}
	c := map[string]any{"namespace": "ns", "container": "app", "tokenPath": token, "sources": list,
		"agent": map[string]any{"socket": socket, "required": required}}
	if refresh > 0 {
		c["refreshSeconds"] = refresh
	}
	raw, _ := json.Marshal(c)
	return "CLOUDTASER_CONFIG=" + string(raw)
}

func TestABadConfigIsOneLineNamingTheField(t *testing.T) {
	r := runWrapper(t, binaries[""], baseEnv(`CLOUDTASER_CONFIG={"version": 2}`), "--", "true")
	want := "cloudtaser-wrapper: CLOUDTASER_CONFIG is not a valid wrapper config: version: input should be 1\n"
	if r.code != 78 || r.stderr != want {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestMissingConfigAndMissingCommand(t *testing.T) {
	r := runWrapper(t, binaries[""], baseEnv(), "--", "true")
	if r.code != 78 || !strings.Contains(r.stderr, "CLOUDTASER_CONFIG is not set") {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	r = runWrapper(t, binaries[""], baseEnv())
	if r.code != 2 || !strings.Contains(r.stderr, "no command") {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
}

// An app that cannot start costs no registration and no fetch.
func TestACommandThatCannotStartIsRefusedFirst(t *testing.T) {
	cfg := configJSON("/nonexistent/token", "/nonexistent.sock", true, 0,
		source{address: "https://127.0.0.1:1", cert: "/c", key: "/k", keys: []map[string]string{{"key": "a", "env": "A"}}})
	r := runWrapper(t, binaries[""], baseEnv(cfg), "--", "nope-not-there")
	if r.code != 127 || r.stderr != "cloudtaser-wrapper: cannot start nope-not-there: not found\n" {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestEnforceWithoutTheAgentRefusesToStart(t *testing.T) {
	dir := t.TempDir()
	cfg := configJSON("/nonexistent/token", filepath.Join(dir, "agent.sock"), true, 0,
		source{address: "https://127.0.0.1:1", cert: "/c", key: "/k", keys: []map[string]string{{"key": "a", "env": "A"}}})
	r := runWrapper(t, binaries[""], baseEnv(cfg), "--", "touch", filepath.Join(dir, "started"))
	if r.code != 78 || !strings.Contains(r.stderr, "node agent not reachable at "+dir) ||
		!strings.Contains(r.stderr, "not started without the agent") {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "started")); err == nil {
		t.Fatal("the app was started")
	}
}

// fakeAgent answers every registration on a real unix socket with reply and
// records (kernel-named PID, request).
type fakeAgent struct {
	path string
	mu   sync.Mutex
	seen []registration
}

type registration struct {
	pid     int
	request map[string]any
}

func newAgent(t *testing.T, reply string) *fakeAgent {
	t.Helper()
	a := &fakeAgent{path: filepath.Join(t.TempDir(), "agent.sock")}
	l, err := net.Listen("unix", a.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			raw, _ := conn.(*net.UnixConn).SyscallConn()
			pid := 0
			_ = raw.Control(func(fd uintptr) {
				if cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); err == nil {
					pid = int(cred.Pid)
				}
			})
			line, _ := bufio.NewReader(conn).ReadString('\n')
			var request map[string]any
			_ = json.Unmarshal([]byte(line), &request)
			a.mu.Lock()
			a.seen = append(a.seen, registration{pid, request})
			a.mu.Unlock()
			_, _ = conn.Write([]byte(reply + "\n"))
			conn.Close()
		}
	}()
	return a
}

func (a *fakeAgent) registrations() []registration {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]registration{}, a.seen...)
}

// An impostor that answers "ok, enforce" on the socket does not get the app
// started: nothing stops the canary's reader.
func TestAnImpostorAgentFailsTheCanary(t *testing.T) {
	agent := newAgent(t, `{"ok": true, "backend": "lsm", "mode": "enforce", "protections": ["environ", "mem"]}`)
	dir := t.TempDir()
	cfg := configJSON("/nonexistent/token", agent.path, true, 0,
		source{address: "https://127.0.0.1:1", cert: "/c", key: "/k", keys: []map[string]string{{"key": "a", "env": "A"}}})
	interposers := t.TempDir() // a dynamic app: its interposer would be preloaded (never, here)
	_ = os.WriteFile(filepath.Join(interposers, "libcloudtaser-glibc.so"), nil, 0o644)
	r := runWrapper(t, binaries[""], baseEnv(cfg, "CLOUDTASER_INTERPOSER_DIR="+interposers), "--", "touch",
		filepath.Join(dir, "started"))
	want := "cloudtaser-wrapper: node agent at " + agent.path + " answered, but protection is not live (canary read /proc/"
	if r.code != 78 || !strings.HasPrefix(r.stderr, want) || strings.Count(r.stderr, "\n") != 1 {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	if regs := agent.registrations(); len(regs) != 1 || regs[0].pid != r.pid || regs[0].request["exec_environ"] != "clean" {
		t.Fatalf("registrations %+v (wrapper %d)", regs, r.pid)
	}
}

// bao is a scripted OpenBao and the files a pod has: token, CA, client pair.
type bao struct {
	pki    *testbao.PKI
	script *testbao.Script
	url    string
	token  string
}

func newBao(t *testing.T, values map[string]any) *bao {
	t.Helper()
	b := &bao{pki: testbao.NewPKI(t)}
	b.script = &testbao.Script{Answers: map[string][]testbao.Answer{"login": {testbao.LoginOK}, "read": {testbao.ReadOK(values)}}}
	b.url = testbao.Serve(t, b.pki, b.script)
	b.token = filepath.Join(b.pki.Dir, "token")
	_ = os.WriteFile(b.token, []byte("a.jwt.token-of-the-pod\n"), 0o600)
	return b
}

func (b *bao) source(keys ...map[string]string) source {
	return source{address: b.url, ca: b.pki.CAFile, cert: b.pki.ClientCert, key: b.pki.ClientKey, keys: keys}
}

func digest(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// A static app (no interposer can load): the env value in envp, the SDK value
// by fd, the same PID, and the registration says exec_environ "secret".
func TestDeliveriesToAStaticApp(t *testing.T) {
	b := newBao(t, map[string]any{"a": "env-value-of-a", "b": "sdk-value-of-b"})
	agent := newAgent(t, `{"ok": true, "backend": "tracepoint", "mode": "audit", "protections": []}`)
	cfg := configJSON(b.token, agent.path, false, 0, b.source(
		map[string]string{"key": "a", "env": "A"}, map[string]string{"key": "b", "sdk": "bee"}))
	app := goProgram(t, `package main

import ("crypto/sha256"; "fmt"; "os"; "strconv"; "strings"; "syscall")

func main() {
	fields := strings.Fields(os.Getenv("CLOUDTASER_FDS"))
	fd, _ := strconv.Atoi(fields[1])
	var st syscall.Stat_t
	_ = syscall.Fstat(fd, &st)
	m, _ := syscall.Mmap(fd, 0, int(st.Size), syscall.PROT_READ, syscall.MAP_SHARED)
	fmt.Printf("%d %x %x %s %s %q\n", os.Getpid(), sha256.Sum256([]byte(os.Getenv("A"))), sha256.Sum256(m),
		fields[0], fields[2], os.Getenv("CLOUDTASER_CONFIG"))
}
`)
	r := runWrapper(t, binaries[""], baseEnv(cfg), "--deadline", "10", "--", app)
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	want := fmt.Sprintf("%d %s %s sdk bee \"\"\n", r.pid, digest("env-value-of-a"), digest("sdk-value-of-b"))
	if r.stdout != want {
		t.Fatalf("app printed %q, want %q", r.stdout, want)
	}
	if !strings.Contains(r.stderr, "1 secret(s) fetched") && !strings.Contains(r.stderr, "2 secret(s) fetched") {
		t.Fatalf("stderr %q", r.stderr)
	}
	for _, v := range []string{"env-value-of-a", "sdk-value-of-b", "s.test-token", "token-of-the-pod"} {
		if strings.Contains(r.stderr+r.stdout, v) {
			t.Fatalf("%s was printed", v)
		}
	}
	regs := agent.registrations()
	if len(regs) != 1 || regs[0].pid != r.pid || regs[0].request["exec_environ"] != "secret" ||
		regs[0].request["version"] != float64(2) {
		t.Fatalf("registrations %+v", regs)
	}
	if b.script.Logins[0] != "a.jwt.token-of-the-pod r" {
		t.Fatalf("login %q", b.script.Logins)
	}
}

// goProgram builds a static Go program (an app without the interposer).
func goProgram(t *testing.T, source string) string {
	t.Helper()
	dir := t.TempDir()
	_ = os.WriteFile(filepath.Join(dir, "main.go"), []byte(source), 0o644)
	build := exec.Command("go", "build", "-o", filepath.Join(dir, "app"), filepath.Join(dir, "main.go"))
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if msg, err := build.CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, msg)
	}
	return filepath.Join(dir, "app")
}

// The refresher rewrites the SDK fd in place when the value rotates; it runs
// each refresh in a fresh address space (it executes itself again in the same
// PID, registering again).
func TestTheRefresherRotatesInPlaceInAFreshProcessEachTime(t *testing.T) {
	b := newBao(t, map[string]any{"a": "first-value"})
	b.script.Answers["read"] = []testbao.Answer{testbao.ReadOK(map[string]any{"a": "first-value"}),
		testbao.ReadOK(map[string]any{"a": "other-value"})}
	agent := newAgent(t, `{"ok": true, "backend": "tracepoint", "mode": "audit", "protections": []}`)
	cfg := configJSON(b.token, agent.path, false, 1, b.source(map[string]string{"key": "a", "sdk": "a"}))
	app := goProgram(t, `package main

import ("fmt"; "os"; "strconv"; "strings"; "syscall"; "time")

func read(fd int) string {
	m, _ := syscall.Mmap(fd, 0, 11, syscall.PROT_READ, syscall.MAP_SHARED)
	defer syscall.Munmap(m)
	return string(m)
}

func main() {
	fd, _ := strconv.Atoi(strings.Fields(os.Getenv("CLOUDTASER_FDS"))[1])
	first := read(fd)
	for end := time.Now().Add(20 * time.Second); time.Now().Before(end) && read(fd) == first; {
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(1500 * time.Millisecond) // one more refresh (nothing changes): a second re-exec
	fmt.Println(len(first), first == "first-value", read(fd) == "other-value")
}
`)
	r := runWrapper(t, binaries[""], baseEnv(cfg), "--", app)
	if r.code != 0 || r.stdout != "11 true true\n" || !strings.Contains(r.stderr, "1 secret(s) updated in place") {
		t.Fatalf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	var refreshers []int
	for _, reg := range agent.registrations()[1:] {
		refreshers = append(refreshers, reg.pid)
	}
	if len(refreshers) < 3 || refreshers[0] == r.pid {
		t.Fatalf("refresher registrations %v (app %d)", refreshers, r.pid)
	}
	for _, pid := range refreshers {
		if pid != refreshers[0] {
			t.Fatalf("the refresher changed its PID: %v", refreshers)
		}
	}
}

// The refresher registers its own PID, is the app's child, and dies with it.
func TestTheRefresherRegistersItselfAndDiesWithTheApp(t *testing.T) {
	b := newBao(t, map[string]any{"a": "rotating-value"})
	agent := newAgent(t, `{"ok": true, "backend": "tracepoint", "mode": "audit", "protections": []}`)
	cfg := configJSON(b.token, agent.path, false, 3600, b.source(map[string]string{"key": "a", "sdk": "a"}))
	cmd := exec.Command(binaries[""], "--", "/bin/sh", "-c", "echo $$; read line")
	cmd.Env = baseEnv(cfg)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	var errOut strings.Builder
	cmd.Stderr = &errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	line, _ := bufio.NewReader(stdout).ReadString('\n')
	app, _ := strconv.Atoi(strings.TrimSpace(line))
	if app != cmd.Process.Pid {
		t.Fatalf("the app runs as %d, the wrapper was %d: %s", app, cmd.Process.Pid, errOut.String())
	}
	var refresher int
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if regs := agent.registrations(); len(regs) == 2 {
			refresher = regs[1].pid
			break
		}
	}
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", refresher))
	if refresher == 0 || refresher == app || !strings.Contains(string(status), fmt.Sprintf("PPid:\t%d\n", app)) {
		t.Fatalf("refresher %d (app %d): %s\n%s", refresher, app, status, errOut.String())
	}
	if !strings.Contains(string(status), "Name:\tcloudtaser-refr") {
		t.Fatalf("the refresher is not the wrapper's program in its role: %s", status)
	}
	stdin.Close()
	_ = cmd.Wait()
	for deadline := time.Now().Add(10 * time.Second); alive(refresher) && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	if alive(refresher) {
		t.Fatal("the refresher outlived the app")
	}
}

func alive(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	return len(fields) > 0 && fields[0] != "Z"
}

func TestInstallCopiesTheWrapperAndTheInterposers(t *testing.T) {
	here := t.TempDir()
	data, _ := os.ReadFile(binaries[""])
	_ = os.WriteFile(filepath.Join(here, "cloudtaser-wrapper"), data, 0o755)
	_ = os.WriteFile(filepath.Join(here, "libcloudtaser-glibc.so"), []byte("glibc"), 0o644)
	_ = os.WriteFile(filepath.Join(here, "libcloudtaser-musl.so"), []byte("musl"), 0o644)
	target := filepath.Join(t.TempDir(), "cloudtaser")
	for i := 0; i < 2; i++ { // idempotent
		r := runWrapper(t, filepath.Join(here, "cloudtaser-wrapper"), baseEnv(), "install", target)
		if r.code != 0 || !strings.Contains(r.stderr, "wrapper bundle installed in "+target) {
			t.Fatalf("exit %d: %s", r.code, r.stderr)
		}
	}
	entries, _ := os.ReadDir(target)
	var names []string
	for _, e := range entries {
		info, _ := e.Info()
		names = append(names, fmt.Sprintf("%s %v", e.Name(), info.Mode()))
	}
	want := "libcloudtaser-glibc.so -rwxr-xr-x|libcloudtaser-musl.so -rwxr-xr-x|wrapper -rwxr-xr-x"
	if strings.Join(names, "|") != want {
		t.Fatalf("installed %q", names)
	}
	r := runWrapper(t, filepath.Join(target, "wrapper"), baseEnv(), "--help")
	if r.code != 0 || !strings.Contains(r.stdout, "usage: cloudtaser-wrapper") {
		t.Fatalf("the installed wrapper: exit %d %s", r.code, r.stderr)
	}
	if r := runWrapper(t, filepath.Join(here, "cloudtaser-wrapper"), baseEnv(), "install"); r.code != 1 ||
		!strings.Contains(r.stderr, "usage") {
		t.Fatalf("install without a directory: %d %s", r.code, r.stderr)
	}
}

type scan struct {
	Secrets int      `json:"secrets"`
	Whole   int      `json:"whole"`
	Pieces  int      `json:"pieces"`
	Scanned int      `json:"scanned_bytes"`
	Found   []string `json:"found"`
}

// TestNoSecretOutsideTheSecretMappingsAtExec is issue 13's memory test: the
// memscan build reads its own memory through /proc/self/mem just before exec
// and finds no value, client token or service-account token (nor a piece of
// 16 bytes of one) outside the secmem buffers. Values: short, escaped, and
// one of 40 kB, larger than a TLS record, so it straddles records. The same
// run without the sweep finds them: the scan can fail.
func TestNoSecretOutsideTheSecretMappingsAtExec(t *testing.T) {
	random := func(n int) string { // not a run of 16 bytes the binary's constants share
		b := make([]byte, n)
		_, _ = rand.Read(b)
		return base64.RawURLEncoding.EncodeToString(b)
	}
	values := map[string]any{"a": random(12), "q": "quo\"ted\\" + random(12) + "<&>é", "big": random(30000)}
	for _, sweep := range []bool{true, false} {
		t.Run(fmt.Sprintf("sweep=%v", sweep), func(t *testing.T) {
			b := newBao(t, values)
			cfg := configJSON(b.token, "/nonexistent.sock", false, 0, b.source(
				map[string]string{"key": "a", "env": "A"}, map[string]string{"key": "q", "sdk": "q"},
				map[string]string{"key": "big", "sdk": "big"}))
			report := filepath.Join(t.TempDir(), "scan.json")
			env := baseEnv(cfg, "CLOUDTASER_MEMSCAN_REPORT="+report)
			if !sweep {
				env = append(env, "CLOUDTASER_MEMSCAN_NOSWEEP=1")
			}
			r := runWrapper(t, binaries["memscan"], env, "--", "/bin/true")
			if r.code != 0 {
				t.Fatalf("exit %d: %s", r.code, r.stderr)
			}
			raw, err := os.ReadFile(report)
			if err != nil {
				t.Fatal(err)
			}
			var s scan
			_ = json.Unmarshal(raw, &s)
			if s.Secrets < 5 || s.Scanned < 1<<20 {
				t.Fatalf("the scan looked for %d secrets in %d bytes", s.Secrets, s.Scanned)
			}
			if sweep && (s.Whole != 0 || s.Pieces != 0) {
				t.Fatalf("after the sweep: %d whole, %d pieces: %q", s.Whole, s.Pieces, s.Found)
			}
			if !sweep && s.Whole == 0 {
				t.Fatalf("without the sweep the scan found nothing: it cannot fail (%s)", raw)
			}
			t.Logf("sweep=%v: %s", sweep, raw)
		})
	}
}

func TestTheFailureLineBecomesTheTerminationMessageOnlyWhereTheKubeletMadeTheFile(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "termination-log")
	if err := os.WriteFile(log, []byte("an earlier, longer message"), 0o666); err != nil {
		t.Fatal(err)
	}
	writeTerminationMessage(log, "binding ns/app: secret/ns/app: permission denied")
	got, err := os.ReadFile(log)
	if err != nil || string(got) != "cloudtaser-wrapper: binding ns/app: secret/ns/app: permission denied\n" {
		t.Fatalf("termination message %q (%v)", got, err)
	}
	absent := filepath.Join(dir, "absent")
	writeTerminationMessage(absent, "line")
	if _, err := os.Stat(absent); !os.IsNotExist(err) {
		t.Fatalf("created %s outside a pod: %v", absent, err)
	}
}
