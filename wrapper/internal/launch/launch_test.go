package launch

import (
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cloudtaser/cloudtaser/wrapper/internal/agent"
	"github.com/cloudtaser/cloudtaser/wrapper/internal/config"
	"github.com/cloudtaser/cloudtaser/wrapper/internal/openbao"
	"github.com/cloudtaser/cloudtaser/wrapper/internal/secmem"
	"github.com/cloudtaser/cloudtaser/wrapper/internal/secretfd"
)

func script(t *testing.T, dir, name, body string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestResolveLikeExecvp(t *testing.T) {
	dir := t.TempDir()
	script(t, dir, "tool", "#!/bin/sh\n")
	_ = os.WriteFile(filepath.Join(dir, "plain"), nil, 0o644)
	if got, err := Resolve("tool", "/nonexistent:"+dir); err != nil || got != filepath.Join(dir, "tool") {
		t.Fatalf("Resolve = %q, %v", got, err)
	}
	if _, err := Resolve("plain", dir); err != ErrDenied {
		t.Fatalf("Resolve(not executable) = %v", err)
	}
	if _, err := Resolve("nope", dir); err != ErrNotFound {
		t.Fatalf("Resolve(absent) = %v", err)
	}
	if _, err := Resolve("./nope", dir); err != ErrNotFound {
		t.Fatalf("Resolve(./absent) = %v", err)
	}
}

func TestInspectFollowsScriptsToTheirInterpreter(t *testing.T) {
	sh, _ := filepath.EvalSymlinks("/bin/sh")
	if app := Inspect(sh); app.Libc != Glibc {
		t.Fatalf("Inspect(%s) = %+v", sh, app)
	}
	dir := t.TempDir()
	one := script(t, dir, "one", "#!/bin/sh -e\necho\n")
	two := script(t, dir, "two", "#! "+one+"\n")
	if app := Inspect(two); app.Libc != Glibc || app.ELF != "/bin/sh" {
		t.Fatalf("Inspect(script of a script) = %+v", app)
	}
	self, _ := os.Executable() // a Go test binary: static unless cgo is in
	if app := Inspect(self); app.Libc != "" && app.Libc != Glibc {
		t.Fatalf("Inspect(self) = %+v", app)
	}
	loop := script(t, dir, "loop", "#!"+filepath.Join(dir, "loop")+"\n")
	if app := Inspect(loop); app.Libc != "" || !strings.Contains(app.Why, "more than 4") {
		t.Fatalf("Inspect(loop) = %+v", app)
	}
}

func TestAStaticProgramGetsNoInterposer(t *testing.T) {
	out := filepath.Join(t.TempDir(), "static")
	src := filepath.Join(t.TempDir(), "main.go")
	_ = os.WriteFile(src, []byte("package main\nfunc main() {}\n"), 0o644)
	build := exec.Command("go", "build", "-o", out, src)
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if msg, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, msg)
	}
	if app := Inspect(out); app.Libc != "" || app.Why != "is statically linked" {
		t.Fatalf("Inspect(static) = %+v", app)
	}
}

func TestAMuslProgramGetsTheMuslInterposer(t *testing.T) {
	gcc, err := exec.LookPath("musl-gcc")
	if err != nil {
		t.Skip("musl-gcc (Debian's musl-tools) is not installed")
	}
	dir := t.TempDir()
	_ = os.WriteFile(filepath.Join(dir, "m.c"), []byte("int main(void) { return 0; }\n"), 0o644)
	if msg, err := exec.Command(gcc, "-o", filepath.Join(dir, "m"), filepath.Join(dir, "m.c")).CombinedOutput(); err != nil {
		t.Fatalf("musl-gcc: %v\n%s", err, msg)
	}
	if app := Inspect(filepath.Join(dir, "m")); app.Libc != Musl {
		t.Fatalf("Inspect(musl) = %+v", app)
	}
}

// A setuid program runs with AT_SECURE and its loader ignores LD_PRELOAD:
// no interposer, unless no_new_privs keeps the bit from taking effect.
func TestASetuidProgramGetsNoInterposer(t *testing.T) {
	if nnp, _ := unix.PrctlRetInt(unix.PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0); nnp == 1 {
		t.Skip("no_new_privs is set here: setuid bits take no effect")
	}
	dir := t.TempDir()
	data, _ := os.ReadFile("/bin/true")
	path := filepath.Join(dir, "true")
	_ = os.WriteFile(path, data, 0o755)
	if err := os.Chmod(path, 0o755|fs.ModeSetuid); err != nil {
		t.Fatal(err)
	}
	if app := Inspect(path); app.Libc != "" || !strings.Contains(app.Why, "setuid") {
		t.Fatalf("Inspect(setuid) = %+v", app)
	}
}

