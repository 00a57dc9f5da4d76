// Package agent registers the wrapper with the node agent (protocol version 2,
// contracts/README.md) and then checks that protection is live: the canary,
// and no tracer attached.
//
// The agent takes the caller's PID from SO_PEERCRED, never from the message,
// so a process registers only itself; the PID stays the same across the
// wrapper's execve, so the app is protected from its first instruction.
package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"strings"
	"syscall"
	"time"
)

// Timeout bounds a registration, retries included: a node starting hundreds
// of pods at once keeps its agent busy for seconds.
const Timeout = 30 * time.Second

// Exec environments (the request's exec_environ).
const (
	EnvironClean  = "clean"  // the next execve's environment area holds no secret
	EnvironSecret = "secret" // it does (env deliveries passed in envp)
)

// Unavailable: no agent answered at the socket (absent, or not ready).
type Unavailable struct{ msg string }

func (e *Unavailable) Error() string { return e.msg }

// Refused: the agent answered and refused, or answered nonsense.
type Refused struct{ msg string }

func (e *Refused) Error() string { return e.msg }

// Registration is the agent's answer.
type Registration struct {
	Backend     string   `json:"backend"`
	Mode        string   `json:"mode"`
	Protections []string `json:"protections"`
}

// Protects reports whether the answer lists the protection.
func (r *Registration) Protects(name string) bool {
	for _, p := range r.Protections {
		if p == name {
			return true
		}
	}
	return false
}

// busy: the agent's accept queue is full (a burst of pods): EAGAIN on a
// unix-socket connect. Worth retrying; an absent agent (ENOENT,
// ECONNREFUSED) is not.
func busy(err error) bool {
	return errors.Is(err, syscall.EAGAIN)
}

// Register registers this process, naming the files of its credential volumes
// (the agent protects them for it and its family); timeout bounds the whole
// exchange (a busy agent is retried with jittered exponential backoff until then).
func Register(path, execEnviron string, credentials []string, timeout time.Duration) (*Registration, error) {
	deadline := time.Now().Add(timeout)
	var reply []byte
	var err error
	for attempt := 1; ; attempt++ {
		reply, err = exchange(path, execEnviron, credentials, deadline)
		if err == nil || !busy(err) {
			break
		}
		// tenacity's wait_random_exponential(multiplier=0.02, max=1)
		high := math.Min(0.02*math.Pow(2, float64(attempt-1)), 1)
		wait := time.Duration(rand.Float64() * high * float64(time.Second))
		if time.Now().Add(wait).After(deadline) {
			break
		}
		time.Sleep(wait)
	}
	if err != nil {
		return nil, &Unavailable{fmt.Sprintf("node agent not reachable at %s: %s", path, strerror(err))}
	}
	var answer struct {
		OK    *bool   `json:"ok"`
		Error *string `json:"error"`
		Registration
	}
	if json.Unmarshal(reply, &answer) != nil {
		return nil, &Refused{fmt.Sprintf("node agent at %s sent an unreadable reply", path)}
	}
	if answer.OK == nil || !*answer.OK {
		reason := "no reason given"
		if answer.Error != nil {
			reason = *answer.Error
		}
		if len(reason) > 200 {
			reason = reason[:200]
		}
		return nil, &Refused{"node agent refused the registration: " + reason}
	}
	if answer.Backend == "" {
		answer.Backend = "unknown"
	}
	return &answer.Registration, nil
}

func exchange(path, execEnviron string, credentials []string, deadline time.Time) ([]byte, error) {
	conn, err := net.DialTimeout("unix", path, time.Until(deadline))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(deadline)
	message := map[string]any{"op": "register", "version": 2, "exec_environ": execEnviron}
	if len(credentials) > 0 {
		message["credentials"] = credentials
	}
	request, _ := json.Marshal(message)
	if _, err := conn.Write(append(request, '\n')); err != nil {
		return nil, err
	}
	var reply []byte
	chunk := make([]byte, 512)
	for len(reply) < 4096 {
		n, err := conn.Read(chunk)
		reply = append(reply, chunk[:n]...)
		if i := strings.IndexByte(string(reply), '\n'); i >= 0 {
			return reply[:i], nil
		}
		if err != nil {
			if len(reply) > 0 {
				return reply, nil // a last line without its newline
			}
			return nil, err
		}
	}
	return reply, nil
}

// strerror is an error's errno text as C (and the Python wrapper) spell it:
// "No such file or directory".
func strerror(err error) string {
	var errno syscall.Errno
	text := err.Error()
	if errors.As(err, &errno) {
		text = errno.Error()
	} else if isTimeout(err) {
		text = "timed out"
	}
	if text != "" {
		text = strings.ToUpper(text[:1]) + text[1:]
	}
	return text
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
