#!/usr/bin/env bash
# The packages as a user takes them, from a fresh folder (CI runs this; about 3-5 minutes):
#   1. `dotnet pack` at the root into a local folder feed; the feed must hold exactly the expected packages.
#   2. The C# snippets of README.md (and of the packages' PACKAGE.md readmes), extracted from their ```csharp blocks
#      (so the docs cannot rot), each run AS WRITTEN
#      as the Program.cs of a brand-new app that takes the packages from the local feed: `dotnet new console` for
#      most, `dotnet new web` for a block preceded by <!-- snippet: web -->. A block preceded by
#      <!-- snippet: skip --> is a fragment and is left out (none is, today).
#   3. The ```c blocks of README.md compiled against the unpacked C tarball through pkg-config, from another
#      directory, and run.
#   4. The trace analyzer installed as a .NET tool from the feed and run.
# The work folder is a temporary directory (kept and named on failure); KEEP=1 keeps it anyway. NuGet's global
# packages folder is a fresh one inside it, so no package of an earlier build can stand in for the new ones.
#   bash scripts/consumer-check.sh
# Exit code 0 when every step passed; the last line says "consumer-check: OK" or what failed.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
start=$(date +%s)
work="$(mktemp -d "${TMPDIR:-/tmp}/consumer-check.XXXXXX")"
export DOTNET_NOLOGO=1 DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1
feed="$work/feed"
failures=()
fail() { failures+=("$1"); echo "consumer-check: FAILED: $1"; }
# Runs a command quietly; on failure shows the end of its output.
quiet() {
    local log="$work/step.log"
    if "$@" > "$log" 2>&1; then return 0; fi
    tail -40 "$log"
    return 1
}
finish() {
    if [ ${#failures[@]} -eq 0 ]; then
        [ "${KEEP:-0}" = 1 ] && echo "consumer-check: work folder kept: $work" || rm -rf "$work"
        echo "consumer-check: OK in $(( $(date +%s) - start )) s (packages $version from a local feed; $snippets_run C# snippets of README.md and the package readmes, $c_run C program(s) through pkg-config, the tool)"
        exit 0
    fi
    echo "consumer-check: work folder kept: $work"
    echo "consumer-check: ${#failures[@]} failed: ${failures[*]}"
    exit 1
}
version=$(sed -nE 's:.*<Version>([^<]+)</Version>.*:\1:p' "$root/Directory.Build.props" | head -1)
snippets_run=0; c_run=0

# ---- 1. pack
echo "consumer-check: dotnet pack at the root -> $feed (version $version)"
if ! (cd "$root" && quiet dotnet pack -o "$feed"); then fail "dotnet pack"; finish; fi
# The consumers restore into a cache of their own, so that no package an earlier build left in the machine's cache can
# stand in for the ones just packed. (Set only now: the pack above restores the repository's projects into the usual
# cache, so their obj/ folders never point into this temporary one, which is deleted at the end.)
export NUGET_PACKAGES="$work/nuget-packages"
expected="Compaction.Allocator.$version.nupkg Compaction.Allocator.$version.snupkg Compaction.Allocator.Native.$version.nupkg Compaction.Interop.$version.nupkg Compaction.Interop.$version.snupkg Compaction.TraceAnalyzer.$version.nupkg Compaction.TraceAnalyzer.$version.snupkg compaction_heap-$version-linux-x64.tar.gz"
actual=$(cd "$feed" && ls | sort | tr '\n' ' ' | sed 's/ $//')
echo "consumer-check: the feed holds: $actual"
[ "$actual" = "$(echo "$expected" | tr ' ' '\n' | sort | tr '\n' ' ' | sed 's/ $//')" ] || fail "the feed does not hold exactly: $expected"
cat > "$work/nuget.config" <<NUGET
<?xml version="1.0" encoding="utf-8"?>
<configuration>
  <packageSources>
    <!-- The local feed first, then the sources this machine normally uses (inherited from its NuGet.Config). -->
    <add key="compaction-local" value="$feed" />
  </packageSources>
</configuration>
NUGET

# ---- 2. the README's C# snippets
snippets="$work/snippets"
mkdir -p "$snippets"
extract() {   # extract FILE PREFIX: every ```csharp and ```c block of FILE into $snippets/PREFIX-NN-KIND.cs / PREFIX-cNN.c
    awk -v dir="$snippets" -v prefix="$2" '
        /^<!-- snippet: [a-z]+ -->$/ { mark = $3; next }
        /^```csharp$/ { n++; kind = (mark == "" ? "console" : mark); file = sprintf("%s/%s-%02d-%s.cs", dir, prefix, n, kind); inblock = 1; mark = ""; next }
        /^```c$/ { c++; file = sprintf("%s/%s-c%02d.c", dir, prefix, c); inblock = 1; mark = ""; next }
        /^```/ && inblock { inblock = 0; next }
        inblock { print > file; next }
        /[^ \t]/ { mark = "" }
    ' "$1"
}
extract "$root/README.md" readme
# The package readmes shown on nuget.org hold snippets too: they are run the same way.
extract "$root/src/Allocator/PACKAGE.md" allocator-package
extract "$root/src/Interop/PACKAGE.md" interop-package
ls "$snippets"/*-skip.cs > /dev/null 2>&1 && echo "consumer-check: left out as fragments: $(cd "$snippets" && ls ./*-skip.cs | tr '\n' ' ')"

make_app() {   # make_app TEMPLATE DIR: a brand-new app taking both packages from the feed
    local template=$1 dir=$2
    quiet dotnet new "$template" -o "$dir" --force || return 1
    cp "$work/nuget.config" "$dir/nuget.config"
    (cd "$dir" && quiet dotnet add package Compaction.Allocator --version "$version" \
               && quiet dotnet add package Compaction.Interop --version "$version") || return 1
}
run_snippets() {   # run_snippets KIND TEMPLATE
    local kind=$1 template=$2 app="$work/$1-app"
    local files=("$snippets"/*-"$kind".cs)
    [ -e "${files[0]}" ] || return 0
    echo "consumer-check: dotnet new $template, with Compaction.Allocator and Compaction.Interop $version from the feed"
    if ! make_app "$template" "$app"; then fail "dotnet new $template + dotnet add package"; return; fi
    for f in "${files[@]}"; do
        local name; name=$(basename "$f")
        cp "$f" "$app/Program.cs"
        echo "consumer-check: snippet $name ($(wc -l < "$f") lines) as $kind/Program.cs"
        if ! (cd "$app" && quiet dotnet build -c Release -warnaserror); then fail "build of $name"; continue; fi
        if ! (cd "$app" && timeout 180 dotnet run -c Release --no-build --no-launch-profile > "$work/$name.out" 2>&1); then
            tail -30 "$work/$name.out"; fail "run of $name"; continue
        fi
        sed 's/^/    | /' "$work/$name.out" | head -12
        snippets_run=$((snippets_run + 1))
    done
}
run_snippets console console
run_snippets web web

# ---- 3. C through pkg-config, from the unpacked tarball, built in another directory
if command -v gcc > /dev/null && command -v pkg-config > /dev/null; then
    mkdir -p "$work/c-install" "$work/c-prog"
    tar -xzf "$feed/compaction_heap-$version-linux-x64.tar.gz" -C "$work/c-install"
    export PKG_CONFIG_PATH="$work/c-install/compaction_heap-$version-linux-x64/lib/pkgconfig"
    echo "consumer-check: C: pkg-config --cflags --libs compaction_heap = $(pkg-config --cflags --libs compaction_heap)"
    for f in "$snippets"/*-c[0-9]*.c; do
        [ -e "$f" ] || continue
        name=$(basename "$f" .c)
        cp "$f" "$work/c-prog/prog.c"
        # shellcheck disable=SC2046  # pkg-config's output is meant to split into words
        if ! (cd "$work/c-prog" && quiet gcc -Wall -Wextra -Werror prog.c $(pkg-config --cflags --libs compaction_heap) -o "$name"); then
            fail "gcc of README C block $name"; continue
        fi
        if ! (cd / && timeout 60 "$work/c-prog/$name" > "$work/$name.out" 2>&1); then tail -20 "$work/$name.out"; fail "run of README C block $name"; continue; fi
        sed 's/^/    | /' "$work/$name.out"
        c_run=$((c_run + 1))
    done
    [ "$c_run" -gt 0 ] || fail "no C block in README.md"
else
    echo "consumer-check: C part SKIPPED: gcc or pkg-config is not installed"
fi

# ---- 4. the trace analyzer as a .NET tool
echo "consumer-check: dotnet tool install Compaction.TraceAnalyzer $version from the feed"
if (cd "$work" && quiet dotnet tool install Compaction.TraceAnalyzer --version "$version" --tool-path "$work/tools" --add-source "$feed") \
   && (cd "$work" && "$work/tools/nativeheap-trace" --help | head -3 | sed 's/^/    | /'; [ "${PIPESTATUS[0]}" -eq 0 ]); then
    [ -z "$(ls -A "$work" | grep -v -E '^(feed|nuget-packages|nuget.config|snippets|console-app|web-app|c-install|c-prog|tools|step.log|.*\.out)$')" ] \
        || fail "nativeheap-trace wrote files into the current directory uninvited"
else
    fail "the trace analyzer tool"
fi
[ "$snippets_run" -gt 0 ] || fail "no C# snippet ran"
finish
