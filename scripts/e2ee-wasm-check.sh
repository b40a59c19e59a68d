#!/usr/bin/env bash
# Build the hearth-e2ee crate (the client-side device, without the `http` feature) for
# wasm32-unknown-unknown, adding the target with rustup when it is missing.
#
#   scripts/e2ee-wasm-check.sh [--release]
#
# Only building is checked: running the result needs a JS host (node + wasm-bindgen), which
# this repository does not set up.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

target=wasm32-unknown-unknown
if ! rustup target list --installed | grep -qx "$target"; then
    rustup target add "$target"
fi
cargo build -p hearth-e2ee --lib --target "$target" "$@"
echo "hearth-e2ee builds for $target"
