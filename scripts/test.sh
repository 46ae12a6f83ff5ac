#!/usr/bin/env bash
# Runs the whole test suite (unit, misuse, interop and seeded stress tests) and prints
# a closing line "N passed, N failed, N skipped". Set STRESS_SEED to replay a stress seed.
set -uo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
dotnet test tests/Allocator.Tests.csproj --logger "console;verbosity=normal" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
summary=$(sed -nE 's/.*Failed: +([0-9]+), Passed: +([0-9]+), Skipped: +([0-9]+).*/\2 passed, \1 failed, \3 skipped/p' "$log" | tail -1)
echo "${summary:-0 passed, 1 failed (the test run did not finish)}"
rm -f "$log"
exit $rc
