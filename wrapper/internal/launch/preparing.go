package launch

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cloudtaser/cloudtaser/sdk/go/manifest"
	"github.com/cloudtaser/cloudtaser/wrapper/internal/agent"
	"github.com/cloudtaser/cloudtaser/wrapper/internal/config"
	"github.com/cloudtaser/cloudtaser/wrapper/internal/openbao"
	"github.com/cloudtaser/cloudtaser/wrapper/internal/secretfd"
)

// InterposerDirEnv overrides where the interposers are (default: the wrapper
// executable's directory).
const InterposerDirEnv = "CLOUDTASER_INTERPOSER_DIR"

// Environment variables the wrapper owns: never passed on as they were.
const (
	ConfigEnv  = "CLOUDTASER_CONFIG"
	PreloadEnv = "LD_PRELOAD"
)

// InterposerDir is where the interposers are looked for.
func InterposerDir() string {
	if dir := os.Getenv(InterposerDirEnv); dir != "" {
		return dir
	}
	exe, err := Executable()
	if err != nil {
		return "."
	}
	return filepath.Dir(exe)
}

// InterposerFile is the interposer for a libc; InterposerGlob matches them all.
func InterposerFile(dir, libc string) string {
	return filepath.Join(dir, "libcloudtaser-"+libc+".so")
}

// InterposerGlob matches every interposer in dir.
func InterposerGlob(dir string) string { return filepath.Join(dir, "libcloudtaser-*.so") }

// Executable is this program's path: /proc/self/exe, or an absolute argv[0]
// where no /proc is mounted (a bare chroot).
func Executable() (string, error) {
	exe, err := os.Executable()
	if err != nil && filepath.IsAbs(os.Args[0]) {
		return os.Args[0], nil
	}
	return exe, err
}

// Plan is how values reach the app; decided before registering (the
// registration announces ExecEnviron) and before fetching.
type Plan struct {
	App         App
	Preload     string // the interposer to LD_PRELOAD ("" for none)
	EnvLines    bool   // env deliveries as manifest lines the interposer serves
	ExecEnviron string // agent.EnvironClean or agent.EnvironSecret
	Warnings    []string
}

func delivers(cfg *config.Config, kind func(config.Key) string) bool {
	for _, s := range cfg.Sources {
		for _, secret := range s.Secrets {
			for _, k := range secret.Keys {
				if kind(k) != "" {
					return true
				}
			}
		}
	}
	return false
}

// PlanFor decides the deliveries for app: a dynamic glibc or musl program
// whose interposer is in dir gets it preloaded (always: it also keeps the app
// non-dumpable) and its env values as manifest lines, so its initial
// environment area holds none; any other program gets env values in envp.
func PlanFor(cfg *config.Config, app App, dir string) (Plan, error) {
	hasEnv := delivers(cfg, func(k config.Key) string { return k.Env })
	hasFile := delivers(cfg, func(k config.Key) string { return k.File })
	plan := Plan{App: app, ExecEnviron: agent.EnvironClean}
	if app.Libc != "" {
		lib := InterposerFile(dir, app.Libc)
		if info, err := os.Stat(lib); err == nil && info.Mode().IsRegular() {
			plan.Preload, plan.EnvLines = lib, true
			return plan, nil
		}
		if hasFile {
			return plan, fmt.Errorf("file delivery needs the interposer library, not found at %s (set %s)",
				lib, InterposerDirEnv)
		}
		what := "stays dumpable"
		if hasEnv {
			what += " and gets its env values in its initial environment"
		}
		plan.Warnings = append(plan.Warnings, fmt.Sprintf("warning: no interposer at %s: %s %s", lib, app.Path, what))
	} else if hasFile {
		plan.Warnings = append(plan.Warnings, fmt.Sprintf("warning: %s %s: file deliveries are not "+
			"served to it (use the SDK)", app.Path, app.Why))
	}
	if hasEnv {
		plan.ExecEnviron = agent.EnvironSecret
	}
	return plan, nil
}

// Delivery is the prepared app: its exec image and the secret fds.
type Delivery struct {
	Image    *Image
	Fds      map[*config.KeyPlan]int // every secret fd, by the plan of the key it holds
	Refresh  map[*config.KeyPlan]int // those a refresher keeps current (file and SDK)
	Warnings []string
}

