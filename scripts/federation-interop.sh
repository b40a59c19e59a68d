#!/usr/bin/env bash
# Federation interop between Hearth and Synapse on loopback.
#
#   scripts/federation-interop.sh [--release] [--versions "10 11 12"] [--latency N] [--no-same] [--keep]
#
# Builds `hearth` (debug unless --release), installs Synapse into <repo>/.venv-synapse when
# missing (PyPI), gives each server a self-signed certificate and an IP-literal server name
# (127.0.0.1:PORT, so neither needs DNS or .well-known), starts them, then runs
# scripts/federation-interop/driver.py. For each room version: a Hearth user joins a Synapse room
# and a Synapse user joins a Hearth room; messages, redactions, typing both ways, a receipt,
# profile lookups, a leave, an invite accepted. Then, per room version and with the room on each
# side, end-to-end encryption through `e2ee-interop` (e2ee/src/bin, built here with the `http`
# feature; hearth-e2ee devices on vodozemac): Megolm messages both ways with keys queried and
# claimed across servers and room keys sent by Olm to-device; a second device on each side
# announced by a device-list update and given the next room key; each deleted, dropped by the
# other side, and the room key rotated; a last device logged out. Then delivery latency: N
# messages (default 50) sent one at a time, each timed from the send request until it shows in
# the other server's /sync, P50/P95 for Hearth→Synapse and Synapse→Hearth, and, with a second
# Hearth and a second Synapse (started unless --no-same), Hearth↔Hearth and Synapse↔Synapse, each
# with its remote join time (--latency 0: none). Prints one line per check and the figures;
# exits non-zero on any failure. --keep leaves the work directory (server logs).
#
# Cost (2 shared cores, debug build already there): 3–5 minutes in all; the checks take
# ~45 s for three room versions, the encrypted exchanges ~45 s (six of 5–8 s), the latency part
# ~100 s (Synapse↔Synapse is the slowest), start-up ~15 s. `--latency 0 --no-same` (the checks
# only) takes about two minutes. First run: + ~20 s for `pip install matrix-synapse`, + the debug
# build of hearth (~13 min cold here) and of e2ee-interop (~2 min).
# Needs python3 with venv, curl, network access to PyPI once.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO_ROOT/.venv-synapse"
PROFILE=debug
VERSIONS="10 11 12"
KEEP=0
LATENCY=50
SAME=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --release) PROFILE=release; shift ;;
        --versions) VERSIONS="$2"; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --latency) LATENCY="$2"; shift 2 ;;
        --no-same) SAME=0; shift ;;
        *) sed -n '2,28p' "${BASH_SOURCE[0]}" >&2; exit 2 ;;
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
CARGO_PROFILE=()
if [[ $PROFILE == release ]]; then CARGO_PROFILE=(--release); fi
cargo build -q "${CARGO_PROFILE[@]}" -p hearth
cargo build -q "${CARGO_PROFILE[@]}" -p hearth-e2ee --features http --bin e2ee-interop
HEARTH="$REPO_ROOT/target/$PROFILE/hearth"
E2EE_TOOL="$REPO_ROOT/target/$PROFILE/e2ee-interop"
if [[ ! -x "$VENV/bin/python" ]]; then python3 -m venv "$VENV" || die "python3 -m venv failed"; fi
if ! "$VENV/bin/python" -c 'import synapse' 2>/dev/null; then
    "$VENV/bin/pip" install --quiet --disable-pip-version-check matrix-synapse || die "pip install matrix-synapse failed"
fi

