#!/usr/bin/env bash
# Builds the C ABI (a NativeAOT shared library, src/Interop/CAbi) and the C programs of tests/cabi with gcc, then
# runs them: layout (prints every struct field's offset, for tests/CAbiTests.cs) and cabi_test (every entry point,
# every error path, two threads; exits non-zero on a failed check) and cabi_destroy_race (cna_heap_destroy racing every
# other call from three threads). cabi_soak (the soak through the C ABI) is built
# too; the bench's soak command runs it. With --build-only nothing is run (what the soak uses).
#   bash scripts/cabi.sh [OUT_DIR] [--build-only]     (default: out/cabi)
# Exit codes: 0 built (and the checks passed), 1 a build or check failed, 3 skipped (no gcc).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$root/out/cabi"
build_only=0
for arg in "$@"; do
    case "$arg" in
        --build-only) build_only=1 ;;
        *) out="$arg" ;;
    esac
done
mkdir -p "$out"
if ! command -v gcc > /dev/null; then
    echo "cabi: SKIPPED: gcc is not installed (Debian: apt-get install gcc)" >&2
    exit 3
fi
echo "cabi: publishing the NativeAOT library -> $out/compaction_heap.so"
if ! dotnet publish "$root/src/Interop/CAbi/Compaction.CAbi.csproj" -c Release -r linux-x64 -o "$out" > "$out/publish.log" 2>&1; then
    tail -30 "$out/publish.log" >&2
    echo "cabi: publish FAILED (log: $out/publish.log)" >&2
    exit 1
fi
for prog in layout cabi_test cabi_soak cabi_destroy_race; do
    gcc -Wall -Wextra -Werror -O1 -I "$root/src/Interop/CAbi" "$root/tests/cabi/$prog.c" -o "$out/$prog" \
        -L "$out" -l:compaction_heap.so -Wl,-rpath,'$ORIGIN' -pthread
done
if [ "$build_only" -eq 1 ]; then
    echo "cabi: built $out/compaction_heap.so, layout, cabi_test, cabi_soak, cabi_destroy_race"
    exit 0
fi
"$out/layout" > "$out/layout.txt"
echo "cabi: wrote $out/layout.txt"
"$out/cabi_test"
"$out/cabi_destroy_race"
