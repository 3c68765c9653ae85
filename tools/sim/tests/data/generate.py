#!/usr/bin/env python3
"""Writes a small synthetic cluster and task list in the Alibaba GPU-sharing
trace's CSV format (see ../../../../docs/simulator.md), so the simulator's tests
need nothing outside the repository. Seeded: running it again writes the same
files. The mix imitates the published lists: GPU-sharing tasks of various
milli-GPU, whole and multi-GPU tasks, GPU-model constraints, CPU-only tasks.

    python3 tools/sim/tests/data/generate.py
"""
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))
rng = random.Random(20261130)

MODELS = [("G2", 8, 96000, 786432), ("T4", 2, 96000, 393216), ("P100", 2, 64000, 262144),
          ("V100M32", 8, 96000, 786432), ("G3", 8, 128000, 786432)]

with open(os.path.join(HERE, "nodes.csv"), "w") as out:
    out.write("sn,cpu_milli,memory_mib,gpu,model\n")
    for index in range(60):
        model, gpus, cpu, memory = rng.choices(MODELS, weights=[6, 2, 1, 1, 1])[0]
        if model in ("G2", "V100M32") and rng.random() < 0.3:
            gpus = rng.choice([1, 2, 4])
        out.write(f"synthetic-node-{index:04d},{cpu},{memory},{gpus},{model}\n")

with open(os.path.join(HERE, "tasks.csv"), "w") as out:
    out.write("name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n")
    for index in range(400):
        kind = rng.choices(["share", "one", "multi", "cpu"], weights=[55, 25, 10, 10])[0]
        spec = ""
        if kind == "share":
            num_gpu, milli = 1, rng.choice([50, 100, 200, 250, 460, 500, 810])
        elif kind == "one":
            num_gpu, milli = 1, 1000
        elif kind == "multi":
            num_gpu, milli = rng.choice([2, 4, 8]), 1000
        else:
            num_gpu, milli = 0, 0
        if num_gpu and rng.random() < 0.2:
            spec = rng.choice(["G2", "T4", "V100M32|G3", "P100|T4"])
        cpu = rng.choice([1000, 2000, 4000, 6000, 12000]) * max(1, num_gpu)
        memory = rng.choice([2048, 8192, 16384, 32768]) * max(1, num_gpu)
        created = index * 1000
        out.write(f"synthetic-pod-{index:04d},{cpu},{memory},{num_gpu},{milli},{spec},LS,Running,{created},{created + 3600000},{created}\n")
