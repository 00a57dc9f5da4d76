//go:build tools

// Package tools pins OpenBao's main package (the root of github.com/openbao/openbao,
// main.go) so that `go build` can build the `bao` binary from this module.
package tools

import _ "github.com/openbao/openbao"
