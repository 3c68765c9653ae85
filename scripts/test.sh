#!/usr/bin/env bash
# Runs every Allot test, after installing what the tests need.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

# The fixture tests load the fake NVML library (a cdylib) that a plain
# `cargo test` of another crate does not build, so build the workspace first.
cargo build --workspace --all-targets
cargo test --workspace --no-fail-fast
