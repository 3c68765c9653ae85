package main

import (
	_ "k8s.io/kubernetes/pkg/kubelet/apis/podresources"
	_ "k8s.io/kubernetes/pkg/kubelet/cm/devicemanager"
	_ "k8s.io/kubernetes/pkg/kubelet/cm/devicemanager/plugin/v1beta1"
	_ "k8s.io/kubernetes/pkg/kubelet/cm/topologymanager"
	_ "golang.org/x/sys/unix"
)

func main() {}
