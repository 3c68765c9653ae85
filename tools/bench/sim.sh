#!/usr/bin/env bash
# The simulator benchmark of docs/benchmarks.md: every policy, seeds 42..51, on
# the five published Alibaba task lists and on four lists resampled to other
# mixes (seeded), with the wall time of each 10-seed run; then FGD and Allot on
# four held-out resampled mixes.
# Usage: tools/bench/sim.sh [OUT_DIR]   (default: target/sim-bench)
set -euo pipefail
cd "$(dirname "$0")/../.."
trace=../shared/traces/alibaba-gpu-v2023
out=${1:-target/sim-bench}
cargo build --release -p allotctl
bin=${CARGO_TARGET_DIR:-target}/release/allotctl
mkdir -p "$out"
for list in default gpushare40 multigpu30 gpuspec20 cpu100; do
  echo "== $list"
  "$bin" sim --nodes "$trace/openb_node_list_gpu_node.csv" --tasks "$trace/openb_pod_list_$list.csv" \
    --policy all --seeds 42..51 --out "$out/$list"
  echo
done
for mix in gpushare=60 multigpu=50 gpuspec=33 cpu=25; do
  echo "== default resampled to $mix"
  "$bin" sim --nodes "$trace/openb_node_list_gpu_node.csv" --tasks "$trace/openb_pod_list_default.csv" \
    --resample "$mix" --resample-seed 7 --policy all --seeds 42..51 --out "$out/resampled-${mix/=/}"
  echo
done
# Held-out mixes (other targets and generator seeds), not used to tune Allot.
for spec in gpushare=80:11 multigpu=40:13 gpuspec=10:17 cpu=50:19; do
  mix=${spec%%:*}; seed=${spec##*:}
  echo "== default resampled to $mix (seed $seed), held out"
  "$bin" sim --nodes "$trace/openb_node_list_gpu_node.csv" --tasks "$trace/openb_pod_list_default.csv" \
    --resample "$mix" --resample-seed "$seed" --policy fgd,allot --seeds 42..51 --out "$out/heldout-${mix/=/}-$seed"
  echo
done
# Allot alone, for the wall time of one policy's 10-seed run.
echo "== allot alone on default"
"$bin" sim --nodes "$trace/openb_node_list_gpu_node.csv" --tasks "$trace/openb_pod_list_default.csv" \
  --policy allot --seeds 42..51
