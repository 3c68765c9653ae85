#!/usr/bin/env bash
# Prepares the read-only hardware check for a lent GPU machine (see
# docs/hardware-checks.md). That machine has no Rust toolchain and no hwloc, and
# nothing can be fetched there, so this builds allot-node here (x86-64) and puts
# it in .hwcheck/ with the shared libraries it needs that such an image may lack.
# Then call the device tool with carry [".hwcheck"] and the command
#   bash tools/hardware-check/on-device.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(uname -m)" = x86_64 ] || { echo "prepare: build on x86-64: the GPU machine is x86-64" >&2; exit 1; }
cargo build --release --quiet -p allot-node
rm -rf .hwcheck && mkdir -p .hwcheck/lib
cp target/release/allot-node .hwcheck/
for lib in $(ldd target/release/allot-node | awk '/=> \// {print $3}'); do
    case "$(basename "$lib")" in
        libc.so.*|libm.so.*|libgcc_s.so.*|libpthread.so.*|libdl.so.*) ;;  # always there
        *) cp -L "$lib" .hwcheck/lib/ ;;
    esac
done
# hwloc's XML export for the record, made there by our own binary's hwloc.
grep -qx '/.hwcheck/' .git/info/exclude 2>/dev/null || echo '/.hwcheck/' >> .git/info/exclude
du -sh .hwcheck
