#!/usr/bin/env bash
# Build the hearth-e2ee crate (the client-side device, without the `http` feature) for
# wasm32-unknown-unknown, adding the target with rustup when it is missing.
#
#   scripts/e2ee-wasm-check.sh          build the library
#   scripts/e2ee-wasm-check.sh --run    also run e2ee/tests/wasm.rs in node (needs node and
#                                       wasm-bindgen-test-runner of the locked wasm-bindgen
#                                       version: cargo install wasm-bindgen-cli --version V)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

run=0
if [[ "${1:-}" == "--run" ]]; then
    run=1
    shift
fi

target=wasm32-unknown-unknown
if ! rustup target list --installed | grep -qx "$target"; then
    rustup target add "$target"
fi
cargo build -p hearth-e2ee --lib --target "$target" "$@"
echo "hearth-e2ee builds for $target"

if [[ "$run" == 1 ]]; then
    want="$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' Cargo.lock)"
    command -v node >/dev/null || { echo "node is not installed" >&2; exit 1; }
    command -v wasm-bindgen-test-runner >/dev/null \
        || { echo "wasm-bindgen-test-runner missing: cargo install wasm-bindgen-cli --version $want" >&2; exit 1; }
    CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
        cargo test -p hearth-e2ee --target "$target" --test wasm "$@"
    echo "hearth-e2ee's wasm test passed in node"
fi
