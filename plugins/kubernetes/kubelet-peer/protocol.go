// The JSON-lines protocol the Rust tests speak: one request object per stdin line, one
// response object per stdout line. Every response has "ok", and "error" when not ok.
package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"sort"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/kubernetes/pkg/kubelet/cm/devicemanager"
)

type request struct {
	Op       string   `json:"op"`
	Resource string   `json:"resource"` // devices
	UID      string   `json:"uid"`      // remove_pod
	Pod      *podSpec `json:"pod"`      // admit
}

type podSpec struct {
	UID        string          `json:"uid"`
	Namespace  string          `json:"namespace"`
	Name       string          `json:"name"`
	Containers []containerSpec `json:"containers"`
}

type containerSpec struct {
	Name   string            `json:"name"`
	Limits map[string]string `json:"limits"`
}

type response map[string]any

type deviceJSON struct {
	ID     string  `json:"id"`
	Health string  `json:"health"`
	NUMA   []int64 `json:"numa"`
}

type containerJSON struct {
	Envs        map[string]string   `json:"envs"`
	Devices     []deviceSpecJSON    `json:"devices"`
	Mounts      []mountJSON         `json:"mounts"`
	Annotations map[string]string   `json:"annotations"`
	CDIDevices  []string            `json:"cdi_devices"`
	DeviceIDs   map[string][]string `json:"device_ids"`
	Error       string              `json:"error,omitempty"`
}

type deviceSpecJSON struct {
	ContainerPath string `json:"container_path"`
	HostPath      string `json:"host_path"`
	Permissions   string `json:"permissions"`
}

type mountJSON struct {
	ContainerPath string `json:"container_path"`
	HostPath      string `json:"host_path"`
	ReadOnly      bool   `json:"read_only"`
}

// errQuit ends Serve after the quit response is written.
var errQuit = fmt.Errorf("quit")

// Serve answers requests from in until EOF or quit.
func Serve(ctx context.Context, p *Peer, in io.Reader, out io.Writer) error {
	scanner := bufio.NewScanner(in)
	scanner.Buffer(make([]byte, 1<<20), 1<<20)
	encoder := json.NewEncoder(out) // writes one line per value
	for scanner.Scan() {
		line := bytes.TrimSpace(scanner.Bytes())
		if len(line) == 0 {
			continue
		}
		resp, err := Handle(ctx, p, line)
		if err != nil && err != errQuit {
			resp = response{"ok": false, "error": err.Error()}
		}
		if encodeErr := encoder.Encode(resp); encodeErr != nil {
			return encodeErr
		}
		if err == errQuit {
			return nil
		}
	}
	return scanner.Err()
}

// Handle answers one request line.
func Handle(ctx context.Context, p *Peer, line []byte) (response, error) {
	var req request
	decoder := json.NewDecoder(bytes.NewReader(line))
	decoder.DisallowUnknownFields()
	if err := decoder.Decode(&req); err != nil {
		return nil, fmt.Errorf("bad request: %w", err)
	}
	switch req.Op {
	case "capacity":
		devices, _ := p.current()
		capacity, allocatable, removed := devices.GetCapacity(p.logger)
		return response{"ok": true, "capacity": counts(capacity), "allocatable": counts(allocatable), "removed": sorted(removed)}, nil
	case "devices":
		return handleDevices(p, req.Resource)
	case "admit":
		return handleAdmit(ctx, p, req.Pod)
	case "remove_pod":
		if err := p.RemovePod(req.UID); err != nil {
			return nil, err
		}
		return response{"ok": true}, nil
	case "restart":
		if err := p.Restart(); err != nil {
			return nil, err
		}
		return response{"ok": true, "kubelet_socket": p.KubeletSocket()}, nil
	case "quit":
		return response{"ok": true}, errQuit
	default:
		return nil, fmt.Errorf("unknown op %q (capacity, devices, admit, remove_pod, restart, quit)", req.Op)
	}
}

func counts(list v1.ResourceList) map[string]int64 {
	out := map[string]int64{}
	for name, quantity := range list {
		out[string(name)] = quantity.Value()
	}
	return out
}

func sorted(items []string) []string {
	items = append([]string{}, items...)
	sort.Strings(items)
	return items
}

