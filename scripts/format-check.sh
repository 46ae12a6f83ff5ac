#!/usr/bin/env bash
# The layout check CI runs: `dotnet format whitespace --verify-no-changes` against .editorconfig, over the whole
# solution. Changes nothing; lists each file and line that differs and exits non-zero if any does.
# The fix: `dotnet format whitespace Allocator.sln` (then review and commit the diff).
set -uo pipefail
cd "$(dirname "$0")/.."
dotnet format whitespace Allocator.sln --verify-no-changes 2>&1
rc=$?
if [ "$rc" -eq 0 ]; then
    echo "format: ok (dotnet format whitespace --verify-no-changes)"
else
    echo "format: FAILED: the layout differs from .editorconfig (above); fix it with: dotnet format whitespace Allocator.sln"
fi
exit "$rc"
