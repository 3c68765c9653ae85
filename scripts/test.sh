#!/usr/bin/env bash
# Runs every Allot test, after installing what the tests need.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

# The Kubernetes tests run allot-node against the kubelet's own device manager,
# built from Kubernetes' Go packages (cached by Go's build cache after the first
# build), and the peer's own check against the upstream stub plugin.
plugins/kubernetes/kubelet-peer/build.sh --test
# The control-plane tests (tests/tests/control_plane.rs, and allot-k8s's) run upstream
# kube-apiserver and kube-scheduler, built the same way and cached the same way.
plugins/kubernetes/control-plane/build.sh

# The fixture tests load the fake NVML library (a cdylib) that a plain
# `cargo test` of another crate does not build, so build the workspace first.
cargo build --workspace --all-targets
# The YARN plugin's tests drive the NodeManager's own classes against the binaries just built.
mvn -B -q -f plugins/yarn/pom.xml verify
cargo test --workspace --no-fail-fast
