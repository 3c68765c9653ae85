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
    rm -rf "$state"
}
trap cleanup EXIT INT TERM

echo "== allot-broker serve --store embedded:$state/store --listen $grpc --http $http"
"$bin/allot-broker" serve --store "embedded:$state/store" --listen "$grpc" --http "$http" \
    --node-timeout 15s --heartbeat-interval 2s --ready-file "$state/ready" 2> "$state/broker.log" &
pids+=($!)
for _ in $(seq 100); do [ -s "$state/ready" ] && break; sleep 0.1; done
[ -s "$state/ready" ] || { cat "$state/broker.log"; echo "run: the broker did not start" >&2; exit 1; }

if "$bin/allot-node" inventory --output json | grep -q '"gpus": \[\]'; then
    node_args=(--fixture dgx-h100 --name "$(hostname)-dgx-h100-fixture")
    echo "== no GPU here: allot-node run on the dgx-h100 fixture (hwloc XML + fake NVML)"
else
    node_args=()
    echo "== allot-node run on this machine's hardware"
fi
"$bin/allot-node" run --broker "$grpc" --heartbeat-interval 2 "${node_args[@]}" 2> "$state/node.log" &
pids+=($!)

ctl() { echo; echo "\$ allotctl $*"; "$bin/allotctl" --broker "$grpc" "$@"; }
for _ in $(seq 100); do
    "$bin/allotctl" --broker "$grpc" nodes list 2>/dev/null | grep -q ready && break
    sleep 0.1
done
ctl nodes list
ctl team create demo
ctl alloc create --team demo --gpus 4 --interconnect nvlink --cpus 8 --memory 65536
ctl alloc create --team demo --share 250 --gpu-memory 10000 --cpus 2
ctl alloc list
first=$("$bin/allotctl" --broker "$grpc" alloc list -o json | grep -o '"id": "a-[0-9a-f]*"' | head -n 1 | cut -d'"' -f4)
ctl alloc explain "$first"
ctl alloc release "$first"
ctl alloc create --team demo --gpus 9 --interconnect nvlink || true

if $tour_only; then
    exit 0
fi
echo
echo "Allot is running: broker at $grpc (metrics at http://$http/metrics), logs in $state."
echo "Try: target/debug/allotctl --broker $grpc alloc create --team demo --gpus 2"
echo "Ctrl-C stops everything."
wait
