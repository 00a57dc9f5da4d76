// Package refresher keeps file and SDK deliveries current without restarting
// the app.
//
// The wrapper starts it just before it execs the app: a child that re-executes
// the wrapper's own program (/proc/self/exe) in the refresher role, with the
// secret fds at the same numbers, the config and the fd map in its
// environment. Every refreshSeconds it re-reads the (rotating, projected)
// service-account token, fetches everything again and rewrites each fd in
// place; the interposer and the SDKs map the fd on every read, so the app
// sees the new value on its next open/get. A failed refresh keeps the old
// values and is retried at the next interval. After each refresh it sweeps
// and executes itself again (same PID), so each interval starts with a fresh
// address space. It registers its own PID with the node agent, so it is
// protected like the app, and dies with the app (PR_SET_PDEATHSIG, which
// execve keeps, and it stops when its parent changes).
//
// Limitation: a rotated value must keep its length (secret memory cannot be
// resized and the app holds its fds by number); env deliveries cannot change
// after exec.
package refresher

import (
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cloudtaser/cloudtaser/wrapper/internal/agent"
	"github.com/cloudtaser/cloudtaser/wrapper/internal/config"
	"github.com/cloudtaser/cloudtaser/wrapper/internal/openbao"
	"github.com/cloudtaser/cloudtaser/wrapper/internal/secmem"
	"github.com/cloudtaser/cloudtaser/wrapper/internal/secretfd"
	"github.com/cloudtaser/cloudtaser/wrapper/internal/sweep"
)

// Role is the refresher's value of agent.RoleEnv; Name its argv[0].
const (
	Role = "refresher"
	Name = "cloudtaser-refresher"
)

const (
	fdsEnv      = "CLOUDTASER_REFRESH_FDS"
	deadlineEnv = "CLOUDTASER_REFRESH_DEADLINE"
	configEnv   = "CLOUDTASER_CONFIG"
)

// held is one fd the refresher keeps current and the key whose value it holds,
// named by its place in the config's order (config.KeyPlan.Index): the
// refresher parses the same config text, so its plans are the wrapper's.
type held struct {
	FD  int `json:"fd"`
	Key int `json:"key"`
}

// Start starts the refresher and returns its PID. rawConfig is the config as
// the wrapper got it; fds are the fds it keeps current, by the plan of the key
// whose value each holds.
//
// It locks the calling goroutine to its thread for good: the caller execs the
// app from the thread that forked the refresher, so the refresher's
// parent-death signal stays tied to the app (PR_SET_PDEATHSIG fires when the
// thread that forked the child exits, and execve ends every other thread).
func Start(rawConfig string, fds map[*config.KeyPlan]int, deadline time.Duration) (int, error) {
	runtime.LockOSThread()
	var list []held
	highest := 2
	for plan, fd := range fds {
		list = append(list, held{fd, plan.Index})
		highest = max(highest, fd)
	}
	fdMap, err := json.Marshal(list) // fd numbers and key indexes: nothing secret
	if err != nil {
		return 0, err
	}
	null, err := os.Open(os.DevNull)
	if err != nil {
		return 0, err
	}
	defer null.Close()
	files := make([]uintptr, highest+1)
	for i := range files {
		files[i] = ^uintptr(0) // closed in the child
	}
	files[0], files[1], files[2] = null.Fd(), 1, 2
	for _, h := range list {
		files[h.FD] = uintptr(h.FD)
	}
	return syscall.ForkExec("/proc/self/exe", []string{Name}, &syscall.ProcAttr{
		Env: []string{agent.RoleEnv + "=" + Role, configEnv + "=" + rawConfig, fdsEnv + "=" + string(fdMap),
			deadlineEnv + "=" + strconv.FormatFloat(deadline.Seconds(), 'f', -1, 64)},
		Files: files,
		Sys:   &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM},
	})
}

func log(message string) { fmt.Fprintf(os.Stderr, "%s: %s\n", Name, message) }

