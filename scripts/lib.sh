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

# static_release: how to build the release executable as users install it
# (scripts/install, the Concourse image, scripts/bench). Where the host's C library is
# glibc, `buildstate` is linked statically (+crt-static): no dynamic loader, libgcc_s or
# libm to load each time a command starts (docs/decisions.md, "A static executable").
# That needs an explicit --target, so that build scripts and derive macros, which must
# stay dynamic, do not get the flag. Sets RELEASE_ARGS (extra cargo arguments),
# RELEASE_ENV (variables for `env` to run cargo with; nothing is exported, so later
# cargo runs without --target are not affected) and RELEASE_SUBDIR (where cargo puts
# the executable, under the target directory).
# shellcheck disable=SC2034  # set for the scripts that source this file (bench, install)
static_release() {
    local host var
    host=$(rustc -vV | sed -n 's/^host: //p')
    RELEASE_ARGS=()
    RELEASE_ENV=()
    RELEASE_SUBDIR=release
    case $host in
        *-linux-gnu*)
            RELEASE_ARGS=(--target "$host")
            RELEASE_SUBDIR=$host/release
            # RUSTFLAGS, when set, takes precedence over the target's flags: add ours to it.
            if [ -n "${RUSTFLAGS:-}" ]; then
                RELEASE_ENV=("RUSTFLAGS=$RUSTFLAGS -C target-feature=+crt-static")
            else
                var=CARGO_TARGET_$(tr 'a-z.-' 'A-Z__' <<<"$host")_RUSTFLAGS
                RELEASE_ENV=("$var=${!var:+${!var} }-C target-feature=+crt-static")
            fi ;;
    esac
}

# The project's Python environment (.venv): ansible-core, maturin and pytest, pinned to
# what runs on Python 3.11, and the buildstate extension built from this tree into it.
VENV=${VENV:-$PWD/.venv}
need_venv() {
    command -v python3 >/dev/null || need_apt python3
    python3 -m venv --help >/dev/null 2>&1 || need_apt python3-venv
    if [ ! -x "$VENV/bin/python" ]; then
        step "creating $VENV"
        python3 -m venv "$VENV"
    fi
    # Installed again whenever the requirements changed since (a copy is kept beside).
    if ! cmp -s scripts/requirements-dev.txt "$VENV/requirements-dev.txt"; then
        step "installing ansible-core, maturin, pytest, the test servers and the checkers into $VENV (pip)"
        "$VENV/bin/pip" install -q --upgrade pip
        "$VENV/bin/pip" install -q -r scripts/requirements-dev.txt || die "pip install failed"
        cp scripts/requirements-dev.txt "$VENV/requirements-dev.txt"
    fi
}

# Build the extension (debug profile unless BUILD_PROFILE=release) and install it.
install_python_package() {
    local profile=()
    [ "${BUILD_PROFILE:-debug}" = release ] && profile=(--release)
    step "building the buildstate Python package (maturin ${profile[*]:-debug})"
    rm -rf target/wheels
    "$VENV/bin/maturin" build -q "${profile[@]}" -m python/Cargo.toml --out target/wheels
    "$VENV/bin/pip" install -q --force-reinstall --no-deps target/wheels/buildstate-*.whl
}

# From npm into .tools/, in one install (a later --no-save install would prune the
# other): Azurite, the Azure Blob emulator the sync tests start, and axe-core, the
# accessibility checker the HTML report test runs in Chromium.
need_node_tools() {
    command -v npm >/dev/null || need_apt nodejs npm
    if [ ! -x .tools/node_modules/.bin/azurite-blob ] || [ ! -f .tools/node_modules/axe-core/axe.min.js ]; then
        step "installing azurite and axe-core (npm) into .tools/"
        mkdir -p .tools
        (cd .tools && npm install --silent --no-audit --no-fund --no-save azurite@3.35 axe-core@4 >/dev/null) \
            || die "npm install azurite axe-core failed"
    fi
}