# --- servers --------------------------------------------------------------------------------
# start_hearth DIR: a Hearth with an IP-literal server name; sets NAME and CLIENT.
start_hearth() {
    local dir="$WORK/$1" client fed
    client=$(free_port); fed=$(free_port)
    mkdir -p "$dir/data"
    "$HEARTH" generate-dev-cert --server-name 127.0.0.1 --cert "$dir/fed.crt" --key "$dir/fed.key" >/dev/null
    cat > "$dir/hearth.toml" <<TOML
server_name = "127.0.0.1:$fed"
listen = "127.0.0.1:$client"
data_dir = "$dir/data"
[database]
url = "sqlite://$dir/data/hearth.db"
[registration]
enabled = true
[rate_limits]
enabled = false
[federation]
enabled = true
listen = "127.0.0.1:$fed"
tls_certificate = "$dir/fed.crt"
tls_private_key = "$dir/fed.key"
verify_tls = false
allow_ip_ranges = ["127.0.0.1/32"]
TOML
    RUST_LOG="${HEARTH_LOG:-info,ruma_state_res=warn}" "$HEARTH" serve --config "$dir/hearth.toml" >"$dir/log" 2>&1 &
    PIDS+=($!)
    NAME="127.0.0.1:$fed"; CLIENT=$client
}
# start_synapse DIR: a Synapse with an IP-literal server name; sets NAME and CLIENT.
start_synapse() {
    local dir="$WORK/$1" client fed
    client=$(free_port); fed=$(free_port)
    mkdir -p "$dir"
    "$HEARTH" generate-dev-cert --server-name 127.0.0.1 --cert "$dir/fed.crt" --key "$dir/fed.key" >/dev/null
    (cd "$dir" && "$VENV/bin/python" -m synapse.app.homeserver --server-name "127.0.0.1:$fed" \
        --config-path "$dir/homeserver.yaml" --generate-config --report-stats=no >/dev/null)
    "$VENV/bin/python" "$REPO_ROOT/scripts/federation-interop/synapse_config.py" "$dir" "$client" "$fed"
    "$VENV/bin/python" -m synapse.app.homeserver --config-path "$dir/homeserver.yaml" >"$dir/stdout" 2>&1 &
    PIDS+=($!)
    NAME="127.0.0.1:$fed"; CLIENT=$client
}
wait_started() { # DIR CLIENT_PORT LOG
    wait_http "http://127.0.0.1:$2/_matrix/client/versions" || { tail -30 "$WORK/$1/$3"; die "$1 did not start"; }
}

start_hearth hearth; H_NAME=$NAME; H_CLIENT=$CLIENT
start_synapse synapse; S_NAME=$NAME; S_CLIENT=$CLIENT
SAME_ARGS=()
if [[ $SAME == 1 ]]; then
    start_hearth hearth2; SAME_ARGS+=(--hearth2 "http://127.0.0.1:$CLIENT" --hearth2-name "$NAME")
    start_synapse synapse2; SAME_ARGS+=(--synapse2 "http://127.0.0.1:$CLIENT" --synapse2-name "$NAME")
fi
wait_started hearth "$H_CLIENT" log
wait_started synapse "$S_CLIENT" homeserver.log
if [[ $SAME == 1 ]]; then
    wait_started hearth2 "${SAME_ARGS[1]##*:}" log
    wait_started synapse2 "${SAME_ARGS[5]##*:}" homeserver.log
fi
echo "Hearth $H_NAME (client :$H_CLIENT), Synapse $("$VENV/bin/python" -c 'import synapse; print(synapse.__version__)') $S_NAME (client :$S_CLIENT)"

status=0
"$VENV/bin/python" "$REPO_ROOT/scripts/federation-interop/driver.py" \
    --hearth "http://127.0.0.1:$H_CLIENT" --synapse "http://127.0.0.1:$S_CLIENT" \
    --hearth-name "$H_NAME" --synapse-name "$S_NAME" --versions "$VERSIONS" \
    --latency "$LATENCY" --e2ee-tool "$E2EE_TOOL" "${SAME_ARGS[@]}" || status=$?
if [[ $status != 0 ]]; then
    for h in hearth hearth2; do
        if [[ -f "$WORK/$h/log" ]]; then echo "--- $h log (warnings) ---"; grep -E "WARN|ERROR" "$WORK/$h/log" | tail -30 || true; fi
    done
    for s in synapse synapse2; do
        if [[ -f "$WORK/$s/homeserver.log" ]]; then echo "--- $s log (errors) ---"; grep -E "ERROR|WARNING" "$WORK/$s/homeserver.log" | tail -30 || true; fi
    done
fi
exit $status
