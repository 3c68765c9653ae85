// Checks the peer against the kubelet's own test plugin (the upstream Stub), through the
// same Handle function the binary serves, so the peer is known to drive the device manager
// correctly before any Allot plugin talks to it.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/klog/v2"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
	podresourcesapi "k8s.io/kubelet/pkg/apis/podresources/v1"
	"k8s.io/kubernetes/pkg/kubelet/apis/podresources"
	plugin "k8s.io/kubernetes/pkg/kubelet/cm/devicemanager/plugin/v1beta1"
)

const gpu = "allot.io/gpu"

// TestMain re-runs the test binary in a private mount namespace (as root), where each
// test bind-mounts its own directory over /var/lib/kubelet/device-plugins.
func TestMain(m *testing.M) {
	if !inPrivateMountNamespace() {
		code, err := reexecInPrivateMountNamespace()
		if err != nil {
			fmt.Fprintln(os.Stderr, "kubelet-peer tests need root:", err)
		}
		os.Exit(code)
	}
	os.Exit(m.Run())
}

type harness struct {
	t                  *testing.T
	ctx                context.Context
	peer               *Peer
	dir                string
	podResourcesSocket string
}

func startPeer(t *testing.T, policy string) *harness {
	t.Helper()
	logger := klog.Background()
	ctx := klog.NewContext(t.Context(), logger)
	h := &harness{t: t, ctx: ctx, dir: t.TempDir()}
	unmount, err := bindDevicePluginDir(h.dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unmount() })
	h.peer, err = NewPeer(logger, Config{Dir: h.dir, NUMANodes: 2, CPUsPerNUMA: 2, TopologyPolicy: policy})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.peer.Stop() })
	h.podResourcesSocket = filepath.Join(t.TempDir(), "pod-resources.sock")
	stop, err := ServePodResources(ctx, h.peer, h.podResourcesSocket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return h
}

// do sends one request line and returns the response as the Rust test would decode it.
func (h *harness) do(line string) map[string]any {
	h.t.Helper()
	resp, err := Handle(h.ctx, h.peer, []byte(line))
	if err != nil {
		resp = response{"ok": false, "error": err.Error()}
	}
	wire, err := json.Marshal(resp)
	if err != nil {
		h.t.Fatal(err)
	}
	var decoded map[string]any
	if err := json.Unmarshal(wire, &decoded); err != nil {
		h.t.Fatal(err)
	}
	if decoded["ok"] != true {
		h.t.Fatalf("%s -> %s", line, wire)
	}
	return decoded
}

func (h *harness) admit(uid string, gpus int) map[string]any {
	h.t.Helper()
	return h.do(fmt.Sprintf(`{"op":"admit","pod":{"uid":%q,"namespace":"ml","name":"pod-%s","containers":[{"name":"main","limits":{%q:"%d"}}]}}`, uid, uid, gpu, gpus))
}

