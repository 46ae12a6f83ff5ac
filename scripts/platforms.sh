#!/usr/bin/env bash
# The platform smoke (platforms/Smoke): allocate, free, pin, compact and release with every byte checked, the release
# lowering committed bytes and the process's resident memory (the working set under Windows), and the background
# compactor's waste trigger on its own. Runs it
#   - on linux-x64 natively (the framework-dependent build),
#   - on win-x64 under wine64 (a self-contained publish; Debian's wine64),
#   - on linux-arm64 under qemu-aarch64 (a self-contained publish; Debian's qemu-user, libc6-arm64-cross,
#     libstdc++6-arm64-cross),
# each with the `smoke` command, the issue-22 program (`repro`: 192 MiB of 64 B-2 KiB blocks in a 1 GiB heap) and the
# demo's workload (`demo`: scripts/demo.sh's fill, free half, Compact, ReleaseFreeMemory, with its defaults; the
# program checks that the release lowers the committed bytes and the process's resident memory).
# Installs wine64 and qemu-user with apt when they are missing and it may (root, or sudo without a password); a
# platform whose emulator cannot be installed is skipped with a message saying why.
# With --tests (CI passes it), also the C ABI for linux-arm64 (scripts/cabi.sh --rid linux-arm64: cross-compiled,
# its C programs run under qemu-aarch64; installs clang, lld, gcc-aarch64-linux-gnu and libc6-dev-arm64-cross), and
# the tests of tests/ compiled into a console runner (platforms/TestRunner: xunit's
# runners need a test host that does not run under the emulators here), published self-contained and run under each
# emulator (MODEL_OPS=$model_ops, 120 s per test at most). platforms/TestRunner/emulated-tests.txt, the plan, names
# every test left out on each emulator and why (Linux-specific; an emulator's limitation; or not platform-specific and
# too slow emulated, run natively by scripts/test.sh); the runner reports each as skipped with that reason.
# With --measure, the runner also runs natively (linux-x64, framework-dependent) with each emulator's plan, so that
# the same tests' times can be compared (the emulation slowdown; README, "Supported platforms").
# Prints one line per run; a test runner's tests count one by one (passed, failed, skipped), a smoke run counts as
# one. Closes with "platforms: N passed, N failed, N skipped".
# Options: --no-install (never call apt), --only win-x64|linux-arm64|linux-x64 (one platform), --wine-wx (also run,
# for information only, the program's wine-wx-probe under wine64 with the runtime's W^X on: no allocator in it, it
# shows whether this Wine still crashes the runtime; README, "Supported platforms").
set -uo pipefail
cd "$(dirname "$0")/.."
out=out/platforms
mkdir -p "$out"
install=1
only=""
wine_wx=0
tests=0
measure=0
model_ops=10000
while [ $# -gt 0 ]; do
    case "$1" in
        --no-install) install=0 ;;
        --wine-wx) wine_wx=1 ;;
        --tests) tests=1 ;;
        --measure) measure=1 ;;
        --only) only="$2"; shift ;;
        *) echo "usage: scripts/platforms.sh [--no-install] [--wine-wx] [--tests] [--measure] [--only win-x64|linux-arm64|linux-x64]"; exit 2 ;;
    esac
    shift
done
passed=0; failed=0; skipped=0
start=$(date +%s)

apt_install() {
    [ "$install" -eq 1 ] || return 1
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        sudo -n true 2>/dev/null || return 1
        sudo="sudo -n"
    fi
    echo "platforms: installing $* (apt-get)"
    if [ ! -f "$out/.apt-updated" ]; then $sudo apt-get update -qq >/dev/null 2>&1 && touch "$out/.apt-updated"; fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" > "$out/apt.log" 2>&1
}

# run NAME COMMAND...: one run of the smoke program, its output in $out/NAME.log, one line of result. PASS_LINE (default:
# the smoke program's) is the line that marks a pass, FIGURES the lines shown beside it; exit code 3 with a line saying
# SKIPPED is a skip (scripts/cabi.sh when a tool is missing).
run() {
    local name="$1"; shift
    local t0=$(date +%s)
    "$@" > "$out/$name.log" 2>&1
    local rc=$?
    local secs=$(( $(date +%s) - t0 ))
    local figures
    figures=$(grep -E "${FIGURES:-^  figures:}" "$out/$name.log" | sed 's/^  figures: //' | tr '\n' ';')
    if [ $rc -eq 0 ] && grep -qE "${PASS_LINE:-^platform smoke: PASS}" "$out/$name.log"; then
        passed=$((passed + 1))
        echo "platforms: PASS $name (${secs} s) $figures"
    elif [ $rc -eq 3 ] && grep -q 'SKIPPED' "$out/$name.log"; then
        skip "$name: $(grep -m1 'SKIPPED' "$out/$name.log")"
    else
        failed=$((failed + 1))
        echo "platforms: FAIL $name (exit $rc, ${secs} s; log $out/$name.log):"
        grep -E 'FAIL|Fatal|rror|exception' "$out/$name.log" | head -20 | sed 's/^/    /'
        tail -5 "$out/$name.log" | sed 's/^/    /'
    fi
}

