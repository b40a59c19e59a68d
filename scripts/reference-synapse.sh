#!/usr/bin/env bash
# Run the whole conformance suite against a fresh Synapse (the reference implementation) and
# print the per-module summary (also written to target/conformance-summary-synapse.json).
#
#   scripts/reference-synapse.sh [--postgres] [-- EXTRA LIBTEST ARGS]
#
# Uses scripts/synapse.sh (installs Synapse into .venv-synapse when missing). Port: $SYNAPSE_PORT
# or a free one. A test that fails here is a wrong test (or a known Synapse deviation to note).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

pg=()
extra=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --postgres) pg=(--postgres "conformance_synapse"); shift ;;
        --) shift; extra=(-- "$@"); break ;;
        *) echo "usage: $0 [--postgres] [-- LIBTEST ARGS]" >&2; exit 2 ;;
    esac
done

port="${SYNAPSE_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
dir="$(mktemp -d -t synapse-ref-XXXXXX)"
cleanup() { scripts/synapse.sh stop "$dir" || true; }
trap cleanup EXIT

scripts/synapse.sh start "$dir" "$port" "${pg[@]}"
cargo build -p conformance-tests --tests --bins
status=0
HS_URL="http://127.0.0.1:$port" cargo run -q -p conformance-tests --bin conformance-report -- --server synapse "${extra[@]}" || status=$?
exit "$status"
