// Mount namespace handling: the device manager's exported constructor hard-codes
// /var/lib/kubelet/device-plugins/ (v1.37.2 has no exported way to pass a path), so the
// peer bind-mounts the test's directory over that path inside a private mount namespace.
package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// devicePluginDir is where the kubelet's device manager puts kubelet.sock and its checkpoint.
var devicePluginDir = filepath.Clean(pluginapi.DevicePluginPath)

// privateNamespaceMarker is set in the environment of the copy of this program that
// reexecInPrivateMountNamespace starts. Comparing namespaces with pid 1 would be the other
// way to know, but /proc/1/ns is not readable in every sandbox, even by root.
const privateNamespaceMarker = "KUBELET_PEER_PRIVATE_MOUNT_NAMESPACE"

// inPrivateMountNamespace reports whether this process runs in the mount namespace that
// reexecInPrivateMountNamespace made for it. Only there does the peer mount anything, so it
// never covers the host's real device plugin directory.
func inPrivateMountNamespace() bool { return os.Getenv(privateNamespaceMarker) == "1" }

// reexecInPrivateMountNamespace runs this same program again, with the same arguments and
// standard streams, in a new mount namespace, and returns its exit code. Go's os/exec marks
// / as recursively private in the child when it unshares CLONE_NEWNS, which is what
// `unshare -m --propagation private` does. The child is killed when this process dies.
func reexecInPrivateMountNamespace() (int, error) {
	self, err := os.Executable()
	if err != nil {
		return 1, err
	}
	cmd := exec.Command(self, os.Args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), privateNamespaceMarker+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Unshareflags: syscall.CLONE_NEWNS,
		Pdeathsig:    syscall.SIGKILL,
	}
	// Pdeathsig fires when the forking thread exits, so keep this goroutine on its thread.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	err = cmd.Run()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return exit.ExitCode(), nil
	}
	if err != nil {
		return 1, fmt.Errorf("cannot re-run in a private mount namespace (needs root): %w", err)
	}
	return 0, nil
}

// bindDevicePluginDir bind-mounts dir over /var/lib/kubelet/device-plugins in this
// process's mount namespace, which must be private, and returns a function that undoes it.
func bindDevicePluginDir(dir string) (func() error, error) {
	if !inPrivateMountNamespace() {
		return nil, fmt.Errorf("refusing to mount over %s outside a mount namespace of the peer's own", devicePluginDir)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if info, err := os.Stat(abs); err != nil || !info.IsDir() {
		return nil, fmt.Errorf("--dir %s is not a directory", abs)
	}
	if err := os.MkdirAll(devicePluginDir, 0o750); err != nil {
		return nil, err
	}
	if err := unix.Mount(abs, devicePluginDir, "", unix.MS_BIND, ""); err != nil {
		return nil, fmt.Errorf("bind-mount %s over %s: %w", abs, devicePluginDir, err)
	}
	return func() error { return unix.Unmount(devicePluginDir, unix.MNT_DETACH) }, nil
}
