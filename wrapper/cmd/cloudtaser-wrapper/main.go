// cloudtaser-wrapper: each injected container's entrypoint.
//
//	cloudtaser-wrapper [--config-env CLOUDTASER_CONFIG] [--deadline 60] -- COMMAND ARGS...
//	cloudtaser-wrapper install DIR
//
// config -> the app's program -> register with the node agent -> canary ->
// login and fetch -> secret fds -> refresher -> sweep -> execve in the same
// PID, so the agent's protection, the hardening (no core dumps) and the
// secret fds carry over. On any failure the app is not started and one line
// on stderr says what and why: exit 78 (permanent), 75 (transient past the
// deadline), 127/126 (the command cannot be started), 2 (usage).
package main

import (
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	// First: non-dumpable and no core dumps before anything else runs.
	"github.com/cloudtaser/cloudtaser/wrapper/internal/harden"

	"github.com/cloudtaser/cloudtaser/wrapper/internal/agent"
	"github.com/cloudtaser/cloudtaser/wrapper/internal/config"
	"github.com/cloudtaser/cloudtaser/wrapper/internal/install"
	"github.com/cloudtaser/cloudtaser/wrapper/internal/launch"
	"github.com/cloudtaser/cloudtaser/wrapper/internal/openbao"
	"github.com/cloudtaser/cloudtaser/wrapper/internal/refresher"
	"github.com/cloudtaser/cloudtaser/wrapper/internal/secmem"
	"github.com/cloudtaser/cloudtaser/wrapper/internal/sweep"
)

const (
	prog       = "cloudtaser-wrapper"
	exTempfail = 75
	exConfig   = 78
	exUsage    = 2
	usage      = "usage: cloudtaser-wrapper [--config-env NAME] [--deadline SECONDS] -- COMMAND ARGS...\n" +
		"       cloudtaser-wrapper install DIR"
)

func log(message string) { fmt.Fprintf(os.Stderr, "%s: %s\n", prog, message) }

func main() { os.Exit(run()) }

func run() int {
	switch role := os.Getenv(agent.RoleEnv); {
	case role == agent.RoleVictim && os.Args[0] == agent.CanaryName:
		return agent.RunVictim()
	case role == agent.RoleReader && os.Args[0] == agent.CanaryName:
		return agent.RunReader(os.Args)
	case role == refresher.Role && os.Args[0] == refresher.Name:
		return refresher.Run()
	}
	if len(os.Args) >= 2 && os.Args[1] == "install" {
		return install.Run(os.Args[2:])
	}
	opts, err := parse(os.Args[1:])
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s\n%s: error: %v\n", usage, prog, err)
		return exUsage
	}
	if opts.help {
		fmt.Println(usage)
		return 0
	}
	return wrap(opts)
}

type options struct {
	configEnv string
	deadline  time.Duration
	command   []string
	help      bool
}

func parse(args []string) (options, error) {
	o := options{configEnv: launch.ConfigEnv, deadline: 60 * time.Second}
	for i := 0; i < len(args); i++ {
		name, value, inline := strings.Cut(args[i], "=")
		takeValue := func() (string, error) {
			if inline {
				return value, nil
			}
			if i+1 >= len(args) {
				return "", fmt.Errorf("argument %s: expected one argument", name)
			}
			i++
			return args[i], nil
		}
		switch {
		case args[i] == "--":
			o.command = args[i+1:]
			i = len(args)
		case name == "--config-env":
			v, err := takeValue()
			if err != nil {
				return o, err
			}
			o.configEnv = v
		case name == "--deadline":
			v, err := takeValue()
			if err != nil {
				return o, err
			}
			seconds, err := strconv.ParseFloat(v, 64)
			if err != nil || seconds < 0 {
				return o, fmt.Errorf("argument --deadline: invalid value: '%s'", v)
			}
			o.deadline = time.Duration(seconds * float64(time.Second))
		case args[i] == "-h" || args[i] == "--help":
			o.help = true
			return o, nil
		case strings.HasPrefix(args[i], "-"):
			return o, fmt.Errorf("unrecognized arguments: %s", args[i])
		default:
			o.command = args[i:]
			i = len(args)
		}
	}
	if len(o.command) == 0 {
		return o, errors.New("no command: use cloudtaser-wrapper [options] -- COMMAND ARGS...")
	}
	return o, nil
}

// failure is a line to print and an exit code.
type failure struct {
	code int
	line string
}

func fail(code int, format string, args ...any) *failure {
	return &failure{code, fmt.Sprintf(format, args...)}
}

func wrap(o options) int {
	if f := prepareAndExec(o); f != nil {
		log(f.line)
		writeTerminationMessage(terminationLog, f.line)
		return f.code
	}
	return 0 // not reached: exec does not return on success
}

// terminationLog is where the kubelet reads a container's termination message: the pod
// spec's terminationMessagePath, /dev/termination-log unless the pod names another one.
const terminationLog = "/dev/termination-log"

// writeTerminationMessage puts the failure line where the kubelet reports it in the pod's
// status (lastState.terminated.message), so the operator can count the pod as failing and
// show why (kubectl get sb). Only into a file that exists: the kubelet creates it (mode
// 0666) in every container; outside a pod nothing is written. The line names paths and
// OpenBao's answer, never a secret.
func writeTerminationMessage(path, line string) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return
	}
	fmt.Fprintf(f, "%s: %s\n", prog, line)
	f.Close()
}

