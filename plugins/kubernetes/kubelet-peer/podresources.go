// The kubelet's pod resources v1 gRPC server (the real one from pkg/kubelet/apis/podresources),
// backed by the peer's active pods and its current device manager.
package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"google.golang.org/grpc"
	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	podresourcesapi "k8s.io/kubelet/pkg/apis/podresources/v1"
	"k8s.io/kubernetes/pkg/kubelet/apis/podresources"
	"k8s.io/kubernetes/pkg/kubelet/cm/devicemanager"
)

// ServePodResources serves the v1 PodResourcesLister on socketPath until ctx ends.
// Devices come from the device manager, as in the kubelet. CPUs, memory and dynamic
// resources are always empty: the peer runs no CPU, memory or DRA manager, and a device
// plugin only needs to learn which devices live pods still hold.
func ServePodResources(ctx context.Context, p *Peer, socketPath string) (func(), error) {
	if err := os.MkdirAll(filepath.Dir(socketPath), 0o750); err != nil {
		return nil, err
	}
	if err := os.Remove(socketPath); err != nil && !os.IsNotExist(err) {
		return nil, err
	}
	listener, err := net.Listen("unix", socketPath)
	if err != nil {
		return nil, fmt.Errorf("pod resources socket: %w", err)
	}
	server := grpc.NewServer()
	podresourcesapi.RegisterPodResourcesListerServer(server, podresources.NewV1PodResourcesServer(ctx, podresources.PodResourcesProviders{
		Pods:             podsProvider{p},
		Devices:          devicesProvider{p},
		Cpus:             noCPUs{},
		Memory:           noMemory{},
		DynamicResources: noDynamicResources{},
	}))
	go func() {
		if err := server.Serve(listener); err != nil {
			klog.FromContext(ctx).Error(err, "pod resources server stopped")
		}
	}()
	return server.Stop, nil
}

type podsProvider struct{ p *Peer }

func (s podsProvider) GetActivePods() []*v1.Pod { return s.p.ActivePods() }
func (s podsProvider) GetPods() []*v1.Pod       { return s.p.ActivePods() }
func (s podsProvider) GetPodByName(namespace, name string) (*v1.Pod, bool) {
	for _, pod := range s.p.ActivePods() {
		if pod.Namespace == namespace && pod.Name == name {
			return pod, true
		}
	}
	return nil, false
}

// devicesProvider is what the kubelet's container manager does with the device manager
// (cm.containerDevicesFromResourceDeviceInstances is unexported, so it is repeated here).
type devicesProvider struct{ p *Peer }

func (s devicesProvider) UpdateAllocatedDevices(logger klog.Logger) {
	devices, _ := s.p.current()
	devices.UpdateAllocatedDevices(logger)
}

func (s devicesProvider) GetDevices(podUID, containerName string) []*podresourcesapi.ContainerDevices {
	devices, _ := s.p.current()
	return containerDevices(devices.GetDevices(podUID, containerName))
}

func (s devicesProvider) GetAllocatableDevices(logger klog.Logger) []*podresourcesapi.ContainerDevices {
	devices, _ := s.p.current()
	return containerDevices(devices.GetAllocatableDevices(logger))
}

// containerDevices lists one entry per device and NUMA node, like the kubelet.
func containerDevices(instances devicemanager.ResourceDeviceInstances) []*podresourcesapi.ContainerDevices {
	var out []*podresourcesapi.ContainerDevices
	for resource, devices := range instances {
		for id, device := range devices {
			nodes := device.GetTopology().GetNodes()
			if len(nodes) == 0 {
				out = append(out, &podresourcesapi.ContainerDevices{ResourceName: resource, DeviceIds: []string{id}})
				continue
			}
			for _, node := range nodes {
				out = append(out, &podresourcesapi.ContainerDevices{
					ResourceName: resource,
					DeviceIds:    []string{id},
					Topology:     &podresourcesapi.TopologyInfo{Nodes: []*podresourcesapi.NUMANode{{ID: node.GetID()}}},
				})
			}
		}
	}
	return out
}

type noCPUs struct{}

func (noCPUs) GetCPUs(*v1.Pod, *v1.Container) []int64 { return nil }
func (noCPUs) GetPodCPUs(string) []int64              { return nil }
func (noCPUs) GetAllocatableCPUs() []int64            { return nil }

type noMemory struct{}

func (noMemory) GetMemory(klog.Logger, *v1.Pod, *v1.Container) []*podresourcesapi.ContainerMemory {
	return nil
}
func (noMemory) GetPodMemory(klog.Logger, string) []*podresourcesapi.ContainerMemory { return nil }
func (noMemory) GetAllocatableMemory(klog.Logger) []*podresourcesapi.ContainerMemory {
	return nil
}

type noDynamicResources struct{}

func (noDynamicResources) GetDynamicResources(klog.Logger, *v1.Pod, *v1.Container) []*podresourcesapi.DynamicResource {
	return nil
}
