package agent

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// RoleEnv names the internal role a re-executed wrapper plays; roles are
// never started by anything but the wrapper itself.
const RoleEnv = "CLOUDTASER_INTERNAL"

// Roles of the canary's two processes.
const (
	RoleVictim = "canary-victim"
	RoleReader = "canary-reader"
)

// CanaryName is the comm both canary processes take; the agent recognises
// canary accesses by it (both sides protected, siblings) and does not report
// them as violations.
const CanaryName = "ct-canary"

// CanaryTimeout bounds the whole probe.
const CanaryTimeout = 10 * time.Second

// Reader exit codes (anything else, a successful read included, means no
// protection).
const (
	readerRead      = 0  // it read the victim: no protection
	readerOpenPerm  = 10 // EPERM on open: the LSM backend refused
	readerReadPerm  = 11 // EPERM on read
	readerOpenOther = 12
	readerReadOther = 13
	readerUsage     = 14
)

// NotLive is a canary that was not stopped.
type NotLive struct{ msg string }

func (e *NotLive) Error() string { return e.msg }

// Canary proves protection is live (contracts/README.md): a victim child
// makes itself dumpable and waits, a reader child opens and reads its
// /proc/PID/environ (mem when the policy does not protect environ); the reader
// must be SIGKILLed (tracepoint backend) or refused with EPERM (LSM backend).
func Canary(socket string, reg *Registration) error {
	target := "environ"
	if !reg.Protects("environ") && reg.Protects("mem") {
		target = "mem"
	}
	fail := func(why string) error {
		return &NotLive{fmt.Sprintf("node agent at %s answered, but protection is not live (canary %s)", socket, why)}
	}
	victim, addr, err := startVictim(target)
	if err != nil {
		return fail(err.Error())
	}
	defer func() {
		_ = victim.Kill()
		_, _ = victim.Wait()
	}()
	reader, err := spawn(RoleReader, []string{CanaryName, strconv.Itoa(victim.Pid), addr, target}, nil)
	if err != nil {
		return fail("reader did not start: " + err.Error())
	}
	state, ok := wait(reader, CanaryTimeout)
	if !ok {
		return fail("timed out")
	}
	status := state.Sys().(syscall.WaitStatus)
	switch {
	case status.Signaled() && status.Signal() == syscall.SIGKILL:
		return nil // tracepoint backend: the offender is killed
	case status.Exited() && (status.ExitStatus() == readerOpenPerm || status.ExitStatus() == readerReadPerm):
		return nil // LSM backend: EPERM
	case status.Exited() && status.ExitStatus() == readerRead:
		return fail(fmt.Sprintf("read /proc/%d/%s", victim.Pid, target))
	case status.Exited():
		return fail(fmt.Sprintf("reader of /proc/%d/%s exited %d", victim.Pid, target, status.ExitStatus()))
	}
	return fail(fmt.Sprintf("reader ended by %v", status.Signal()))
}

// startVictim starts the victim and waits for "ready ADDR".
func startVictim(target string) (*os.Process, string, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, "", err
	}
	defer r.Close()
	victim, err := spawn(RoleVictim, []string{CanaryName, target}, w)
	w.Close()
	if err != nil {
		return nil, "", fmt.Errorf("victim did not start: %v", err)
	}
	_ = r.SetReadDeadline(time.Now().Add(CanaryTimeout))
	line, err := bufio.NewReader(r).ReadString('\n')
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "ready ")
	if err != nil || !ok {
		_ = victim.Kill()
		_, _ = victim.Wait()
		return nil, "", errors.New("victim never got ready")
	}
	return victim, addr, nil
}

// spawn re-executes this program in role, with stdout on out (or /dev/null),
// stdin and stderr on /dev/null, and nothing else inherited.
func spawn(role string, argv []string, out *os.File) (*os.Process, error) {
	null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	defer null.Close()
	if out == nil {
		out = null
	}
	return os.StartProcess("/proc/self/exe", argv, &os.ProcAttr{
		Env:   []string{RoleEnv + "=" + role, "CLOUDTASER_CANARY_MARKER=1"},
		Files: []*os.File{null, out, null},
	})
}

// wait waits for p to end, at most timeout (then it is killed and reaped).
func wait(p *os.Process, timeout time.Duration) (*os.ProcessState, bool) {
	done := make(chan *os.ProcessState, 1)
	go func() {
		state, _ := p.Wait()
		done <- state
	}()
	select {
	case state := <-done:
		return state, state != nil
	case <-time.After(timeout):
		_ = p.Kill()
		<-done
		return nil, false
	}
}

var victimMarker uint64 = 0x6361_6e61_7279 // what a reader of mem would find

// RunVictim is the victim's main: dumpable (so that only the agent can stop a
// reader), readable by a sibling under Yama, then it waits to be killed.
func RunVictim() int {
	_ = unix.Prctl(unix.PR_SET_NAME, uintptr(unsafe.Pointer(&[]byte(CanaryName + "\x00")[0])), 0, 0, 0)
	_ = unix.Prctl(unix.PR_SET_DUMPABLE, 1, 0, 0, 0)
	_ = unix.Prctl(unix.PR_SET_PTRACER, unix.PR_SET_PTRACER_ANY, 0, 0, 0)
	fmt.Printf("ready %d\n", uintptr(unsafe.Pointer(&victimMarker)))
	os.Stdout.Close()
	for {
		time.Sleep(time.Hour)
	}
}

// RunReader is the reader's main: argv is NAME PID ADDR TARGET.
func RunReader(args []string) int {
	_ = unix.Prctl(unix.PR_SET_NAME, uintptr(unsafe.Pointer(&[]byte(CanaryName + "\x00")[0])), 0, 0, 0)
	if len(args) != 4 {
		return readerUsage
	}
	addr, err := strconv.ParseInt(args[2], 10, 64)
	if err != nil {
		return readerUsage
	}
	fd, err := unix.Open("/proc/"+args[1]+"/"+args[3], unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.EPERM) {
			return readerOpenPerm
		}
		return readerOpenOther
	}
	buf := make([]byte, 64)
	if args[3] == "mem" {
		_, err = unix.Pread(fd, buf[:8], addr)
	} else {
		_, err = unix.Read(fd, buf)
	}
	switch {
	case err == nil:
		return readerRead
	case errors.Is(err, unix.EPERM):
		return readerReadPerm
	}
	return readerReadOther
}
