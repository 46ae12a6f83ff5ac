#!/usr/bin/env bash
# Installs the peer allocators the benchmarks compare against (Debian packages, with apt-get, as root or through
# password-less sudo), and says so before it does:
#   libjemalloc2 (libjemalloc.so.2), libmimalloc2.0 (libmimalloc.so.2), libtcmalloc-minimal4 (libtcmalloc_minimal.so.4).
# Only the benchmarks need them (CI runs this before its benchmark smoke); the demo and the tests do not.
# Idempotent: does nothing (and touches no network) when all three are installed.
# Without root or sudo, or without apt-get, it prints which peers the benchmarks will skip and exits 0:
# a missing peer never fails the benchmarks, it is only left out of the table.
set -u

PACKAGES=(libjemalloc2 libmimalloc2.0 libtcmalloc-minimal4)

missing=()
for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "install-peers: all peers present (${PACKAGES[*]})."
    exit 0
fi

echo "install-peers: missing: ${missing[*]}"

skip() {
    echo "install-peers: $1"
    echo "install-peers: the benchmarks will SKIP these peers: ${missing[*]}"
    echo "install-peers: to install them: apt-get update && apt-get install -y ${missing[*]}"
    exit 0
}

# shellcheck source=apt-sudo.sh
source "$(dirname "$0")/apt-sudo.sh"

export DEBIAN_FRONTEND=noninteractive
echo "install-peers: installing ${missing[*]} with apt-get${SUDO:+ through sudo} (apt-get update, then apt-get install -y --no-install-recommends)"
if ! "${SUDO[@]}" apt-get update; then
    skip "apt-get update failed."
fi
if ! "${SUDO[@]}" apt-get install -y --no-install-recommends "${missing[@]}"; then
    skip "apt-get install failed."
fi
echo "install-peers: installed ${missing[*]}."