func prepareAndExec(o options) *failure {
	started := time.Now()
	if harden.Err != nil {
		return fail(exConfig, "cannot harden the process (no core dumps, not dumpable): %v", harden.Err)
	}
	raw := os.Getenv(o.configEnv)
	if raw == "" {
		return fail(exConfig, "%s is not set: the injector puts the wrapper config there", o.configEnv)
	}
	cfg, err := config.Parse([]byte(raw))
	if err != nil {
		return fail(exConfig, "%s is not a valid wrapper config: %v", o.configEnv, err)
	}
	secmem.Strict = cfg.RequireSecretMem

	// The app's program first: nothing is fetched for an app that cannot start,
	// and how its env values travel decides what the registration announces.
	path, err := launch.Resolve(o.command[0], pathEnv())
	if err != nil {
		return cannotStart(o.command[0], err)
	}
	plan, err := launch.PlanFor(cfg, launch.Inspect(path), launch.InterposerDir())
	if err != nil {
		return fail(exConfig, "%v", err)
	}
	for _, w := range plan.Warnings {
		log(w)
	}

	// Registered, protection proven live, untraced: only then any secret.
	registered, f := register(cfg, plan.ExecEnviron)
	if f != nil {
		return f
	}
	if tracer, err := agent.Traced(); err != nil {
		return fail(exConfig, "refusing to fetch secrets: cannot tell whether this process is traced (%v)", err)
	} else if tracer != 0 {
		return fail(exConfig, "refusing to fetch secrets: this process is traced (TracerPid %d)", tracer)
	}
	jwt, err := secmem.ReadFile(cfg.TokenPath)
	if errors.Is(err, secmem.ErrLimit) { // its message says what to raise, and how
		return fail(exConfig, "cannot hold the service-account token in locked memory: %v", err)
	}
	if err != nil {
		return fail(exConfig, "cannot read the service-account token %s: %s", cfg.TokenPath, strerror(err))
	}
	defer jwt.Free()
	fetched, err := openbao.FetchAll(cfg, jwt.Bytes(), o.deadline, log)
	if err != nil {
		return fetchFailure(err)
	}
	defer fetched.Free()
	delivery, err := launch.Prepare(cfg, plan, fetched, o.command, os.Environ())
	if err != nil { // secret memory as required, or a bad delivery
		return fail(exConfig, "%v", err)
	}
	for _, w := range delivery.Warnings {
		log(w)
	}
	if cfg.RefreshSeconds > 0 && len(delivery.Refresh) > 0 {
		if _, err := refresher.Start(raw, delivery.Refresh, o.deadline); err != nil {
			delivery.Close()
			return fail(exConfig, "cannot start the refresher: %v", err)
		}
	}
	log(registered)
	log(fmt.Sprintf("%d secret(s) fetched in %.0f ms; starting %s", len(fetched.Values),
		float64(time.Since(started).Microseconds())/1000, o.command[0]))

	// The end: no more allocation that matters, every copy outside the secret
	// buffers zeroed, the buffers wiped, exec.
	debug.SetGCPercent(-1)
	secrets := append(fetched.Secrets(), jwt.Bytes())
	restore := sweep.Quiet() // no signal writes registers back until execve
	swept, err := sweep.Sweep(secrets)
	if err != nil {
		restore()
		delivery.Close()
		return fail(exConfig, "cannot sweep the process's memory before exec: %v", err)
	}
	if sweep.Hook != nil {
		sweep.Hook(secrets, swept)
	}
	fetched.Free()
	jwt.Free()
	restore() // the app starts with the signal mask the wrapper had
	errno := delivery.Image.Exec()
	delivery.Close()
	return cannotStart(o.command[0], errno)
}

func pathEnv() string {
	if p, ok := os.LookupEnv("PATH"); ok {
		return p
	}
	return "/bin:/usr/bin" // Python's os.defpath, as the Python wrapper's execvpe had it
}

func cannotStart(command string, err error) *failure {
	switch {
	case errors.Is(err, launch.ErrNotFound), errors.Is(err, os.ErrNotExist):
		return fail(127, "cannot start %s: not found", command)
	case errors.Is(err, launch.ErrDenied), errors.Is(err, os.ErrPermission):
		return fail(126, "cannot start %s: permission denied", command)
	}
	return fail(126, "cannot start %s: %s", command, strerror(err))
}

func fetchFailure(err error) *failure {
	var e *openbao.Error
	if errors.As(err, &e) && e.Transient {
		return fail(exTempfail, "%s", e.Msg)
	}
	if e != nil {
		return fail(exConfig, "%s", e.Msg)
	}
	return fail(exConfig, "internal error (%T); the app was not started", err)
}

// register registers with the node agent and, in enforce mode, proves the
// protection live; it returns the line to log before exec.
func register(cfg *config.Config, execEnviron string) (string, *failure) {
	reg, err := agent.Register(cfg.Agent.Socket, execEnviron, cfg.Credentials(), agent.Timeout)
	var absent *agent.Unavailable
	switch {
	case errors.As(err, &absent) && cfg.Agent.Required:
		return "", fail(exConfig, "%v; the pod's policy enforces protection, so the app is not started "+
			"without the agent", err)
	case errors.As(err, &absent):
		return fmt.Sprintf("warning: %v; audit mode, starting without kernel protection", err), nil
	case err != nil:
		return "", fail(exConfig, "%v", err)
	}
	mode := reg.Mode
	if mode == "" && cfg.Agent.Required {
		mode = "enforce"
	}
	if mode == "enforce" {
		if err := agent.Canary(cfg.Agent.Socket, reg); err != nil {
			return "", fail(exConfig, "%v", err)
		}
	}
	return fmt.Sprintf("registered with the node agent (%s backend)", reg.Backend), nil
}

// strerror: the errno part of err, as C spells it ("No such file or directory").
func strerror(err error) string {
	text := err.Error()
	if i := strings.LastIndex(text, ": "); i >= 0 {
		text = text[i+2:]
	}
	if text != "" {
		text = strings.ToUpper(text[:1]) + text[1:]
	}
	return text
}
