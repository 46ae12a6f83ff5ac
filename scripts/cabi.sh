#!/usr/bin/env bash
# Builds the C ABI the way a C user gets it, then the C programs of tests/cabi against it, and runs them:
#   1. `dotnet pack packaging/native` (a NativeAOT publish of src/Interop/CAbi) -> OUT/packages/, with the tarball
#      compaction_heap-VERSION-linux-x64.tar.gz;
#   2. the tarball unpacked into OUT/ (OUT/compaction_heap-VERSION-linux-x64/{lib,include,lib/pkgconfig});
#   3. layout, cabi_test and cabi_soak compiled with `gcc ... $(pkg-config --cflags --libs compaction_heap)`, with
#      PKG_CONFIG_PATH pointing at the unpacked tree (the installed layout, nothing from the source tree);
#   4. layout run (every struct field's offset, for tests/Interop/CAbiTests.cs -> OUT/layout.txt) and cabi_test (every entry
#      point, every error path, the struct-size contract, two threads; exits non-zero on a failed check), then
#      cabi_destroy_race (cna_heap_destroy racing every other call from three threads).
# cabi_soak (the soak through the C ABI) is built too; the bench's soak command runs it. With --build-only nothing is
# run (what the soak uses).
#   bash scripts/cabi.sh [OUT_DIR] [--build-only]     (default: out/cabi)
# Exit codes: 0 built (and the checks passed), 1 a build or check failed, 3 skipped (no gcc or no pkg-config).
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
out="$(cd "$out" && pwd)"
for tool in gcc pkg-config; do
    if ! command -v "$tool" > /dev/null; then
        echo "cabi: SKIPPED: $tool is not installed (Debian: apt-get install $tool)" >&2
        exit 3
    fi
done
echo "cabi: packing the C library (packaging/native) -> $out/packages"
rm -f "$out"/packages/compaction_heap-*-linux-x64.tar.gz
if ! dotnet pack "$root/packaging/native/Compaction.Allocator.Native.csproj" -c Release -o "$out/packages" > "$out/pack.log" 2>&1; then
    tail -30 "$out/pack.log" >&2
    echo "cabi: pack FAILED (log: $out/pack.log)" >&2
    exit 1
fi
tarball=$(ls "$out"/packages/compaction_heap-*-linux-x64.tar.gz)
prefix="$out/$(basename "$tarball" .tar.gz)"
rm -rf "$prefix"
tar -xzf "$tarball" -C "$out"
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
version=$(pkg-config --modversion compaction_heap)
echo "cabi: unpacked $(basename "$tarball") -> $prefix (pkg-config: compaction_heap $version)"
for prog in layout cabi_test cabi_soak cabi_destroy_race; do
    # shellcheck disable=SC2046  # pkg-config's output is meant to split into words
    gcc -Wall -Wextra -Werror -O1 -DCNA_EXPECTED_VERSION="\"$version\"" "$root/tests/cabi/$prog.c" -o "$out/$prog" \
        $(pkg-config --cflags --libs compaction_heap) -pthread
done
if [ "$build_only" -eq 1 ]; then
    echo "cabi: built $prefix/lib/libcompaction_heap.so, layout, cabi_test, cabi_soak, cabi_destroy_race"
    exit 0
fi
"$out/layout" > "$out/layout.txt"
echo "cabi: wrote $out/layout.txt"
"$out/cabi_test"
"$out/cabi_destroy_race"
