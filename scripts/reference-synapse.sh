#!/usr/bin/env bash
# Run the whole conformance suite against a fresh Synapse (the reference implementation) and
# print the per-module summary (also written to target/conformance-summary-synapse.json).
#
#   scripts/reference-synapse.sh [--postgres] [--federation] [-- EXTRA LIBTEST ARGS]
#
# Uses scripts/synapse.sh (installs Synapse into .venv-synapse when missing). Port: $SYNAPSE_PORT
# or a free one. A test that fails here is a wrong test (or a known Synapse deviation to note).
# Without --federation the federation module's tests are skipped (reported as skipped). With it,
# the Synapse is named 127.0.0.1:FEDPORT with a TLS federation listener (HS_FEDERATION_URL), and a
# second such Synapse (HS2_URL, SQLite) is started for the two-server test; e.g.
#   scripts/reference-synapse.sh --federation -- federation::
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

pg=()
extra=()
federation=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --postgres) pg=(--postgres "conformance_synapse"); shift ;;
        --federation) federation=1; shift ;;
        --) shift; extra=(-- "$@"); break ;;
        *) echo "usage: $0 [--postgres] [--federation] [-- LIBTEST ARGS]" >&2; exit 2 ;;
    esac
done

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port="${SYNAPSE_PORT:-$(free_port)}"
dir="$(mktemp -d -t synapse-ref-XXXXXX)"
dir2=""
cleanup() {
    scripts/synapse.sh stop "$dir" || true
    if [[ -n "$dir2" ]]; then scripts/synapse.sh stop "$dir2" || true; fi
}
trap cleanup EXIT

fed=()
env_fed=()
if [[ $federation == 1 ]]; then
    fedport="$(free_port)"
    fed=(--federation "$fedport")
    dir2="$(mktemp -d -t synapse-ref2-XXXXXX)"
    port2="$(free_port)"
    scripts/synapse.sh start "$dir2" "$port2" --federation "$(free_port)"
    env_fed=(HS_FEDERATION_URL="https://127.0.0.1:$fedport" HS2_URL="http://127.0.0.1:$port2")
fi
scripts/synapse.sh start "$dir" "$port" "${pg[@]}" "${fed[@]}"
cargo build -p conformance-tests --tests --bins
status=0
env HS_URL="http://127.0.0.1:$port" "${env_fed[@]}" \
    cargo run -q -p conformance-tests --bin conformance-report -- --server synapse "${extra[@]}" || status=$?
exit "$status"
