#!/usr/bin/env bash
# The main job on built-in defaults: fill a 256 MiB arena with a seeded mix of blocks, fragment it, compact it,
# print the statistics at each moment (kernel-named counters, buddyinfo, fragmentation indices) and return emptied
# pageblocks to the OS. Pass --seed N to replay a run, --out DIR to put its pictures and reports elsewhere than
# out/demo (ignored by git). Installs nothing: the peer allocators are the benchmarks' business
# (scripts/install-peers.sh).
set -uo pipefail
cd "$(dirname "$0")/.."
exec dotnet run -c Release --project bench -- demo "$@"
