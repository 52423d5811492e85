# Shared by the scripts: one build directory outside the clone, so every
# checkout (and CI) reuses the same compiled dependencies.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/shoal/target}"
SHOAL_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export SHOAL_ROOT

# One build command everywhere (setup, run, cluster, test): `-p shoal` and
# `--workspace` resolve dependency features differently, and each set costs a
# full build of RocksDB and Polars; building one set keeps it to one.
shoal_build() {
    (cd "$SHOAL_ROOT" && cargo build --workspace --bins --tests "$@")
}

# Install the Debian packages of the arguments that are missing (as root, or
# through sudo).
apt_install() {
    local need=() pkg sudo_cmd=""
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
    done
    [ ${#need[@]} -gt 0 ] || return 0
    echo "installing ${need[*]}" >&2
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need[@]}"
}

# Release builds for a benchmark: shoal (unless SHOAL_BIN names one, which is
# then exported) and the benchmark binary named by the argument.
bench_build() {
    if [ -z "${SHOAL_BIN:-}" ]; then
        echo "$1: building shoal (release)" >&2
        (cd "$SHOAL_ROOT" && cargo build -q --release -p shoal)
        export SHOAL_BIN="$CARGO_TARGET_DIR/release/shoal"
    fi
    (cd "$SHOAL_ROOT" && cargo build -q --release -p shoal-bench --bin "$1")
}
