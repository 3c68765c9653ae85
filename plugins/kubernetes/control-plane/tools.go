//go:build tools

// Package tools pins the upstream Kubernetes commands that build.sh builds, so that
// `go mod tidy` keeps their dependencies in go.mod and go.sum. The module has no code
// of its own: the tests run kube-apiserver and kube-scheduler exactly as upstream ships
// them, built from k8s.io/kubernetes v1.37.2 (the version of the kubelet test peer).
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver/app"
	_ "k8s.io/kubernetes/cmd/kube-scheduler/app"
)
