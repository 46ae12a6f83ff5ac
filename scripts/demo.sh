#!/usr/bin/env bash
# The main job on built-in defaults: fill a 256 MiB arena with a seeded mix of blocks,
# fragment it, compact it, print the statistics before and after (kernel-named counters,
# buddyinfo, pagetypeinfo, fragmentation indices) and return emptied pageblocks to the OS.
# Pass --seed N to replay a run. Installs the peer allocators first when it can (optional).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-peers.sh >/dev/null 2>&1 || echo "(peer allocators not installed: only the benchmarks need them)"
exec dotnet run -c Release --project bench -- demo "$@"
