#!/usr/bin/env bash
# Installs what building and testing Allot needs on a fresh Debian 12 machine.
# Idempotent: it installs only what is missing. Run as root (or with sudo).
set -euo pipefail

# Build: hwloc headers and libudev for hwlocality, protoc for etcd-client's build.
# Tests: hwloc's command-line tools (the oracle for topology tests), GNU time for
# the benchmarks, etcd for the store and broker tests.
packages=(libhwloc-dev pkg-config libudev-dev protobuf-compiler hwloc time etcd-server)

missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    sudo_cmd=()
    [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    export DEBIAN_FRONTEND=noninteractive
    "${sudo_cmd[@]}" apt-get update -qq
    "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    else
        echo "setup: cargo not found: install Rust 1.90 or newer (https://rustup.rs), then run this again" >&2
        exit 1
    fi
fi
