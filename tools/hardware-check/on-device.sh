#!/usr/bin/env bash
# Runs ON the lent GPU machine. Read-only: it only queries. It never changes MIG
# mode, clocks, power limits or any other GPU setting, and never resets a GPU.
# Prints allot-node's inventory next to nvidia-smi's own view, and leaves all of
# it under $OUT for docs/hardware-checks.md.
set -uo pipefail
out=${OUT:-/tmp/hwcheck}
mkdir -p "$out"
export LD_LIBRARY_PATH="$PWD/.hwcheck/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
node=.hwcheck/allot-node

section() { printf '\n===== %s\n' "$1"; }
section "uname"; uname -a
section "nvidia-smi -L"; nvidia-smi -L
section "nvidia-smi topo -m"; nvidia-smi topo -m | tee "$out/nvidia-smi-topo.txt"
nvidia-smi -q -x > "$out/nvidia-smi-q.xml" 2>&1
section "nvidia-smi -q (selected)"
nvidia-smi --query-gpu=index,uuid,name,pci.bus_id,memory.total,temperature.gpu,power.draw,power.limit,mig.mode.current,clocks_throttle_reasons.active --format=csv
section "allot-node inventory (table)"
"$node" inventory 2>&1 | tee "$out/allot-inventory.txt"
echo "exit status: ${PIPESTATUS[0]}"
section "allot-node inventory (json)"
"$node" inventory --output json > "$out/allot-inventory.json" 2> "$out/allot-inventory.stderr"
echo "exit status: $?"
head -c 6000 "$out/allot-inventory.json"
cat "$out/allot-inventory.stderr"
section "NVML library"
ls -l /usr/lib/x86_64-linux-gnu/libnvidia-ml.so* /usr/local/nvidia/lib64/libnvidia-ml.so* 2>/dev/null
section "comparison"
python3 - "$out/allot-inventory.json" "$out/nvidia-smi-q.xml" <<'PY'
import json, sys, xml.etree.ElementTree as ET
inv = json.load(open(sys.argv[1]))
root = ET.parse(sys.argv[2]).getroot()
smi = {}
for gpu in root.findall("gpu"):
    bus = gpu.get("id").lower()[-12:]
    smi[bus] = {
        "uuid": gpu.findtext("uuid"),
        "name": gpu.findtext("product_name"),
        "memory": gpu.findtext("fb_memory_usage/total"),
        "numa": gpu.findtext("numa_node") if gpu.find("numa_node") is not None else None,
        "mig": gpu.findtext("mig_mode/current_mig"),
    }
for gpu in inv["gpus"]:
    bus = gpu["pci_bus_id"][-12:]
    ref = smi.get(bus, {})
    for key, ours, theirs in [("uuid", gpu.get("uuid"), ref.get("uuid")), ("name", gpu.get("model"), ref.get("name")),
                              ("memory MiB", gpu.get("memory_mib"), ref.get("memory")),
                              ("mig", (gpu.get("mig") or {}).get("mode"), ref.get("mig"))]:
        print(f"GPU {gpu['index']} {bus} {key}: allot={ours!r} nvidia-smi={theirs!r}")
print("GPUs: allot", len(inv["gpus"]), "nvidia-smi", len(smi))
print("warnings:", inv.get("warnings"))
PY
