// The peer proper: the kubelet's real device manager and topology manager, wired the way
// pkg/kubelet/cm/container_manager_linux.go wires them, plus the list of active pods that
// the kubelet's pod manager would hold.
package main

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"sync"

	cadvisorapi "github.com/google/cadvisor/lib/model"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/klog/v2"
	"k8s.io/kubernetes/pkg/kubelet/cm/containermap"
	"k8s.io/kubernetes/pkg/kubelet/cm/devicemanager"
	"k8s.io/kubernetes/pkg/kubelet/cm/topologymanager"
	"k8s.io/kubernetes/pkg/kubelet/lifecycle"
)

// Config is what the command line gives the peer.
type Config struct {
	Dir            string // the directory bind-mounted over /var/lib/kubelet/device-plugins
	NUMANodes      int
	CPUsPerNUMA    int
	TopologyPolicy string // any kubelet --topology-manager-policy: none, single-numa-node, ...
}

// Peer owns one device manager at a time (a restart replaces it) and the active pods,
// which outlive restarts as they do in a real kubelet (the checkpoint file stays too).
type Peer struct {
	cfg      Config
	machine  []cadvisorapi.Node
	logger   klog.Logger
	managers sync.RWMutex // guards devices and topology, swapped by Restart
	devices  *devicemanager.ManagerImpl
	topology topologymanager.Manager

	podsMu sync.Mutex
	pods   []*v1.Pod // active pods, in admission order
}

// sourcesReady says every pod source has been seen, as a kubelet in steady state does;
// UpdateAllocatedDevices frees nothing until then.
type sourcesReady struct{}

func (sourcesReady) AddSource(string) {}
func (sourcesReady) AllReady() bool   { return true }

// NewPeer starts the device manager (its registration server creates
// /var/lib/kubelet/device-plugins/kubelet.sock) and the topology manager.
func NewPeer(logger klog.Logger, cfg Config) (*Peer, error) {
	if cfg.NUMANodes < 1 || cfg.CPUsPerNUMA < 1 {
		return nil, fmt.Errorf("--numa-nodes and --cpus-per-numa must be at least 1")
	}
	p := &Peer{cfg: cfg, machine: machineTopology(cfg.NUMANodes, cfg.CPUsPerNUMA), logger: logger}
	if err := p.start(); err != nil {
		return nil, err
	}
	return p, nil
}

// machineTopology is the cadvisor view of a machine with numaNodes nodes of cpusPerNUMA
// single-threaded cores each.
func machineTopology(numaNodes, cpusPerNUMA int) []cadvisorapi.Node {
	var nodes []cadvisorapi.Node
	for n := range numaNodes {
		node := cadvisorapi.Node{Id: n, Memory: 64 << 30}
		for c := range cpusPerNUMA {
			cpu := n*cpusPerNUMA + c
			node.Cores = append(node.Cores, cadvisorapi.Core{Id: cpu, Threads: []int{cpu}, SocketID: n})
		}
		for other := range numaNodes {
			distance := uint64(20)
			if other == n {
				distance = 10
			}
			node.Distances = append(node.Distances, distance)
		}
		nodes = append(nodes, node)
	}
	return nodes
}

// start builds a fresh topology manager and device manager, as the kubelet's container
// manager does at startup, and starts the device manager with the surviving pods.
func (p *Peer) start() error {
	topology, err := topologymanager.NewManager(p.logger, p.machine, p.cfg.TopologyPolicy, topologymanager.ContainerTopologyScope, nil)
	if err != nil {
		return fmt.Errorf("topology manager: %w", err)
	}
	devices, err := devicemanager.NewManagerImpl(p.logger, p.machine, topology)
	if err != nil {
		return fmt.Errorf("device manager: %w", err)
	}
	topology.AddHintProvider(p.logger, devices)

	// The kubelet passes the containers the runtime reports; every container of an active
	// pod counts as running here.
	containers := containermap.NewContainerMap()
	running := sets.New[string]()
	for _, pod := range p.ActivePods() {
		for _, c := range pod.Spec.Containers {
			containers.Add(string(pod.UID), c.Name, containerID(pod, c.Name))
			running.Insert(containerID(pod, c.Name))
		}
	}
	// Start reads the checkpoint, removes every socket in the directory (except the
	// checkpoint file) and listens on kubelet.sock.
	if err := devices.Start(p.logger, p.ActivePods, sourcesReady{}, containers, running); err != nil {
		return fmt.Errorf("device manager start: %w", err)
	}
	p.managers.Lock()
	p.devices, p.topology = devices, topology
	p.managers.Unlock()
	return nil
}

// KubeletSocket is where plugins register, as seen outside the peer's mount namespace
// (inside it, the same socket is /var/lib/kubelet/device-plugins/kubelet.sock).
func (p *Peer) KubeletSocket() string { return filepath.Join(p.cfg.Dir, "kubelet.sock") }

func containerID(pod *v1.Pod, container string) string {
	return fmt.Sprintf("peer-%s-%s", pod.UID, container)
}

