# Shared by scripts/*: logging and installing what a step needs, on a fresh machine.
# shellcheck shell=bash

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Install Debian packages that are missing (we are root on these machines; sudo otherwise).
need_apt() {
    local missing=()
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    step "installing ${missing[*]} (apt)"
    $sudo apt-get update -qq || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null \
        || die "could not install ${missing[*]}"
}

need_rust() {
    command -v cargo >/dev/null || die "cargo is not installed: install Rust from https://rustup.rs"
    local comps
    comps=$(rustup component list --installed 2>/dev/null || true)
    for c in rustfmt clippy; do
        if ! grep -q "^$c" <<<"$comps" && command -v rustup >/dev/null; then
            step "installing rust component $c"
            rustup component add "$c"
        fi
    done
}
