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
# With --rid linux-arm64 the same for ARM64 Linux, from this x64 host: the library cross-compiled by NativeAOT (clang
# and lld), the C programs by Debian's aarch64-linux-gnu-gcc against the unpacked linux-arm64 tarball, and run under
# qemu-aarch64; layout's output must equal the x64 build's (same struct layouts on both, and tests/Interop/CAbiTests.cs
# holds the x64 one to the C# declarations). scripts/platforms.sh installs what it needs and runs it.
#   bash scripts/cabi.sh [OUT_DIR] [--build-only] [--rid linux-x64|linux-arm64]     (default: out/cabi, linux-x64)
# Exit codes: 0 built (and the checks passed), 1 a build or check failed, 3 skipped (a tool is missing; says which).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$root/out/cabi"
build_only=0
rid=linux-x64
while [ $# -gt 0 ]; do
    case "$1" in
        --build-only) build_only=1 ;;
        --rid) rid="$2"; shift ;;
        *) out="$1" ;;
    esac
    shift
done
case "$rid" in
    linux-x64) cc=gcc; tools=(gcc pkg-config); run=(); pack_args=() ;;
    linux-arm64)
        cc=aarch64-linux-gnu-gcc
        tools=(gcc pkg-config clang ld.lld aarch64-linux-gnu-gcc qemu-aarch64)
        run=(env QEMU_LD_PREFIX=/usr/aarch64-linux-gnu qemu-aarch64 -L /usr/aarch64-linux-gnu)
        pack_args=(-p:IncludeLinuxArm64=true) ;;
    *) echo "cabi: unknown RID $rid (linux-x64 or linux-arm64)" >&2; exit 2 ;;
esac
mkdir -p "$out"
out="$(cd "$out" && pwd)"
for tool in "${tools[@]}"; do
    if ! command -v "$tool" > /dev/null; then
        echo "cabi: SKIPPED: $tool is not installed (Debian: apt-get install gcc pkg-config, and for linux-arm64 clang lld gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user)" >&2
        exit 3
    fi
done
echo "cabi: packing the C library (packaging/native) -> $out/packages"
rm -f "$out"/packages/compaction_heap-*.tar.gz
if ! dotnet pack "$root/packaging/native/Compaction.Allocator.Native.csproj" -c Release -o "$out/packages" "${pack_args[@]}" > "$out/pack.log" 2>&1; then
    tail -30 "$out/pack.log" >&2
    echo "cabi: pack FAILED (log: $out/pack.log)" >&2
    exit 1
fi
# Unpacks the tarball of RID $1 into $out and points pkg-config at it.
unpack() {
    local tarball
    tarball=$(ls "$out"/packages/compaction_heap-*-"$1".tar.gz)
    prefix="$out/$(basename "$tarball" .tar.gz)"
    rm -rf "$prefix"
    tar -xzf "$tarball" -C "$out"
    export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
    version=$(pkg-config --modversion compaction_heap)
    echo "cabi: unpacked $(basename "$tarball") -> $prefix (pkg-config: compaction_heap $version)"
}
# Compiles tests/cabi/$2.c with compiler $1 into $3 against the tarball pkg-config points at.
compile() {
    # shellcheck disable=SC2046  # pkg-config's output is meant to split into words
    "$1" -Wall -Wextra -Werror -O1 -DCNA_EXPECTED_VERSION="\"$version\"" "$root/tests/cabi/$2.c" -o "$3" \
        $(pkg-config --cflags --libs compaction_heap) -pthread
}
if [ "$rid" = linux-arm64 ]; then
    unpack linux-x64
    compile gcc layout "$out/layout-linux-x64"
fi
unpack "$rid"
for prog in layout cabi_test cabi_soak cabi_destroy_race; do compile "$cc" "$prog" "$out/$prog"; done
if [ "$build_only" -eq 1 ]; then
    echo "cabi: built $prefix/lib/libcompaction_heap.so ($rid), layout, cabi_test, cabi_soak, cabi_destroy_race"
    exit 0
fi
"${run[@]}" "$out/layout" > "$out/layout.txt"
echo "cabi: wrote $out/layout.txt"
if [ "$rid" = linux-arm64 ]; then
    if ! "$out/layout-linux-x64" | diff - "$out/layout.txt"; then
        echo "cabi: FAILED: the struct layouts differ between linux-x64 and linux-arm64 (above)" >&2
        exit 1
    fi
    echo "cabi: struct layouts on linux-arm64 equal linux-x64's ($(wc -l < "$out/layout.txt") sizes and offsets)"
fi
"${run[@]}" "$out/cabi_test"
"${run[@]}" "$out/cabi_destroy_race"
echo "cabi: PASS ($rid)"
