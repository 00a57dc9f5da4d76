// pause: the process of the local node's pod sandboxes (containerd's pinned sandbox image,
// scripts/build-images pause). It holds the pod's namespaces: it sleeps until SIGINT or
// SIGTERM and, as PID 1 of a pod that shares its PID namespace, reaps orphaned children.
// Static, no cgo; the image is this binary alone.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range signals {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var status syscall.WaitStatus
			if pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil); pid <= 0 || err != nil {
				break
			}
		}
	}
}