func configWith(keys ...config.Key) *config.Config {
	return &config.Config{Namespace: "ns", Container: "app", TokenPath: "/t", Agent: config.Agent{Socket: "/nope"},
		Sources: []config.Source{{Binding: "ns/b", Address: "https://bao:8200", AuthMount: "kubernetes", Role: "r",
			ClientCertFile: "/c", ClientKeyFile: "/k", Secrets: []config.Secret{{Mount: "secret", Path: "p", Keys: keys}}}}}
}

// fetched is what FetchAll returns for cfg when OpenBao holds values (by key).
func fetched(t *testing.T, cfg *config.Config, values map[string]string) *openbao.Fetched {
	t.Helper()
	f := &openbao.Fetched{}
	for _, plan := range cfg.Plans() {
		b, _ := secmem.From([]byte(values[plan.Key.Key]))
		f.Values = append(f.Values, openbao.Value{Plan: plan, Buf: b})
	}
	t.Cleanup(f.Free)
	return f
}

// fdOf is the fd of the one delivery of key.
func fdOf(t *testing.T, d *Delivery, key string) int {
	t.Helper()
	fd := -1
	for plan, held := range d.Fds {
		if plan.Key.Key == key {
			if fd != -1 {
				t.Fatalf("two fds for key %s", key)
			}
			fd = held
		}
	}
	if fd == -1 {
		t.Fatalf("no fd for key %s", key)
	}
	return fd
}

// strings reads back what the image passes to execve.
func (img *Image) strings() (path string, argv, envp []string) {
	at := func(p uintptr) unsafe.Pointer { return *(*unsafe.Pointer)(unsafe.Pointer(&p)) } // the image's mapping
	cstr := func(p uintptr) string {
		var b []byte
		for ; *(*byte)(at(p)) != 0; p++ {
			b = append(b, *(*byte)(at(p)))
		}
		return string(b)
	}
	list := func(p uintptr) []string {
		var out []string
		for ; *(*uintptr)(at(p)) != 0; p += 8 {
			out = append(out, cstr(*(*uintptr)(at(p))))
		}
		return out
	}
	return cstr(img.path), list(img.argvp), list(img.envpp)
}