skip() {
    skipped=$((skipped + 1))
    echo "platforms: SKIP $1"
}

publish() {
    local rid="$1"
    echo "platforms: publishing platforms/Smoke for $rid (self-contained)"
    rm -rf "$out/$rid"
    dotnet publish platforms/Smoke -c Release -r "$rid" --self-contained -o "$out/$rid" > "$out/publish-$rid.log" 2>&1 \
        || { echo "platforms: publish for $rid failed (log $out/publish-$rid.log)"; tail -5 "$out/publish-$rid.log"; return 1; }
    if [ "$tests" -eq 1 ]; then
        echo "platforms: publishing platforms/TestRunner for $rid (self-contained)"
        rm -rf "$out/tests-$rid"
        dotnet publish platforms/TestRunner -c Release -r "$rid" --self-contained -o "$out/tests-$rid" > "$out/publish-tests-$rid.log" 2>&1 \
            || { echo "platforms: test runner publish for $rid failed (log $out/publish-tests-$rid.log)"; return 1; }
    fi
}

# run_tests NAME COMMAND...: one run of the test runner; its tests count one by one. A runner that ends without its
# closing line (a crash, the time limit) counts one failure more.
run_tests() {
    local name="$1"; shift
    local t0=$(date +%s)
    MODEL_OPS=$model_ops TEST_TIMEOUT_SECONDS=120 "$@" > "$out/$name.log" 2>&1
    local rc=$?
    local secs=$(( $(date +%s) - t0 ))
    local line tp tf ts
    line=$(grep -E '^tests: [0-9]+ passed, [0-9]+ failed, [0-9]+ skipped' "$out/$name.log" | tail -1)
    if [ -n "$line" ]; then
        read -r tp tf ts <<< "$(echo "$line" | sed -E 's/^tests: ([0-9]+) passed, ([0-9]+) failed, ([0-9]+) skipped.*/\1 \2 \3/')"
        passed=$((passed + tp)); failed=$((failed + tf)); skipped=$((skipped + ts))
    fi
    if [ $rc -eq 0 ] && [ -n "$line" ] && [ "$tf" -eq 0 ]; then
        echo "platforms: PASS $name (${secs} s) $line"
    else
        [ -n "$line" ] && [ "$tf" -gt 0 ] || failed=$((failed + 1))
        echo "platforms: FAIL $name (exit $rc, ${secs} s; log $out/$name.log) ${line:-no closing line}"
        grep -A3 '^  Failed' "$out/$name.log" | head -30 | sed 's/^/    /'
    fi
    grep -E '^tests: skipped, ' "$out/$name.log" | sed 's/^tests: /    /'
}

want() { [ -z "$only" ] || [ "$only" = "$1" ]; }

if want linux-x64; then
    if dotnet build platforms/Smoke -c Release > "$out/build-linux-x64.log" 2>&1; then
        dll=platforms/Smoke/bin/Release/net10.0/platform-smoke.dll
        run linux-x64-smoke dotnet "$dll" smoke
        run linux-x64-repro dotnet "$dll" repro
        run linux-x64-demo dotnet "$dll" demo
    else
        failed=$((failed + 1)); echo "platforms: FAIL linux-x64 build (log $out/build-linux-x64.log)"
    fi
fi

