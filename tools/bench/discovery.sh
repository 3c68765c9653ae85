#!/usr/bin/env bash
# Benchmark: allot-node discovering a fixture against hwloc's own lstopo reading
# the same XML, side by side in one run (ratios, not absolute times: these
# machines are noisy). Also reports allot-node's peak resident memory.
#
#   tools/bench/discovery.sh [FIXTURE] [RUNS]
#
# Results go to stdout as a Markdown table; docs/benchmarks.md keeps a copy.
set -euo pipefail
cd "$(dirname "$0")/../.."
fixture=${1:-dgx-h100}
runs=${2:-30}
xml=tests/data/$fixture/topology.xml

for tool in hyperfine lstopo-no-graphics /usr/bin/time; do
    command -v "$tool" >/dev/null || { echo "bench: $tool missing: apt-get install hyperfine hwloc time" >&2; exit 1; }
done
cargo build --release --quiet -p allot-node -p allot-fake-nvml
node=target/release/allot-node
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

hyperfine --style none --warmup 3 --runs "$runs" --export-json "$out/times.json" \
    -n lstopo "lstopo-no-graphics -i $xml --whole-io --of xml" \
    -n "allot-node (hwloc XML only)" "$node inventory --hwloc-xml $xml --output json" \
    -n "allot-node (XML + fake NVML)" "$node inventory --fixture $fixture --output json" >/dev/null

rss() { /usr/bin/time -f '%M' "$@" 2>&1 >/dev/null | tail -n 1; }
lstopo_rss=$(rss lstopo-no-graphics -i "$xml" --whole-io --of xml)
node_xml_rss=$(rss "$node" inventory --hwloc-xml "$xml" --output json)
node_fixture_rss=$(rss "$node" inventory --fixture "$fixture" --output json)

python3 - "$out/times.json" "$lstopo_rss" "$node_xml_rss" "$node_fixture_rss" "$fixture" "$runs" <<'PY'
import json, sys
times = json.load(open(sys.argv[1]))["results"]
rss = [int(x) for x in sys.argv[2:5]]
fixture, runs = sys.argv[5], sys.argv[6]
base = times[0]["median"]
print(f"Fixture `{fixture}`, {runs} runs each after 3 warm-ups, release build.\n")
print("| command | median ms | mean ± sd ms | ratio to lstopo (median) | peak RSS MiB |")
print("|---|---|---|---|---|")
for result, kib in zip(times, rss):
    print(f"| {result['command']} | {result['median']*1000:.1f} | {result['mean']*1000:.1f} ± {result['stddev']*1000:.1f} "
          f"| {result['median']/base:.2f} | {kib/1024:.1f} |")
PY
