//go:build tools

// Package tools pins the kube-apiserver and kubectl main packages so that
// `go build` can build them from this module; see regen-go-mod for why the
// staging modules are replaced.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
