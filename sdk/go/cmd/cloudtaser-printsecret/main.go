// Command cloudtaser-printsecret proves that a process started by the
// cloudtaser wrapper receives a secret through the Go SDK, without revealing
// it: it prints the secret's length and SHA-256, never the secret itself.
//
// Usage:
//
//	cloudtaser-printsecret NAME
//
// On success it writes "len=<n> sha256=<hex>" to stdout and exits 0. If the
// secret cannot be read it prints the error to stderr and exits 1; a usage
// error exits 2.
package main

import (
	"crypto/sha256"
	"fmt"
	"os"

	cloudtaser "github.com/cloudtaser/cloudtaser/sdk/go"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: cloudtaser-printsecret NAME")
		os.Exit(2)
	}
	secret, err := cloudtaser.GetSecret(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "cloudtaser-printsecret:", err)
		os.Exit(1)
	}
	sum := sha256.Sum256(secret)
	n := len(secret)
	cloudtaser.Wipe(secret)
	fmt.Printf("len=%d sha256=%x\n", n, sum)
}
