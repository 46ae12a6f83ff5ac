#!/usr/bin/env bash
# SmallAllocFree's loop (seeded 16-256 B, 1000 live per batch) for NativeHeap, compiled ahead of time with
# NativeAOT and, for comparison, the same program under the JIT; writes bench/results/micro-aot.md.
#   bash bench/aot.sh [--runs N] [--warmups N] [--batches N]     (defaults: 15 runs, 5 warm-ups, 1000 batches)
# Needs the ILCompiler packages from the NuGet feed (the SDK picks their version) and a C linker (gcc works).
set -euo pipefail

bench="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$bench")"
project="$bench/Aot/Allocator.Bench.Aot.csproj"
publish="$bench/Aot/bin/publish"
out="$bench/results/micro-aot.md"

echo "aot: publishing $project with NativeAOT -> $publish"
mkdir -p "$bench/Aot/bin"
if ! dotnet publish -c Release "$project" -o "$publish" > "$bench/Aot/bin/publish.log" 2>&1; then
    tail -30 "$bench/Aot/bin/publish.log" >&2
    echo "aot: NativeAOT publish FAILED (full log: $bench/Aot/bin/publish.log)" >&2
    exit 1
fi

load_before="$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)"
echo "aot: running the NativeAOT binary"
aot_section="$("$publish/Allocator.Bench.Aot" --label "NativeAOT" "$@")"
echo "aot: running the same program under the JIT (tiered, dynamic PGO: the defaults)"
jit_section="$(dotnet run -c Release --project "$project" -- --label "JIT (dotnet run, default tiering and PGO)" "$@")"
load_after="$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)"

revision="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ -n "$(git -C "$root" status --porcelain -- src 2>/dev/null)" ]; then revision="$revision plus uncommitted changes in src/"; fi
mkdir -p "$(dirname "$out")"
{
    echo "# Micro benchmark, NativeAOT vs JIT"
    echo
    echo "Generated $(date -u '+%Y-%m-%d %H:%M') UTC by \`bash bench/aot.sh${*:+ $*}\`, core at $revision."
    echo "SmallAllocFree's loop outside BenchmarkDotNet (\`bench/Aot/Program.cs\`): per batch, allocate 1000 blocks of seeded"
    echo "sizes 16-256 B, then free them in order; a run is timed with a Stopwatch; figures are ns per allocate+free pair,"
    echo "median (min, max) over the measured runs after the warm-up runs. Both sections come from one machine, one after the other."
    echo
    echo '```'
    echo "$(nproc) cores, $(uname -sr), $(dotnet --version 2>/dev/null | sed 's/^/.NET SDK /')"
    echo "Load average (1/5/15 min) before: $load_before; after: $load_after"
    echo '```'
    echo
    echo "$aot_section"
    echo
    echo "$jit_section"
} > "$out"
cat "$out"
echo "aot: wrote $out"