// current returns the managers of the running kubelet incarnation.
func (p *Peer) current() (*devicemanager.ManagerImpl, topologymanager.Manager) {
	p.managers.RLock()
	defer p.managers.RUnlock()
	return p.devices, p.topology
}

// ActivePods is the kubelet's GetActivePods: admitted pods that have not been removed.
func (p *Peer) ActivePods() []*v1.Pod {
	p.podsMu.Lock()
	defer p.podsMu.Unlock()
	return slices.Clone(p.pods)
}

func (p *Peer) findPod(uid string) *v1.Pod {
	for _, pod := range p.ActivePods() {
		if string(pod.UID) == uid {
			return pod
		}
	}
	return nil
}

func (p *Peer) setPods(keep func(*v1.Pod) bool, add *v1.Pod) {
	p.podsMu.Lock()
	defer p.podsMu.Unlock()
	p.pods = slices.DeleteFunc(p.pods, func(pod *v1.Pod) bool { return !keep(pod) })
	if add != nil {
		p.pods = append(p.pods, add)
	}
}

// AdmitResult is the kubelet's admission verdict plus, when admitted, what the container
// runtime would be told for each container.
type AdmitResult struct {
	Admit      bool
	Reason     string
	Message    string
	Containers map[string]*devicemanager.DeviceRunContainerOptions
	Devices    map[string]devicemanager.ResourceDeviceInstances // by container
	StartError map[string]string                                // by container
}

// Admit follows the kubelet's HandlePodAdditions: the pod joins the pod manager (so it is
// active during admission), the topology manager's admit handler runs (it gathers hints
// and calls the device manager's Allocate, which calls the plugin's
// GetPreferredAllocation and Allocate), and a refused pod is no longer active (the kubelet
// marks it Failed). For an admitted pod, each container is then prepared as the kubelet
// does before creating it: topology AddContainer and GetDeviceRunContainerOptions (which
// calls PreStartContainer when the plugin asked for it).
//
// The kubelet's other admit handlers are not run. They come after the topology manager
// and never call the plugin, and the predicate handler's resource check drops extended
// resources the node does not list, so a pod asking for a resource no plugin registered is
// admitted there too (with no devices); one asking for more than a registered plugin has
// is refused by the device manager already.
func (p *Peer) Admit(ctx context.Context, pod *v1.Pod) (*AdmitResult, error) {
	if p.findPod(string(pod.UID)) != nil {
		return nil, fmt.Errorf("pod %s is already active", pod.UID)
	}
	devices, topology := p.current()
	others := p.ActivePods()
	p.setPods(func(*v1.Pod) bool { return true }, pod)

	verdict := topology.Admit(ctx, &lifecycle.PodAdmitAttributes{Pod: pod, OtherPods: others, Operation: lifecycle.AddOperation})
	result := &AdmitResult{Admit: verdict.Admit, Reason: verdict.Reason, Message: verdict.Message}
	if !verdict.Admit {
		p.setPods(func(other *v1.Pod) bool { return other.UID != pod.UID }, nil)
		return result, nil
	}
	result.Containers = map[string]*devicemanager.DeviceRunContainerOptions{}
	result.Devices = map[string]devicemanager.ResourceDeviceInstances{}
	result.StartError = map[string]string{}
	for i := range pod.Spec.Containers {
		container := &pod.Spec.Containers[i]
		topology.AddContainer(p.logger, pod, container, containerID(pod, container.Name))
		opts, err := devices.GetDeviceRunContainerOptions(ctx, pod, container)
		if err != nil {
			// The kubelet would fail this container's start (CreateContainerConfigError).
			result.StartError[container.Name] = err.Error()
			continue
		}
		result.Containers[container.Name] = opts
		result.Devices[container.Name] = devices.GetDevices(string(pod.UID), container.Name)
	}
	return result, nil
}

// RemovePod ends a pod: it leaves the active pods, the topology manager forgets its
// containers, and the device manager frees its devices (the kubelet does the latter
// lazily, at the next allocation or pod resources List; the outcome is the same).
func (p *Peer) RemovePod(uid string) error {
	pod := p.findPod(uid)
	if pod == nil {
		return fmt.Errorf("no active pod with uid %q", uid)
	}
	p.setPods(func(other *v1.Pod) bool { return other.UID != pod.UID }, nil)
	devices, topology := p.current()
	for _, c := range pod.Spec.Containers {
		if err := topology.RemoveContainer(p.logger, containerID(pod, c.Name)); err != nil {
			return err
		}
	}
	devices.UpdateAllocatedDevices(p.logger)
	return nil
}

// Restart is a kubelet restart: the old device manager stops (its registration server
// closes and every plugin connection drops), then a fresh device manager and topology
// manager start on the same directory. Active pods and the checkpoint survive.
func (p *Peer) Restart() error {
	devices, _ := p.current()
	if err := devices.Stop(p.logger); err != nil {
		return fmt.Errorf("stop device manager: %w", err)
	}
	return p.start()
}

// Stop stops the device manager's registration server and plugin connections.
func (p *Peer) Stop() error {
	devices, _ := p.current()
	return devices.Stop(p.logger)
}