# win-x64 under wine64. DOTNET_EnableWriteXorExecute=0: Wine 8.0 does not emulate the runtime's W^X double mapping of
# executable memory faithfully, and with it on, the runtime itself crashes (README, "Supported platforms").
if want win-x64; then
    command -v wine >/dev/null || apt_install wine64 || true
    if ! command -v wine >/dev/null; then
        skip "win-x64: wine is not installed and could not be (apt-get install wine64 needs root or sudo)"
    elif publish win-x64; then
        # The Wine prefix lives outside the repository: its drive z: is a link to /, and inside the tree it would send
        # every tool that walks the tree (BenchmarkDotNet's project search, grep -r, find) through the whole file system.
        export WINEPREFIX="${XDG_CACHE_HOME:-$HOME/.cache}/compaction-allocator/wineprefix" WINEDEBUG=-all
        mkdir -p "$(dirname "$WINEPREFIX")"
        [ -d "$WINEPREFIX" ] || timeout 300 wineboot -i > "$out/wineboot.log" 2>&1
        run win-x64-smoke env DOTNET_EnableWriteXorExecute=0 timeout 600 wine "$out/win-x64/platform-smoke.exe" smoke
        run win-x64-repro env DOTNET_EnableWriteXorExecute=0 timeout 600 wine "$out/win-x64/platform-smoke.exe" repro
        run win-x64-demo env DOTNET_EnableWriteXorExecute=0 timeout 600 wine "$out/win-x64/platform-smoke.exe" demo
        if [ "$tests" -eq 1 ]; then
            run_tests win-x64-tests env DOTNET_EnableWriteXorExecute=0 timeout 900 wine "$out/tests-win-x64/Allocator.Tests.exe" --platform wine
        fi
        if [ "$wine_wx" -eq 1 ]; then
            timeout 300 wine "$out/win-x64/platform-smoke.exe" wine-wx-probe > "$out/win-x64-wx-probe.log" 2>&1
            if grep -q '^platform smoke: PASS' "$out/win-x64-wx-probe.log"; then
                echo "platforms: info: with W^X on, this Wine runs the EventSource probe (the workaround may no longer be needed)"
            else
                echo "platforms: info: with W^X on, this Wine crashes the runtime on a program without the allocator:" \
                     "$(grep -m1 'Internal CLR error' "$out/win-x64-wx-probe.log" || echo 'see the log')"
            fi
        fi
        wineserver -k 2>/dev/null || true
    else
        failed=$((failed + 1))
    fi
fi

# linux-arm64 under qemu-user.
if want linux-arm64; then
    if ! command -v qemu-aarch64 >/dev/null || [ ! -e /usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1 ] \
        || [ ! -e /usr/aarch64-linux-gnu/lib/libstdc++.so.6 ]; then
        apt_install qemu-user libc6-arm64-cross libstdc++6-arm64-cross || true
    fi
    if ! command -v qemu-aarch64 >/dev/null || [ ! -e /usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1 ]; then
        skip "linux-arm64: qemu-aarch64 or the arm64 C library is not installed and could not be (apt-get install qemu-user libc6-arm64-cross libstdc++6-arm64-cross needs root or sudo)"
    elif publish linux-arm64; then
        qemu=(env QEMU_LD_PREFIX=/usr/aarch64-linux-gnu DOTNET_SYSTEM_GLOBALIZATION_INVARIANT=1 DOTNET_EnableWriteXorExecute=0
              timeout 900 qemu-aarch64 -L /usr/aarch64-linux-gnu "$out/linux-arm64/platform-smoke")
        run linux-arm64-smoke "${qemu[@]}" smoke
        run linux-arm64-repro "${qemu[@]}" repro
        run linux-arm64-demo "${qemu[@]}" demo
        if [ "$tests" -eq 1 ]; then
            run_tests linux-arm64-tests env QEMU_LD_PREFIX=/usr/aarch64-linux-gnu DOTNET_SYSTEM_GLOBALIZATION_INVARIANT=1 \
                DOTNET_EnableWriteXorExecute=0 timeout 900 qemu-aarch64 -L /usr/aarch64-linux-gnu \
                "$out/tests-linux-arm64/Allocator.Tests" --platform qemu
            # The C ABI for linux-arm64: NativeAOT cross-compiles it with clang and lld, Debian's cross gcc builds the C
            # programs, qemu runs them (scripts/cabi.sh --rid linux-arm64).
            if ! command -v clang >/dev/null || ! command -v ld.lld >/dev/null || ! command -v aarch64-linux-gnu-gcc >/dev/null \
                || ! command -v pkg-config >/dev/null; then
                apt_install clang lld gcc-aarch64-linux-gnu libc6-dev-arm64-cross pkg-config || true
            fi
            PASS_LINE='^cabi: PASS' FIGURES='^cabi: ([0-9]+ checks|struct layouts)' \
                run linux-arm64-cabi bash scripts/cabi.sh "$out/cabi-linux-arm64" --rid linux-arm64
        fi
    else
        failed=$((failed + 1))
    fi
fi

# The same tests natively, with each emulator's plan: the emulation slowdown is the ratio of the runs' times.
if [ "$measure" -eq 1 ] && want linux-x64; then
    if dotnet build platforms/TestRunner -c Release > "$out/build-tests-linux-x64.log" 2>&1; then
        runner=platforms/TestRunner/bin/Release/net10.0/Allocator.Tests.dll
        run_tests linux-x64-tests-as-wine dotnet "$runner" --platform wine
        run_tests linux-x64-tests-as-qemu dotnet "$runner" --platform qemu
    else
        failed=$((failed + 1)); echo "platforms: FAIL linux-x64 test runner build (log $out/build-tests-linux-x64.log)"
    fi
fi

echo "platforms: done in $(( $(date +%s) - start )) s"
echo "platforms: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