// Prepare puts each value to deliver by fd into a secret fd of its own
// (shared by its file, SDK and env lines), writes the manifest, and builds the
// exec image: argv, and the environment less the wrapper's own variables with
// the deliveries added. Each fetched value says how it is delivered: the plan
// of the key it was fetched for.
func Prepare(cfg *config.Config, plan Plan, fetched *openbao.Fetched, argv, environ []string) (*Delivery, error) {
	d := &Delivery{Fds: map[*config.KeyPlan]int{}, Refresh: map[*config.KeyPlan]int{}}
	var entries []manifest.Entry
	var secretEnv []EnvValue
	var placeholders []string // NAME= for each env line: the slot the interposer points at the value
	delivered := map[string]bool{}
	for _, v := range fetched.Values {
		src, secret, key, value := v.Plan.Source, v.Plan.Secret, v.Plan.Key, v.Buf
		if key.Env != "" {
			if bytes.IndexByte(value.Bytes(), 0) >= 0 {
				d.Close()
				return nil, fmt.Errorf("binding %s: %s/%s: key '%s' holds a NUL byte: it cannot be "+
					"the environment variable %s (deliver it as a file or to the SDK)",
					src.Binding, secret.Mount, secret.Path, key.Key, key.Env)
			}
			delivered[key.Env] = true
			if plan.EnvLines {
				placeholders = append(placeholders, key.Env+"=")
			} else {
				secretEnv = append(secretEnv, EnvValue{Name: key.Env, Value: value.Bytes()})
			}
		}
		byFd := key.File != "" || key.SDK != "" || (key.Env != "" && plan.EnvLines)
		if !byFd {
			continue
		}
		held, err := secretfd.Store(value.Bytes(), cfg.RequireSecretMem, cfg.RefreshSeconds == 0)
		if err != nil {
			d.Close()
			return nil, err
		}
		d.Fds[v.Plan] = held.FD
		if held.Fallback != "" {
			d.Warnings = append(d.Warnings, fmt.Sprintf("warning: %s, %s/%s key %s is in a sealed memfd "+
				"(root can read it unless the node agent protects this process)",
				held.Fallback, secret.Mount, secret.Path, key.Key))
		}
		for _, e := range []manifest.Entry{{Kind: manifest.File, Name: key.File},
			{Kind: manifest.SDK, Name: key.SDK}, {Kind: manifest.Env, Name: key.Env}} {
			if e.Name != "" && (e.Kind != manifest.Env || plan.EnvLines) {
				entries = append(entries, manifest.Entry{Kind: e.Kind, FD: held.FD, Name: e.Name})
			}
		}
		if key.File != "" || key.SDK != "" {
			d.Refresh[v.Plan] = held.FD
		}
	}
	text, err := manifest.Format(entries)
	if err != nil {
		d.Close()
		return nil, fmt.Errorf("the fd manifest would be malformed (%v): the wrapper config has a bad delivery", err)
	}
	env := append(passedOn(environ, delivered), placeholders...)
	if text != "" {
		env = append(env, manifest.EnvVar+"="+text)
	}
	preload := lookup(environ, PreloadEnv)
	if plan.Preload != "" && preload != "" {
		preload = plan.Preload + ":" + preload
	} else if plan.Preload != "" {
		preload = plan.Preload
	}
	if preload != "" {
		env = append(env, PreloadEnv+"="+preload)
	}
	d.Image, err = NewImage(plan.App.Path, argv, env, secretEnv)
	if err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

// passedOn is environ less the wrapper's own variables, LD_PRELOAD (added
// back after it, with the interposer first) and the names deliveries set.
func passedOn(environ []string, delivered map[string]bool) []string {
	var out []string
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if name == ConfigEnv || name == manifest.EnvVar || name == PreloadEnv || delivered[name] {
			continue
		}
		out = append(out, kv)
	}
	return out
}

func lookup(environ []string, name string) string {
	value := ""
	for _, kv := range environ {
		if n, v, ok := strings.Cut(kv, "="); ok && n == name {
			value = v
		}
	}
	return value
}

// Close closes every secret fd (on a failure before exec).
func (d *Delivery) Close() {
	for _, fd := range d.Fds {
		_ = closeFd(fd)
	}
	d.Image.Free()
}
