#!/usr/bin/env bash
# Runs the whole test suite (unit, misuse, interop and seeded stress tests) and prints
# a closing line "N passed, N failed, N skipped". Set STRESS_SEED to replay a stress seed, and TEST_FILTER to pass
# a filter to dotnet test, e.g. TEST_FILTER='Category!=ProcessFatalOnFailure' to leave out the tests that take the
# process down when they fail.
set -uo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
filter=()
if [ -n "${TEST_FILTER:-}" ]; then filter=(--filter "$TEST_FILTER"); fi
dotnet test tests/Allocator.Tests.csproj "${filter[@]}" --logger "console;verbosity=normal" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
# The console logger ends with "Total tests: N / Passed: N / Failed: N / Skipped: N" (zero counts omitted).
count() { sed -nE "s/^[[:space:]]+$1: +([0-9]+).*/\1/p" "$log" | tail -1; }
total=$(sed -nE 's/^Total tests: +([0-9]+).*/\1/p' "$log" | tail -1)
passed=$(count Passed); failed=$(count Failed); skipped=$(count Skipped)
if [ -z "$total" ]; then
    echo "0 passed, 1 failed (the test run did not finish)"
    rc=1
else
    echo "${passed:-0} passed, ${failed:-0} failed, ${skipped:-0} skipped"
fi
rm -f "$log"
exit $rc
