#!/usr/bin/env bash
# Installs one Debian package that a benchmark runs as a client, when its command is missing:
#   scripts/install-debian-tool.sh PACKAGE COMMAND BENCHMARK
# e.g. `install-debian-tool.sh wrk wrk web`. Idempotent: does nothing (and touches no network) when COMMAND is on the
# PATH. Without root or sudo, or without apt-get, it says so and exits 0: the benchmark then reports itself SKIPPED.
set -u

package=$1
tool=$2
benchmark=$3
name="install-$package"

if command -v "$tool" >/dev/null 2>&1; then
    echo "$name: $tool present ($(command -v "$tool"))."
    exit 0
fi

skip() {
    echo "$name: $1"
    echo "$name: the $benchmark benchmark will be SKIPPED; to install $tool: apt-get update && apt-get install -y $package"
    exit 0
}

# shellcheck source=apt-sudo.sh
source "$(dirname "$0")/apt-sudo.sh"

if ! "${SUDO[@]}" apt-get install -y "$package" >/dev/null 2>&1; then
    "${SUDO[@]}" apt-get update >/dev/null 2>&1 || skip "apt-get update failed."
    "${SUDO[@]}" apt-get install -y "$package" >/dev/null 2>&1 || skip "apt-get install $package failed."
fi
command -v "$tool" >/dev/null 2>&1 || skip "$package installed but $tool is not on the PATH."
echo "$name: installed $(command -v "$tool")."