func envMap(envp []string) map[string]string {
	m := map[string]string{}
	for _, kv := range envp {
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	return m
}

func TestAStaticAppGetsEnvValuesInEnvpAndSDKFds(t *testing.T) {
	cfg := configWith(config.Key{Key: "a", Env: "A"}, config.Key{Key: "b", SDK: "bee", Env: "B"})
	app := App{Path: "/app", ELF: "/app", Why: "is statically linked"}
	plan, err := PlanFor(cfg, app, t.TempDir())
	if err != nil || plan.Preload != "" || plan.EnvLines || plan.ExecEnviron != agent.EnvironSecret {
		t.Fatalf("plan = %+v, %v", plan, err)
	}
	d, err := Prepare(cfg, plan, fetched(t, cfg, map[string]string{"a": "value-a", "b": "value-b"}),
		[]string{"/app", "-v"}, []string{"PATH=/bin", "CLOUDTASER_CONFIG=x", "B=old", "CLOUDTASER_FDS=junk"})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	path, argv, envp := d.Image.strings()
	env := envMap(envp)
	if path != "/app" || strings.Join(argv, " ") != "/app -v" {
		t.Fatalf("path %q argv %q", path, argv)
	}
	fd := fdOf(t, d, "b")
	if env["A"] != "value-a" || env["B"] != "value-b" || env["PATH"] != "/bin" || len(env) != 4 ||
		env["CLOUDTASER_FDS"] != "sdk "+itoa(fd)+" bee" {
		t.Fatalf("env %q", envp)
	}
	if same, _ := secretfd.Equal(fd, []byte("value-b")); !same {
		t.Fatal("the sdk fd holds another value")
	}
	if len(d.Refresh) != 1 {
		t.Fatalf("refresh %v", d.Refresh)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

func TestADynamicAppGetsTheInterposerAndEnvLines(t *testing.T) {
	dir := t.TempDir()
	lib := InterposerFile(dir, Glibc)
	_ = os.WriteFile(lib, nil, 0o644)
	cfg := configWith(config.Key{Key: "a", File: "/etc/a", SDK: "a", Env: "A"})
	plan, err := PlanFor(cfg, App{Path: "/bin/app", Libc: Glibc}, dir)
	if err != nil || plan.Preload != lib || !plan.EnvLines || plan.ExecEnviron != agent.EnvironClean {
		t.Fatalf("plan = %+v, %v", plan, err)
	}
	d, err := Prepare(cfg, plan, fetched(t, cfg, map[string]string{"a": "value-a"}), []string{"app"},
		[]string{"LD_PRELOAD=/opt/app.so", "A=stale"})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	_, _, envp := d.Image.strings()
	env := envMap(envp)
	fd := itoa(fdOf(t, d, "a"))
	if env["LD_PRELOAD"] != lib+":/opt/app.so" || env["CLOUDTASER_FDS"] != "file "+fd+" /etc/a\nsdk "+fd+" a\nenv "+fd+" A" {
		t.Fatalf("env %q", envp)
	}
	if v, ok := env["A"]; !ok || v != "" {
		t.Fatal("the env value (or the stale one) is in the initial environment, or no A= slot is")
	}
}

func TestFileDeliveryWithoutItsInterposerIsRefused(t *testing.T) {
	cfg := configWith(config.Key{Key: "a", File: "/etc/a"})
	_, err := PlanFor(cfg, App{Path: "/bin/app", Libc: Glibc}, t.TempDir())
	if err == nil || !strings.HasPrefix(err.Error(), "file delivery needs the interposer library, not found at ") {
		t.Fatalf("PlanFor = %v", err)
	}
	plan, err := PlanFor(cfg, App{Path: "/app", Why: "is statically linked"}, t.TempDir())
	if err != nil || len(plan.Warnings) != 1 || !strings.Contains(plan.Warnings[0], "file deliveries are not served") {
		t.Fatalf("PlanFor(static) = %+v, %v", plan, err)
	}
}

// A key the config names twice (one OpenBao key, two deliveries) is two plans, each with
// its own fd, both kept current by the refresher.
func TestAKeyNamedTwiceIsTwoDeliveries(t *testing.T) {
	cfg := configWith(config.Key{Key: "a", SDK: "a"}, config.Key{Key: "a", File: "/etc/a"})
	cfg.RefreshSeconds = 60
	plan, _ := PlanFor(cfg, App{Path: "/app", Why: "is statically linked"}, t.TempDir())
	f := fetched(t, cfg, map[string]string{"a": "value-a"})
	d, err := Prepare(cfg, plan, f, []string{"/app"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	plans := []*config.KeyPlan{f.Values[0].Plan, f.Values[1].Plan}
	if len(d.Fds) != 2 || len(d.Refresh) != 2 || d.Fds[plans[0]] == d.Fds[plans[1]] {
		t.Fatalf("fds %v, refresh %v", d.Fds, d.Refresh)
	}
	for _, p := range plans {
		if same, _ := secretfd.Equal(d.Refresh[p], []byte("value-a")); !same || d.Refresh[p] != d.Fds[p] {
			t.Fatalf("the fd of key %d holds another value", p.Index)
		}
	}
	_, _, envp := d.Image.strings()
	if got := envMap(envp)["CLOUDTASER_FDS"]; got != "sdk "+itoa(d.Fds[plans[0]])+" a\nfile "+
		itoa(d.Fds[plans[1]])+" /etc/a" {
		t.Fatalf("manifest %q", got)
	}
}

func TestAValueWithANulByteIsNoEnvironmentVariable(t *testing.T) {
	cfg := configWith(config.Key{Key: "a", Env: "A"})
	plan, _ := PlanFor(cfg, App{Path: "/app", Why: "is statically linked"}, t.TempDir())
	f := fetched(t, cfg, map[string]string{"a": "before\x00after"})
	_, err := Prepare(cfg, plan, f, []string{"/app"}, nil)
	if err == nil || !strings.Contains(err.Error(), "key 'a' holds a NUL byte") || strings.Contains(err.Error(), "before") {
		t.Fatalf("Prepare = %v", err)
	}
}
