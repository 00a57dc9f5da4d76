package agent

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
)

// TestMain lets this test binary play the canary's roles, as the wrapper's
// program does (the canary re-executes /proc/self/exe).
func TestMain(m *testing.M) {
	switch os.Getenv(RoleEnv) {
	case RoleVictim:
		os.Exit(RunVictim())
	case RoleReader:
		os.Exit(RunReader(os.Args))
	}
	os.Exit(m.Run())
}

// Without an agent nothing stops the reader: the canary must say protection
// is not live, for either target.
func TestWithoutProtectionTheCanaryFails(t *testing.T) {
	for _, protections := range [][]string{{"environ", "mem"}, {"mem"}} {
		target := protections[0]
		t.Run(target, func(t *testing.T) {
			err := Canary("/run/x.sock", &Registration{Backend: "tracepoint", Mode: "enforce", Protections: protections})
			var notLive *NotLive
			if !errors.As(err, &notLive) {
				t.Fatalf("Canary = %v, want NotLive", err)
			}
			want := "node agent at /run/x.sock answered, but protection is not live (canary read /proc/"
			if !strings.HasPrefix(err.Error(), want) || !strings.HasSuffix(err.Error(), "/"+target+")") {
				t.Fatalf("Canary = %q", err)
			}
		})
	}
}

// The children are gone afterwards (killed and reaped).
func TestTheCanaryLeavesNoChildren(t *testing.T) {
	_ = Canary("/s", &Registration{Protections: []string{"environ"}})
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		var pid, ppid int
		var comm, state string
		fmt.Sscanf(string(stat), "%d %s %s %d", &pid, &comm, &state, &ppid)
		if ppid == os.Getpid() {
			t.Fatalf("child %d %s (%s) left behind", pid, comm, state)
		}
	}
}
