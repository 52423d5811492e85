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
