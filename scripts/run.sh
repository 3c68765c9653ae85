#!/usr/bin/env bash
# Runs Allot on this machine, all in one: the broker on the embedded store, a
# node daemon on this machine's hardware (or, without a GPU, on the bundled DGX
# H100 fixture through the fake NVML library), then a short tour of allotctl.
# It stays up until Ctrl-C; pass --tour-only to stop after the tour.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

tour_only=false
[ "${1:-}" = "--tour-only" ] && tour_only=true

cargo build --workspace --quiet
bin=$PWD/target/debug
grpc=${ALLOT_GRPC:-127.0.0.1:7443}
http=${ALLOT_HTTP:-127.0.0.1:7080}
state=$(mktemp -d /tmp/allot-run.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    # The node daemon's cgroups for this run (allocations still held at exit).
    find /sys/fs/cgroup -depth -type d -path "*allot-run-$$*" -exec rmdir {} \; 2>/dev/null || true
    rm -rf "$state"
}
trap cleanup EXIT INT TERM

# The broker writes the first admin token to ~/.config/allot/admin.token (only
# its owner can read it), where allotctl finds it. It serves mutual TLS: on its
# first start it makes a CA, its own certificate and the admin's certificate in
# ~/.config/allot/pki, where allotctl finds them too.
echo "== allot-broker serve --store embedded:$state/store --listen $grpc --http $http"
"$bin/allot-broker" serve --store "embedded:$state/store" --listen "$grpc" --http "$http" \
    --node-timeout 15s --heartbeat-interval 2s --ready-file "$state/ready" \
    --reclaim-grace 10s 2> "$state/broker.log" &
pids+=($!)
for _ in $(seq 100); do [ -s "$state/ready" ] && break; sleep 0.1; done
[ -s "$state/ready" ] || { cat "$state/broker.log"; echo "run: the broker did not start" >&2; exit 1; }

if "$bin/allot-node" inventory --output json | grep -q '"gpus": \[\]'; then
    # The fixture's GPUs on this machine's real CPUs, so cpusets really apply.
    node_name="$(hostname)-dgx-h100-fixture"
    node_args=(--fixture dgx-h100 --host-cpus)
    export ALLOT_FAKE_NVML_STATE="$state/fake-nvml-state.json"
    echo "== no GPU here: allot-node run on the dgx-h100 fixture (hwloc XML + fake NVML, this machine's CPUs)"
else
    node_name="$(hostname)"
    node_args=()
    echo "== allot-node run on this machine's hardware"
fi
# The node daemon's certificate names its node: it can register as that node only.
echo "== allot-broker pki issue --node $node_name"
"$bin/allot-broker" pki issue --node "$node_name" --out "$state/node-cert"
"$bin/allot-node" run --broker "$grpc" --heartbeat-interval 2 --name "$node_name" \
    --cert "$state/node-cert.pem" --key "$state/node-cert-key.pem" \
    --state-dir "$state/node" --cgroup-parent "allot-run-$$" "${node_args[@]}" 2> "$state/node.log" &
pids+=($!)

ctl() { echo; echo "\$ allotctl $*"; "$bin/allotctl" --broker "$grpc" "$@"; }
for _ in $(seq 100); do
    "$bin/allotctl" --broker "$grpc" nodes list 2>/dev/null | grep -q ready && break
    sleep 0.1
done
ctl nodes list
ctl apply -f docs/examples/teams.toml --dry-run
ctl apply -f docs/examples/teams.toml
ctl team list
ctl alloc create --team vision --gpus 4 --interconnect nvlink --cpus 1 --memory 1024
ctl alloc create --team nlp --share 250 --gpu-memory 10000 --cpus 1
ctl alloc create --team interns --gpus 2
ctl alloc create --team interns --gpus 1 || true
ctl alloc list
first=$("$bin/allotctl" --broker "$grpc" alloc list -o json | grep -o '"id": "a-[0-9a-f]*"' | head -n 1 | cut -d'"' -f4)
ctl alloc explain "$first"
ctl fairshare
ctl alloc create --team nlp --gpus 4
ctl queue list
ctl alloc release "$first"
ctl alloc list
ctl alloc create --team vision --gpus 9 --interconnect nvlink || true
ctl policy list
ctl audit --limit 8

if $tour_only; then
    exit 0
fi
echo
echo "Allot is running: broker at $grpc (metrics at http://$http/metrics), logs in $state."
echo "The admin token is in ~/.config/allot/admin.token, the CA and the admin's certificate in"
echo "~/.config/allot/pki (allotctl reads them from there)."
echo "Try: target/debug/allotctl --broker $grpc alloc create --team nlp --gpus 2"
echo "Ctrl-C stops everything."
wait
