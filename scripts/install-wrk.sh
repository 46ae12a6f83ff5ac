#!/usr/bin/env bash
# Installs the web benchmark's load generator, Debian's wrk (`dotnet run -c Release --project bench -- web`).
# Idempotent: does nothing (and touches no network) when wrk is on the PATH.
# Without root or sudo, or without apt-get, it says so and exits 0: the web benchmark then reports itself SKIPPED.
set -u

if command -v wrk >/dev/null 2>&1; then
    echo "install-wrk: wrk present ($(command -v wrk))."
    exit 0
fi

skip() {
    echo "install-wrk: $1"
    echo "install-wrk: the web benchmark will be SKIPPED; to install wrk: apt-get update && apt-get install -y wrk"
    exit 0
}

command -v apt-get >/dev/null 2>&1 || skip "apt-get not found (not a Debian-like system)."

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    skip "not root and no password-less sudo."
fi

if ! "${SUDO[@]}" apt-get install -y wrk >/dev/null 2>&1; then
    "${SUDO[@]}" apt-get update >/dev/null 2>&1 || skip "apt-get update failed."
    "${SUDO[@]}" apt-get install -y wrk >/dev/null 2>&1 || skip "apt-get install wrk failed."
fi
command -v wrk >/dev/null 2>&1 || skip "wrk installed but not on the PATH."
echo "install-wrk: installed $(command -v wrk)."
