// Package harden makes the wrapper's process safe to hold secrets before any
// of the wrapper's code runs: importing it (the first thing main does) sets, in
// its init, RLIMIT_CORE to 0 (inherited across exec: no core file of the app
// either) and makes the process non-dumpable, so that another process of the
// same user without CAP_SYS_PTRACE (in the pod) is refused ptrace and
// /proc/PID/{mem,environ} by the kernel itself from here on (issue 12, points
// 2 and 5).
//
// One P and no garbage collector: the wrapper does one thing at a time and
// lives a fraction of a second before it execs (the refresher execs itself
// after each refresh), so parallel GC workers and idle Ps spinning for work
// would only burn CPU, which hundreds of pods starting at once on a node
// share with OpenBao (benchmarks/wrapper.py: 11.2 -> 9.4 ms of CPU a start).
package harden

import (
	"runtime"
	"runtime/debug"

	"golang.org/x/sys/unix"
)

// Err is what hardening failed with (nil: hardened); main refuses to go on.
var Err error

func init() {
	runtime.GOMAXPROCS(1)
	debug.SetGCPercent(-1)
	if err := unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{Cur: 0, Max: 0}); err != nil {
		Err = err
	}
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		Err = err
	}
}