// Run is the refresher's main.
func Run() int {
	app := os.Getppid()
	name := []byte(Name[:15] + "\x00") // comm holds 15 bytes: "cloudtaser-refr"
	_ = unix.Prctl(unix.PR_SET_NAME, uintptr(unsafe.Pointer(&name[0])), 0, 0, 0)
	cfg, err := config.Parse([]byte(os.Getenv(configEnv)))
	if err != nil {
		log("not started: " + err.Error())
		return 1
	}
	var list []held
	if err := json.Unmarshal([]byte(os.Getenv(fdsEnv)), &list); err != nil {
		log("not started: unreadable " + fdsEnv)
		return 1
	}
	deadline, err := strconv.ParseFloat(os.Getenv(deadlineEnv), 64)
	if err != nil || deadline <= 0 {
		deadline = 60
	}
	secmem.Strict = cfg.RequireSecretMem
	if _, err := agent.Register(cfg.Agent.Socket, agent.EnvironClean, cfg.Credentials(), agent.Timeout); err != nil {
		log("warning: " + err.Error())
	}
	interval := time.Duration(cfg.RefreshSeconds) * time.Second
	time.Sleep(interval)
	if os.Getppid() != app {
		return 0 // the app is gone
	}
	budget := min(time.Duration(deadline*float64(time.Second)), interval)
	fetched, jwt, changed, err := Once(cfg, list, budget)
	if err != nil {
		log("refresh failed, keeping the current values: " + err.Error())
	} else if changed > 0 {
		log(fmt.Sprintf("%d secret(s) updated in place", changed))
	}
	// The next interval in a fresh address space, as the app got one: what crypto/tls
	// left of this refresh is zeroed, the buffers wiped, and this program executed again in
	// the same PID (the agent's entry, the parent-death signal and the fds carry over). A
	// sweep in a process that goes on would zero every chance occurrence of a short value
	// in the data it still needs (its config: role "demo", namespace "cloudtaser-demo").
	var secrets [][]byte
	if fetched != nil {
		secrets = fetched.Secrets()
	}
	if jwt != nil {
		secrets = append(secrets, jwt.Bytes())
	}
	debug.SetGCPercent(-1)
	restore := sweep.Quiet() // no signal writes registers back until execve
	_, _ = sweep.Sweep(secrets)
	fetched.Free()
	jwt.Free()
	restore()
	err = syscall.Exec("/proc/self/exe", os.Args, os.Environ())
	log("cannot start the next refresh: " + err.Error())
	return 1
}

// Once fetches every value again and rewrites the fds whose value changed; it
// returns what it fetched (for the sweep; the caller frees it), the token and
// how many fds changed. On failure the old values stay.
func Once(cfg *config.Config, list []held, deadline time.Duration) (*openbao.Fetched, *secmem.Buffer, int, error) {
	jwt, err := secmem.ReadFile(cfg.TokenPath)
	if err != nil {
		return nil, nil, 0, fmt.Errorf("cannot read the service-account token %s: %v", cfg.TokenPath, err)
	}
	fetched, err := openbao.FetchAll(cfg, jwt.Bytes(), deadline, log)
	if err != nil {
		return nil, jwt, 0, err
	}
	changed := 0
	for _, h := range list {
		if h.Key < 0 || h.Key >= len(fetched.Values) {
			continue
		}
		value, plan := fetched.Values[h.Key].Buf, fetched.Values[h.Key].Plan
		same, err := secretfd.Equal(h.FD, value.Bytes())
		if err == nil && same {
			continue
		}
		if err := secretfd.Rewrite(h.FD, value.Bytes()); err != nil {
			log(fmt.Sprintf("%s/%s key %s: %v", plan.Secret.Mount, plan.Secret.Path, plan.Key.Key, err))
			continue
		}
		changed++
	}
	return fetched, jwt, changed, nil
}
