#!/usr/bin/env bash
# Runs the whole test suite (unit, misuse, interop and seeded stress tests). Prints only what a reader needs: each
# failed test with its messages, the seed every seeded test ran with (one line each, to replay it), and the closing
# line "N passed, N failed, N skipped". The full log (every test, its output) goes to a file, named at the end:
# $TEST_LOG, by default out/test/test.log (out/ is ignored by git).
# Set STRESS_SEED to replay a stress seed, and TEST_FILTER to pass a filter to dotnet test, e.g.
# TEST_FILTER='Category!=ProcessFatalOnFailure' to leave out the tests that take the process down when they fail.
set -uo pipefail
cd "$(dirname "$0")/.."
log="${TEST_LOG:-out/test/test.log}"
mkdir -p "$(dirname "$log")"
filter=()
if [ -n "${TEST_FILTER:-}" ]; then filter=(--filter "$TEST_FILTER"); fi
echo "tests: running (full log: $log)"
dotnet test tests/Allocator.Tests.csproj "${filter[@]}" --logger "console;verbosity=detailed" > "$log" 2>&1
rc=$?
# From the log: failed tests with their blocks, build errors, and every line that names a seed under its test.
awk '
    /^  (Passed|Failed|Skipped) / {
        state = $1; test = $0; sub(/^  [A-Za-z]+ /, "", test); sub(/ \[[^]]*\]$/, "", test)
        if (state == "Failed") print
        next
    }
    /: error [A-Z]+[0-9]+:/ { print; next }
    state == "Failed" { print; next }
    /^\[xUnit\.net [0-9:.]+\] .*\[FAIL\]/ { next }
    tolower($0) ~ /(^|[^a-z])seed[ =:]+-?[0-9]+|[a-z_]*seed=[0-9-]+/ && state != "" {
        line = $0; sub(/^[ \t]+/, "", line); print "seed: " test ": " line
    }
' "$log"
# The console logger ends with "Total tests: N / Passed: N / Failed: N / Skipped: N" (zero counts omitted).
count() { sed -nE "s/^[[:space:]]+$1: +([0-9]+).*/\1/p" "$log" | tail -1; }
total=$(sed -nE 's/^Total tests: +([0-9]+).*/\1/p' "$log" | tail -1)
passed=$(count Passed); failed=$(count Failed); skipped=$(count Skipped)
echo "tests: full log in $log"
if [ -z "$total" ]; then
    tail -20 "$log"
    echo "0 passed, 1 failed (the test run did not finish)"
    rc=1
else
    echo "${passed:-0} passed, ${failed:-0} failed, ${skipped:-0} skipped"
fi
exit $rc
