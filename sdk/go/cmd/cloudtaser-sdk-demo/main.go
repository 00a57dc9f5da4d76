// Command cloudtaser-sdk-demo is the local stack's static demo app (the demo-sdk image, FROM
// scratch): it reads one secret through the Go SDK, prints its length and a SHA-256 prefix,
// never the secret, wipes its copy and then stays up until SIGTERM, so that a pod can be
// watched holding a secret (the wrapper's secret memory stays mapped in this process).
//
//	cloudtaser-sdk-demo NAME
//
// Exit 1 with one line when the secret cannot be read (e.g. the pod was not injected), 2 on
// a usage error, 0 on SIGTERM/SIGINT.
package main

import (
	"crypto/sha256"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	cloudtaser "github.com/cloudtaser/cloudtaser/sdk/go"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: cloudtaser-sdk-demo NAME")
		os.Exit(2)
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	secret, err := cloudtaser.GetSecret(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "cloudtaser-sdk-demo:", err)
		os.Exit(1)
	}
	sum := sha256.Sum256(secret)
	n := len(secret)
	cloudtaser.Wipe(secret)
	fmt.Printf("cloudtaser-sdk-demo: secret %s received: len=%d sha256=%x\n", os.Args[1], n, sum[:8])
	<-stop
}
