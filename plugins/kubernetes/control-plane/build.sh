#!/usr/bin/env bash
# Builds upstream kube-apiserver and kube-scheduler (k8s.io/kubernetes v1.37.2, the
# version of the kubelet test peer) to target/go/ (repository root), for the tests that
# run a real control plane on loopback (tests/src/control_plane.rs). Go's build cache
# (GOCACHE, GOMODCACHE at their defaults under $HOME) makes a rebuild with nothing
# changed a no-op of seconds: go build skips the link when the binary in target/go
# already carries the build id it would produce. A cold build compiles the apiserver's
# packages and takes minutes, with about 3 GB of memory at link; the two commands are
# built one after the other so that only one link runs at a time.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../.." && pwd)"

if [ "$#" -ne 0 ]; then
  echo "usage: $0" >&2
  exit 2
fi

if ! command -v go >/dev/null 2>&1; then
  if [ -x /usr/local/go/bin/go ]; then
    PATH="/usr/local/go/bin:$PATH"
  else
    echo "control-plane: 'go' not found; install Go 1.26 (https://go.dev/dl/, into /usr/local/go) to build kube-apiserver and kube-scheduler" >&2
    exit 1
  fi
fi

# go.sum is authoritative: fail instead of silently editing go.mod or go.sum.
export GOFLAGS=-mod=readonly

# Upstream's release builds stamp the version with -X; without it /version would say
# v0.0.0-master. -s -w leave out the symbol table and DWARF, which the tests never read
# and which make the link slower and hungrier.
version=v1.37.2
ldflags="-s -w"
for variable in gitVersion=$version gitMajor=1 gitMinor=37 gitTreeState=clean; do
  ldflags+=" -X k8s.io/component-base/version.$variable"
done

cd "$here"
mkdir -p "$root/target/go"
for command in kube-apiserver kube-scheduler; do
  go build -ldflags="$ldflags" -o "$root/target/go/$command" "k8s.io/kubernetes/cmd/$command"
done
