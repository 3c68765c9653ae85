#!/usr/bin/env bash
# Checks that every file the build and the tests need from the system is
# present, and names the Debian package that provides each missing one.
# scripts/setup.sh runs it after installing; run it alone to diagnose a machine.
#
#   ALLOT_SYSTEM_ROOT      look for the files under this directory instead of /
#                          (the test of this check uses it)
#   ALLOT_SYSTEM_PACKAGES  the package list (default scripts/system-packages.txt)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=${ALLOT_SYSTEM_ROOT:-}
list=${ALLOT_SYSTEM_PACKAGES:-$here/system-packages.txt}
[ -r "$list" ] || { echo "check-system: cannot read the package list $list" >&2; exit 2; }

missing=0
while read -r package file _; do
    case "$package" in ''|'#'*) continue ;; esac
    if [ -z "${file:-}" ]; then
        echo "check-system: $list: package $package names no file to check; write 'PACKAGE FILE WHY'" >&2
        exit 2
    fi
    # A file may be a glob (multiarch directories differ between machines).
    if ! compgen -G "$root$file" >/dev/null; then
        echo "check-system: missing $root$file, which Debian package $package provides: install it with 'apt-get install $package' (or run scripts/setup.sh)" >&2
        missing=$((missing + 1))
    fi
done < "$list"

if [ "$missing" -gt 0 ]; then
    echo "check-system: $missing file(s) the build or the tests need are missing" >&2
    exit 1
fi