// waitCapacity polls the capacity op until the resource shows want devices.
func (h *harness) waitCapacity(want float64) {
	h.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		capacity := h.do(`{"op":"capacity"}`)["capacity"].(map[string]any)
		if capacity[gpu] == want {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("capacity of %s is %v, want %v", gpu, capacity[gpu], want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// listPods asks the pod resources server which devices each pod holds: "ns/name" -> ids.
func (h *harness) listPods() map[string][]string {
	h.t.Helper()
	client, conn, err := podresources.GetV1Client(h.ctx, "unix://"+h.podResourcesSocket, 10*time.Second, 1<<20)
	if err != nil {
		h.t.Fatal(err)
	}
	defer conn.Close()
	resp, err := client.List(h.ctx, &podresourcesapi.ListPodResourcesRequest{})
	if err != nil {
		h.t.Fatal(err)
	}
	pods := map[string][]string{}
	for _, pod := range resp.PodResources {
		ids := []string{}
		for _, c := range pod.Containers {
			for _, d := range c.Devices {
				ids = append(ids, d.DeviceIds...)
			}
		}
		slices.Sort(ids)
		pods[pod.Namespace+"/"+pod.Name] = ids
	}
	return pods
}

func device(id string, numa int64) *pluginapi.Device {
	return &pluginapi.Device{ID: id, Health: pluginapi.Healthy, Topology: &pluginapi.TopologyInfo{Nodes: []*pluginapi.NUMANode{{ID: numa}}}}
}

// startStub serves the upstream Stub plugin in the peer's directory and registers it.
func (h *harness) startStub(devices []*pluginapi.Device, configure func(*plugin.Stub)) *plugin.Stub {
	h.t.Helper()
	stub := plugin.NewDevicePluginStub(klog.Background(), devices, filepath.Join(h.dir, "allot-gpu.sock"), gpu, false, true)
	configure(stub)
	if err := stub.Start(h.ctx); err != nil {
		h.t.Fatal(err)
	}
	if err := stub.Register(h.ctx, h.peer.KubeletSocket(), gpu, ""); err != nil {
		h.t.Fatal(err)
	}
	h.waitCapacity(float64(len(devices)))
	return stub
}

func check[T any](t *testing.T, what string, got, want T) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s: got %#v, want %#v", what, got, want)
	}
}

// TestAllocateErrorIsTheAdmissionMessage: a plugin's Allocate error refuses the pod, and
// its text reaches the admission message.
func TestAllocateErrorIsTheAdmissionMessage(t *testing.T) {
	h := startPeer(t, "single-numa-node")
	stub := h.startStub([]*pluginapi.Device{device("gpu-0", 0)}, func(s *plugin.Stub) {
		s.SetAllocFunc(func(*pluginapi.AllocateRequest, map[string]*pluginapi.Device) (*pluginapi.AllocateResponse, error) {
			return nil, fmt.Errorf("E-TEST: gpu-0 is being drained")
		})
	})
	t.Cleanup(func() { _ = stub.Stop(klog.Background()) })

	resp := h.admit("p1", 1)
	check(t, "admitted", resp["admitted"], any(false))
	check(t, "reason", resp["reason"], any("UnexpectedAdmissionError"))
	if message := resp["message"].(string); !strings.Contains(message, "E-TEST: gpu-0 is being drained") {
		t.Errorf("message %q lacks the plugin's error", message)
	}
	check(t, "pods after refusal", h.listPods(), map[string][]string{})

	// The same through Serve, as the binary frames it: one line out per line in, an
	// unknown op is ok:false, and nothing is read after quit.
	var out strings.Builder
	in := strings.NewReader("{\"op\":\"devices\",\"resource\":\"allot.io/gpu\"}\n{\"op\":\"bogus\"}\n{\"op\":\"quit\"}\n{\"op\":\"capacity\"}\n")
	if err := Serve(h.ctx, h.peer, in, &out); err != nil {
		t.Fatal(err)
	}
	check(t, "served lines", strings.Split(strings.TrimSpace(out.String()), "\n"), []string{
		`{"devices":[{"id":"gpu-0","health":"Healthy","numa":[0]}],"ok":true,"unhealthy_count":0}`,
		`{"error":"unknown op \"bogus\" (capacity, devices, admit, remove_pod, restart, quit)","ok":false}`,
		`{"ok":true}`,
	})
}

// TestSingleNumaNodeRefusesASplitRequest: two devices on two NUMA nodes cannot serve one
// container under single-numa-node, and the refusal comes before the plugin is asked.
func TestSingleNumaNodeRefusesASplitRequest(t *testing.T) {
	for _, policy := range []string{"single-numa-node", "none"} {
		t.Run(policy, func(t *testing.T) {
			h := startPeer(t, policy)
			var allocateCalls int
			stub := h.startStub([]*pluginapi.Device{device("gpu-0", 0), device("gpu-1", 1)}, func(s *plugin.Stub) {
				s.SetAllocFunc(func(r *pluginapi.AllocateRequest, _ map[string]*pluginapi.Device) (*pluginapi.AllocateResponse, error) {
					allocateCalls++
					return &pluginapi.AllocateResponse{ContainerResponses: []*pluginapi.ContainerAllocateResponse{{}}}, nil
				})
			})
			t.Cleanup(func() { _ = stub.Stop(klog.Background()) })

			resp := h.admit("p1", 2)
			if policy == "none" {
				check(t, "admitted", resp["admitted"], any(true))
				check(t, "allocate calls", allocateCalls, 1)
				return
			}
			check(t, "admitted", resp["admitted"], any(false))
			check(t, "reason", resp["reason"], any("TopologyAffinityError"))
			check(t, "allocate calls", allocateCalls, 0)
		})
	}
}

// TestAdmitRemoveRestart: the whole life of a plugin: register, admit, release, kubelet
// restart, re-register (by the Stub's own inotify watch on kubelet.sock), admit again.
func TestAdmitRemoveRestart(t *testing.T) {
	h := startPeer(t, "single-numa-node")
	var mu sync.Mutex
	var preferredCalls []*pluginapi.ContainerPreferredAllocationRequest
	stub := h.startStub([]*pluginapi.Device{device("gpu-0", 1), device("gpu-1", 1)}, func(s *plugin.Stub) {
		s.SetGetPreferredAllocFunc(func(r *pluginapi.PreferredAllocationRequest, _ map[string]*pluginapi.Device) (*pluginapi.PreferredAllocationResponse, error) {
			mu.Lock()
			defer mu.Unlock()
			preferredCalls = append(preferredCalls, r.ContainerRequests...)
			return &pluginapi.PreferredAllocationResponse{ContainerResponses: []*pluginapi.ContainerPreferredAllocationResponse{{DeviceIDs: []string{"gpu-1"}}}}, nil
		})
		s.SetAllocFunc(func(r *pluginapi.AllocateRequest, _ map[string]*pluginapi.Device) (*pluginapi.AllocateResponse, error) {
			ids := slices.Sorted(slices.Values(r.ContainerRequests[0].DevicesIds))
			response := &pluginapi.ContainerAllocateResponse{
				Envs:        map[string]string{"ALLOT_GPUS": strings.Join(ids, ",")},
				Annotations: map[string]string{"allot.io/allocation": "a-1"},
				Mounts:      []*pluginapi.Mount{{ContainerPath: "/usr/lib/allot", HostPath: "/opt/allot/lib", ReadOnly: true}},
			}
			for _, id := range ids {
				response.Devices = append(response.Devices, &pluginapi.DeviceSpec{ContainerPath: "/dev/" + id, HostPath: "/dev/null", Permissions: "rw"})
				response.CdiDevices = append(response.CdiDevices, &pluginapi.CDIDevice{Name: "allot.io/gpu=" + id})
			}
			return &pluginapi.AllocateResponse{ContainerResponses: []*pluginapi.ContainerAllocateResponse{response}}, nil
		})
	})
	go stub.Watch(h.ctx, h.peer.KubeletSocket(), gpu, "")

	devices := h.do(`{"op":"devices","resource":"allot.io/gpu"}`)
	check(t, "devices", devices["devices"], any([]any{
		map[string]any{"id": "gpu-0", "health": "Healthy", "numa": []any{1.0}},
		map[string]any{"id": "gpu-1", "health": "Healthy", "numa": []any{1.0}},
	}))

	// Both devices for one pod: no choice left, so no GetPreferredAllocation.
	resp := h.admit("p1", 2)
	check(t, "admitted", resp["admitted"], any(true))
	check(t, "container", resp["containers"].(map[string]any)["main"], any(map[string]any{
		"envs":        map[string]any{"ALLOT_GPUS": "gpu-0,gpu-1"},
		"devices":     []any{map[string]any{"container_path": "/dev/gpu-0", "host_path": "/dev/null", "permissions": "rw"}, map[string]any{"container_path": "/dev/gpu-1", "host_path": "/dev/null", "permissions": "rw"}},
		"mounts":      []any{map[string]any{"container_path": "/usr/lib/allot", "host_path": "/opt/allot/lib", "read_only": true}},
		"annotations": map[string]any{"allot.io/allocation": "a-1"},
		"cdi_devices": []any{"allot.io/gpu=gpu-0", "allot.io/gpu=gpu-1"},
		"device_ids":  map[string]any{gpu: []any{"gpu-0", "gpu-1"}},
	}))
	check(t, "preferred calls with no choice", len(preferredCalls), 0)
	check(t, "pods", h.listPods(), map[string][]string{"ml/pod-p1": {"gpu-0", "gpu-1"}})

	// Nothing left: under single-numa-node that is a topology refusal, not an Allocate error.
	resp = h.admit("p2", 1)
	check(t, "p2 reason", resp["reason"], any("TopologyAffinityError"))

	h.do(`{"op":"remove_pod","uid":"p1"}`)
	check(t, "pods after remove", h.listPods(), map[string][]string{})

	// One of two free devices: the plugin is asked, and its preference is taken.
	resp = h.admit("p3", 1)
	check(t, "p3 devices", resp["containers"].(map[string]any)["main"].(map[string]any)["device_ids"], any(map[string]any{gpu: []any{"gpu-1"}}))
	mu.Lock()
	check(t, "preferred calls", len(preferredCalls), 1)
	check(t, "preferred request", fmt.Sprint(slices.Sorted(slices.Values(preferredCalls[0].AvailableDeviceIDs)), preferredCalls[0].AllocationSize), "[gpu-0 gpu-1] 1")
	mu.Unlock()

	restart := h.do(`{"op":"restart"}`)
	check(t, "kubelet socket", restart["kubelet_socket"], any(filepath.Join(h.dir, "kubelet.sock")))
	// Until the plugin registers again the resource is there with no devices.
	check(t, "capacity right after restart", h.do(`{"op":"capacity"}`)["capacity"], any(map[string]any{gpu: 0.0}))
	check(t, "pods survive restart", h.listPods(), map[string][]string{"ml/pod-p3": {"gpu-1"}})
	h.waitCapacity(2)

	// The checkpoint kept p3's device: a new pod gets the other one.
	resp = h.admit("p4", 1)
	check(t, "p4 devices", resp["containers"].(map[string]any)["main"].(map[string]any)["device_ids"], any(map[string]any{gpu: []any{"gpu-0"}}))
	check(t, "pods", h.listPods(), map[string][]string{"ml/pod-p3": {"gpu-1"}, "ml/pod-p4": {"gpu-0"}})
}