// handleDevices lists the healthy devices of a resource with their NUMA nodes. The device
// manager exports health only through GetAllocatableDevices, which holds healthy devices
// alone, so unhealthy devices are only counted: capacity minus allocatable.
func handleDevices(p *Peer, resourceName string) (response, error) {
	if resourceName == "" {
		return nil, fmt.Errorf("devices needs \"resource\"")
	}
	devices, _ := p.current()
	listed := []deviceJSON{}
	for id, device := range devices.GetAllocatableDevices(p.logger)[resourceName] {
		entry := deviceJSON{ID: id, Health: device.Health, NUMA: []int64{}}
		for _, node := range device.GetTopology().GetNodes() {
			entry.NUMA = append(entry.NUMA, node.GetID())
		}
		listed = append(listed, entry)
	}
	slices.SortFunc(listed, func(a, b deviceJSON) int { return cmp.Compare(a.ID, b.ID) })
	// GetCapacity also drops resources whose plugin left more than 5 minutes ago, as the
	// kubelet's periodic node status update does.
	capacity, allocatable, _ := devices.GetCapacity(p.logger)
	name := v1.ResourceName(resourceName)
	unhealthy := capacity.Name(name, resource.DecimalSI).Value() - allocatable.Name(name, resource.DecimalSI).Value()
	return response{"ok": true, "devices": listed, "unhealthy_count": unhealthy}, nil
}

func handleAdmit(ctx context.Context, p *Peer, spec *podSpec) (response, error) {
	pod, err := buildPod(spec)
	if err != nil {
		return nil, err
	}
	result, err := p.Admit(ctx, pod)
	if err != nil {
		return nil, err
	}
	resp := response{"ok": true, "admitted": result.Admit, "reason": result.Reason, "message": result.Message}
	if !result.Admit {
		return resp, nil
	}
	containers := map[string]containerJSON{}
	for _, c := range pod.Spec.Containers {
		if msg, failed := result.StartError[c.Name]; failed {
			containers[c.Name] = containerJSON{Error: msg}
			continue
		}
		containers[c.Name] = runOptionsJSON(result.Containers[c.Name], result.Devices[c.Name])
	}
	resp["containers"] = containers
	return resp, nil
}

func buildPod(spec *podSpec) (*v1.Pod, error) {
	if spec == nil || spec.UID == "" || spec.Name == "" || len(spec.Containers) == 0 {
		return nil, fmt.Errorf("admit needs \"pod\" with \"uid\", \"name\" and \"containers\"")
	}
	namespace := spec.Namespace
	if namespace == "" {
		namespace = "default"
	}
	pod := &v1.Pod{}
	pod.UID, pod.Namespace, pod.Name = types.UID(spec.UID), namespace, spec.Name
	pod.Status.Phase = v1.PodPending
	for _, c := range spec.Containers {
		limits := v1.ResourceList{}
		for name, value := range c.Limits {
			quantity, err := resource.ParseQuantity(value)
			if err != nil {
				return nil, fmt.Errorf("container %q limit %s: %w", c.Name, name, err)
			}
			limits[v1.ResourceName(name)] = quantity
		}
		// The API server defaults requests to limits for extended resources.
		pod.Spec.Containers = append(pod.Spec.Containers, v1.Container{
			Name:      c.Name,
			Resources: v1.ResourceRequirements{Limits: limits, Requests: limits.DeepCopy()},
		})
	}
	return pod, nil
}

func runOptionsJSON(opts *devicemanager.DeviceRunContainerOptions, held devicemanager.ResourceDeviceInstances) containerJSON {
	out := containerJSON{
		Envs: map[string]string{}, Devices: []deviceSpecJSON{}, Mounts: []mountJSON{},
		Annotations: map[string]string{}, CDIDevices: []string{}, DeviceIDs: map[string][]string{},
	}
	if opts != nil {
		for _, env := range opts.Envs {
			out.Envs[env.Name] = env.Value
		}
		for _, device := range opts.Devices {
			out.Devices = append(out.Devices, deviceSpecJSON{ContainerPath: device.PathInContainer, HostPath: device.PathOnHost, Permissions: device.Permissions})
		}
		for _, mount := range opts.Mounts {
			out.Mounts = append(out.Mounts, mountJSON{ContainerPath: mount.ContainerPath, HostPath: mount.HostPath, ReadOnly: mount.ReadOnly})
		}
		for _, annotation := range opts.Annotations {
			out.Annotations[annotation.Name] = annotation.Value
		}
		for _, cdi := range opts.CDIDevices {
			out.CDIDevices = append(out.CDIDevices, cdi.Name)
		}
	}
	for resourceName, devices := range held {
		ids := []string{}
		for id := range devices {
			ids = append(ids, id)
		}
		out.DeviceIDs[resourceName] = sorted(ids)
	}
	return out
}
