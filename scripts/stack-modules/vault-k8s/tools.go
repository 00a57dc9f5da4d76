//go:build tools

// Package tools pins HashiCorp's vault-k8s main package so that `go build` can build it
// from this module: `go install pkg@version` asks the proxy for the module's version list
// (to check deprecation), which the proxy here refuses for vault-k8s.
package tools

import (
	_ "github.com/hashicorp/vault-k8s"
)
