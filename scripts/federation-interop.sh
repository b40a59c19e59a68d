#!/usr/bin/env bash
# Federation interop between Hearth and Synapse on loopback.
#
#   scripts/federation-interop.sh [--release] [--versions "10 11 12"] [--keep]
#
# Builds `hearth`, installs Synapse into <repo>/.venv-synapse when missing (PyPI), gives each
# server a self-signed certificate and an IP-literal server name (127.0.0.1:PORT, so neither needs
# DNS or .well-known), starts both, then runs scripts/federation-interop/driver.py: for each room
# version, a Hearth user joins a Synapse room and a Synapse user joins a Hearth room; messages,
# redactions, typing, receipts and profile lookups both ways. Prints one line per check and the
# remote-join times; exits non-zero on any failure. --keep leaves the work directory (logs).
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO_ROOT/.venv-synapse"
PROFILE=debug
VERSIONS="10 11 12"
KEEP=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --release) PROFILE=release; shift ;;
        --versions) VERSIONS="$2"; shift 2 ;;
        --keep) KEEP=1; shift ;;
        *) sed -n '2,12p' "${BASH_SOURCE[0]}" >&2; exit 2 ;;
    esac
done
die() { echo "federation-interop.sh: $*" >&2; exit 1; }

WORK="$(mktemp -d -t hearth-fed-interop.XXXXXX)"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ $KEEP == 1 ]]; then echo "work directory kept: $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() {
    for _ in $(seq 1 120); do
        curl -fsS "$1" >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    return 1
}

# --- build and install ---------------------------------------------------------------------
if [[ $PROFILE == release ]]; then cargo build -q --release -p hearth; else cargo build -q -p hearth; fi
HEARTH="$REPO_ROOT/target/$PROFILE/hearth"
if [[ ! -x "$VENV/bin/python" ]]; then python3 -m venv "$VENV" || die "python3 -m venv failed"; fi
if ! "$VENV/bin/python" -c 'import synapse' 2>/dev/null; then
    "$VENV/bin/pip" install --quiet --disable-pip-version-check matrix-synapse || die "pip install matrix-synapse failed"
fi

H_CLIENT=$(free_port); H_FED=$(free_port); S_CLIENT=$(free_port); S_FED=$(free_port)
H_NAME="127.0.0.1:$H_FED"; S_NAME="127.0.0.1:$S_FED"
mkdir -p "$WORK/hearth" "$WORK/synapse"

# --- Hearth ---------------------------------------------------------------------------------
"$HEARTH" generate-dev-cert --server-name 127.0.0.1 --cert "$WORK/hearth/fed.crt" --key "$WORK/hearth/fed.key" >/dev/null
cat > "$WORK/hearth/hearth.toml" <<TOML
server_name = "$H_NAME"
listen = "127.0.0.1:$H_CLIENT"
data_dir = "$WORK/hearth/data"
[database]
url = "sqlite://$WORK/hearth/data/hearth.db"
[registration]
enabled = true
[rate_limits]
enabled = false
[federation]
enabled = true
listen = "127.0.0.1:$H_FED"
tls_certificate = "$WORK/hearth/fed.crt"
tls_private_key = "$WORK/hearth/fed.key"
verify_tls = false
allow_ip_ranges = ["127.0.0.1/32"]
TOML
mkdir -p "$WORK/hearth/data"
RUST_LOG="${HEARTH_LOG:-info,ruma_state_res=warn}" "$HEARTH" serve --config "$WORK/hearth/hearth.toml" >"$WORK/hearth/log" 2>&1 &
PIDS+=($!)

# --- Synapse --------------------------------------------------------------------------------
"$HEARTH" generate-dev-cert --server-name 127.0.0.1 --cert "$WORK/synapse/fed.crt" --key "$WORK/synapse/fed.key" >/dev/null
(cd "$WORK/synapse" && "$VENV/bin/python" -m synapse.app.homeserver --server-name "$S_NAME" \
    --config-path "$WORK/synapse/homeserver.yaml" --generate-config --report-stats=no >/dev/null)
"$VENV/bin/python" "$REPO_ROOT/scripts/federation-interop/synapse_config.py" \
    "$WORK/synapse" "$S_CLIENT" "$S_FED"
"$VENV/bin/python" -m synapse.app.homeserver --config-path "$WORK/synapse/homeserver.yaml" \
    >"$WORK/synapse/stdout" 2>&1 &
PIDS+=($!)

wait_http "http://127.0.0.1:$H_CLIENT/_matrix/client/versions" || { tail -30 "$WORK/hearth/log"; die "Hearth did not start"; }
wait_http "http://127.0.0.1:$S_CLIENT/_matrix/client/versions" || { tail -30 "$WORK/synapse/homeserver.log"; die "Synapse did not start"; }
echo "Hearth $H_NAME (client :$H_CLIENT), Synapse $("$VENV/bin/python" -c 'import synapse; print(synapse.__version__)') $S_NAME (client :$S_CLIENT)"

status=0
"$VENV/bin/python" "$REPO_ROOT/scripts/federation-interop/driver.py" \
    --hearth "http://127.0.0.1:$H_CLIENT" --synapse "http://127.0.0.1:$S_CLIENT" \
    --hearth-name "$H_NAME" --synapse-name "$S_NAME" --versions "$VERSIONS" || status=$?
if [[ $status != 0 ]]; then
    echo "--- Hearth log (tail) ---"; tail -40 "$WORK/hearth/log"
    echo "--- Synapse log (errors) ---"; grep -E "ERROR|WARNING" "$WORK/synapse/homeserver.log" | tail -40 || true
fi
exit $status
