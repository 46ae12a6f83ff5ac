# Sourced by the install scripts: sets SUDO to how apt-get may run here (empty as root, `sudo -n` with password-less
# sudo), or calls the script's own skip() with the reason when it cannot (no apt-get, not root and no sudo).
command -v apt-get >/dev/null 2>&1 || skip "apt-get not found (not a Debian-like system)."
if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    skip "not root and no password-less sudo."
fi
