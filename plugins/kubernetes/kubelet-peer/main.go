// Command kubelet-peer runs the kubelet's real device manager, topology manager and pod
// resources server (k8s.io/kubernetes v1.37.2) for device plugin tests, driven by JSON
// lines on stdin and stdout (see README.md). Logs go to stderr.
//
// Launch it as root. It re-runs itself in a private mount namespace, where it bind-mounts
// --dir over /var/lib/kubelet/device-plugins (`unshare -m --propagation private` in front is
// harmless but not needed).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"k8s.io/klog/v2"
	"k8s.io/kubernetes/pkg/kubelet/cm/topologymanager"
)

func main() {
	os.Exit(run())
}

func run() int {
	cfg := Config{}
	var podResourcesSocket string
	flag.StringVar(&cfg.Dir, "dir", "", "fresh directory to serve as /var/lib/kubelet/device-plugins (kubelet.sock, checkpoint, plugin sockets)")
	flag.IntVar(&cfg.NUMANodes, "numa-nodes", 1, "NUMA nodes of the pretended machine")
	flag.IntVar(&cfg.CPUsPerNUMA, "cpus-per-numa", 4, "CPUs per NUMA node of the pretended machine")
	flag.StringVar(&cfg.TopologyPolicy, "topology-policy", topologymanager.PolicySingleNumaNode, "topology manager policy: single-numa-node, none, best-effort or restricted")
	flag.StringVar(&podResourcesSocket, "pod-resources-socket", "", "unix socket path for the pod resources v1 API")
	klog.InitFlags(flag.CommandLine) // -v=4 shows the device manager's allocation decisions
	flag.Parse()

	if cfg.Dir == "" || podResourcesSocket == "" {
		return fail(fmt.Errorf("--dir and --pod-resources-socket are required"))
	}
	if !inPrivateMountNamespace() {
		code, err := reexecInPrivateMountNamespace()
		if err != nil {
			return fail(err)
		}
		return code
	}
	var err error
	if cfg.Dir, err = filepath.Abs(cfg.Dir); err != nil {
		return fail(err)
	}
	// Mount before the device manager starts: it creates kubelet.sock under the mount.
	unmount, err := bindDevicePluginDir(cfg.Dir)
	if err != nil {
		return fail(err)
	}
	defer unmount()

	logger := klog.Background()
	ctx, cancel := context.WithCancel(klog.NewContext(context.Background(), logger))
	defer cancel()
	peer, err := NewPeer(logger, cfg)
	if err != nil {
		return fail(err)
	}
	defer peer.Stop()
	stopPodResources, err := ServePodResources(ctx, peer, podResourcesSocket)
	if err != nil {
		return fail(err)
	}
	defer stopPodResources()

	if err := json.NewEncoder(os.Stdout).Encode(response{"ok": true, "ready": true, "kubelet_socket": peer.KubeletSocket()}); err != nil {
		return 1
	}
	if err := Serve(ctx, peer, os.Stdin, os.Stdout); err != nil {
		logger.Error(err, "reading requests")
		return 1
	}
	return 0
}

// fail reports a startup error on stdout, where the test waits for the ready line, and on stderr.
func fail(err error) int {
	klog.Background().Error(err, "kubelet-peer cannot start")
	_ = json.NewEncoder(os.Stdout).Encode(response{"ok": false, "error": err.Error()})
	return 1
}
