#!/usr/bin/env bash
# Runs Allot on this machine: builds it, then shows what allot-node sees here.
# On a machine without an NVIDIA GPU it also shows the bundled DGX H100 fixture
# through the fake NVML library, so there is something to look at.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

cargo build --workspace --quiet
node=target/debug/allot-node

echo "== allot-node inventory (this machine)"
"$node" inventory

if "$node" inventory --output json | grep -q '"gpus": \[\]'; then
    echo
    echo "== no GPU here: allot-node inventory --fixture dgx-h100 (hwloc XML + fake NVML)"
    "$node" inventory --fixture dgx-h100
fi
