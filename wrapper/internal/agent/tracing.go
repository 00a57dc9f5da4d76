package agent

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
)

// Traced returns the PID tracing this process (0: none). Read after
// registration: a tracer that attached before it is kept, and once registered
// no new tracer can attach (the agent stops ptrace on a protected process).
func Traced() (int, error) {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for _, line := range bytes.Split(status, []byte("\n")) {
		if value, ok := bytes.CutPrefix(line, []byte("TracerPid:")); ok {
			return strconv.Atoi(string(bytes.TrimSpace(value)))
		}
	}
	return 0, fmt.Errorf("no TracerPid in /proc/self/status")
}
