#!/usr/bin/env bash
# Installs what building and testing Allot needs on a fresh Debian 12 machine.
# Idempotent: it installs only what is missing. Run as root (or with sudo).
set -euo pipefail

# The packages, and a file each must provide, are listed once, in
# scripts/system-packages.txt; check-system.sh verifies those files afterwards.
setup_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
packages=()
while read -r package _; do
    case "$package" in ''|'#'*) continue ;; esac
    packages+=("$package")
done < "$setup_dir/system-packages.txt"

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
# A package can be marked installed while a file of it is gone (removed by
# hand, a broken install); say which, rather than failing deep in a build.
"$setup_dir/check-system.sh"

if ! command -v cargo >/dev/null 2>&1; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    else
        echo "setup: cargo not found: install Rust 1.90 or newer (https://rustup.rs), then run this again" >&2
        exit 1
    fi
fi
