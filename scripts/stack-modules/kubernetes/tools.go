//go:build tools

// Package tools pins the Kubernetes main packages the local stack runs so that `go build`
// can build them from this module: the control plane (kube-apiserver, kube-scheduler,
// kube-controller-manager), kubectl and the node's kubelet; see regen-go-mod for why the
// staging modules are replaced.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
