#!/usr/bin/env bash
# Builds the kubelet test peer to target/go/kubelet-peer (repository root), and with
# --test then runs its Go tests (they need root: they bind-mount in a private mount
# namespace). Go's build cache (GOCACHE, GOMODCACHE at their defaults under $HOME) makes
# a rebuild with nothing changed take seconds; a cold build compiles the kubelet's
# packages and takes minutes.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../.." && pwd)"

run_tests=false
case "${1:-}" in
  "") ;;
  --test) run_tests=true ;;
  *) echo "usage: $0 [--test]" >&2; exit 2 ;;
esac

if ! command -v go >/dev/null 2>&1; then
  if [ -x /usr/local/go/bin/go ]; then
    PATH="/usr/local/go/bin:$PATH"
  else
    echo "kubelet-peer: 'go' not found; install Go 1.26 (https://go.dev/dl/, into /usr/local/go) to build the kubelet test peer" >&2
    exit 1
  fi
fi

# go.sum is authoritative: fail instead of silently editing go.mod or go.sum.
export GOFLAGS=-mod=readonly

cd "$here"
mkdir -p "$root/target/go"
go build -o "$root/target/go/kubelet-peer" .
if $run_tests; then
  go test -count=1 ./...
fi
