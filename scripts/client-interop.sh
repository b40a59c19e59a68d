#!/usr/bin/env bash
# Client-library interop check: real Matrix client libraries (matrix-nio, matrix-js-sdk) walk
# through what a new user does (register, login, createRoom, invite, join, send, /sync, display
# name, DM with m.direct, leave, logout) against a homeserver; then the end-to-end encryption
# steps (e2ee): matrix-js-sdk with Rust crypto and matrix-nio[e2e] in one Megolm room (device
# keys, cross-signing with password UIA, secret storage, key backup + restore, encrypted
# messages js->nio, nio->js and js->js).
#
#   scripts/client-interop.sh                  build Hearth, run it on a free loopback port, test it
#   scripts/client-interop.sh --synapse        start Synapse (scripts/synapse.sh) instead and test it
#   scripts/client-interop.sh --url URL        test an already running server (or set HS_URL)
#
# Options: --only nio|js|e2ee run one part only (e2ee uses both libraries)
#          --no-e2ee          skip the end-to-end encryption steps
#          --no-extras        skip the EXTRA steps (typing, receipts, presence, media, push rules, …;
#                             reported but never part of the exit status)
#          --keep             keep the temp dir (server log, HTTP logs) even when everything passed
#          --release          build and run target/release/hearth
#          --postgres         run Hearth on a fresh PostgreSQL database on 127.0.0.1:5432 (user
#                             postgres; created and dropped here) instead of SQLite
#          --js-shim-pushrules diagnostic: when GET /pushrules/ is 404, give matrix-js-sdk an empty
#                             rule set so the steps after startClient run (still counted a FAIL)
# Environment: HS_URL (same as --url), HEARTH_LOG (RUST_LOG for Hearth, default
#              "debug,tower_http=debug"), INTEROP_DIR (use this dir instead of a fresh temp dir),
#              HEARTH_BIN (run this Hearth binary instead of building one).
#
# Installs matrix-nio[e2e] into <repo>/.venv-interop (pip install -r scripts/client-interop/
# requirements.txt) and matrix-js-sdk into scripts/client-interop/js (npm ci from the committed
# lockfile) when missing. Prints PASS/FAIL per step and a summary; exits non-zero if any step failed.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HERE="$REPO_ROOT/scripts/client-interop"
VENV="$REPO_ROOT/.venv-interop"

url="${HS_URL:-}"
target=hearth
only=""
keep=0
profile=debug
pg=0
pgdb=""
e2ee=1
js_extra=()
e2ee_extra=()
nio_extra=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --url) [[ $# -ge 2 ]] || { echo "--url needs a value" >&2; exit 2; }; url="$2"; target=external; shift 2 ;;
        --synapse) target=synapse; shift ;;
        --only) [[ $# -ge 2 ]] || { echo "--only needs nio, js or e2ee" >&2; exit 2; }; only="$2"; shift 2 ;;
        --no-e2ee) e2ee=0; shift ;;
        --keep) keep=1; shift ;;
        --release) profile=release; shift ;;
        --postgres) pg=1; shift ;;
        --js-shim-pushrules) js_extra+=(--shim-pushrules); e2ee_extra+=(--shim-pushrules); shift ;;
        --no-extras) js_extra+=(--no-extras); nio_extra+=(--no-extras); shift ;;
        -h|--help) sed -n '2,29p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "client-interop.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ -n "$url" && "$target" == hearth ]] && target=external
case "$only" in ""|nio|js|e2ee) ;; *) echo "--only takes nio, js or e2ee" >&2; exit 2 ;; esac
[[ "$only" == e2ee ]] && e2ee=1
[[ -n "$only" && "$only" != e2ee ]] && e2ee=0
need_nio=0; need_js=0
[[ -z "$only" || "$only" == nio || $e2ee -eq 1 ]] && need_nio=1
[[ -z "$only" || "$only" == js || $e2ee -eq 1 ]] && need_js=1

log() { echo "client-interop: $*" >&2; }

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for_versions() {
    local base="$1" pid="$2" what="$3" deadline=$(( $(date +%s) + 60 ))
    until curl -fsS "$base/_matrix/client/versions" >/dev/null 2>&1; do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "$what exited during startup"
            return 1
        fi
        if (( $(date +%s) > deadline )); then
            log "$what did not answer /versions within 60s"
            return 1
        fi
        sleep 0.3
    done
}

workdir="${INTEROP_DIR:-$(mktemp -d /tmp/client-interop.XXXXXX)}"
mkdir -p "$workdir"
server_pid=""
cleanup() {
    local rc=$?
    if [[ "$target" == hearth && -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill "$server_pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$server_pid" 2>/dev/null || true
        log "stopped Hearth (pid $server_pid)"
    fi
    if [[ "$target" == synapse && -f "$workdir/synapse/synapse.pid" ]]; then
        # synapse.sh records the PID of the subshell that launched Synapse, so `stop` can leave the
        # Synapse process itself (a child of that subshell) running: remember and stop the children.
        local spid children
        spid="$(cat "$workdir/synapse/synapse.pid")"
        children="$(ps -o pid= --ppid "$spid" 2>/dev/null | tr -d ' ' || true)"
        "$REPO_ROOT/scripts/synapse.sh" stop "$workdir/synapse" || true
        for c in $children; do
            if kill -0 "$c" 2>/dev/null; then
                kill "$c" 2>/dev/null || true
                for _ in $(seq 1 100); do kill -0 "$c" 2>/dev/null || break; sleep 0.1; done
                kill -9 "$c" 2>/dev/null || true
                log "stopped Synapse process $c (left running by synapse.sh stop)"
            fi
        done
    fi
    if [[ -n "$pgdb" ]]; then
        dropdb -h 127.0.0.1 -U postgres --if-exists "$pgdb" || log "could not drop database $pgdb"
    fi
    if [[ $rc -eq 0 && $keep -eq 0 && -z "${INTEROP_DIR:-}" ]]; then
        rm -rf "$workdir"
    else
        log "logs kept in $workdir"
    fi
}
trap cleanup EXIT

# ---------------------------------------------------------------- client libraries
if [[ $need_nio -eq 1 ]]; then
    if [[ ! -x "$VENV/bin/python" ]]; then
        log "creating $VENV"
        python3 -m venv "$VENV"
    fi
    # matrix-nio 0.26's [e2e] extra brings vodozemac's Python bindings (a binary wheel; no libolm)
    if ! "$VENV/bin/python" -c 'import nio, nio.crypto; assert nio.crypto.ENCRYPTION_ENABLED' 2>/dev/null; then
        log "installing matrix-nio[e2e] into $VENV (scripts/client-interop/requirements.txt)"
        "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$HERE/requirements.txt"
        "$VENV/bin/python" -c 'import nio.crypto; assert nio.crypto.ENCRYPTION_ENABLED' \
            || { log "matrix-nio has no encryption support after the install"; exit 1; }
    fi
fi
if [[ $need_js -eq 1 ]]; then
    if [[ ! -d "$HERE/js/node_modules/matrix-js-sdk" ]]; then
        log "installing matrix-js-sdk (npm ci)"
        (cd "$HERE/js" && npm ci --no-audit --no-fund --silent)
    fi
fi

# ---------------------------------------------------------------- server
case "$target" in
    hearth)
        if [[ -n "${HEARTH_BIN:-}" ]]; then
            hearth_bin="$HEARTH_BIN"
            [[ -x "$hearth_bin" ]] || { log "HEARTH_BIN=$hearth_bin is not executable"; exit 1; }
            log "using $hearth_bin (HEARTH_BIN; not building)"
        else
            hearth_bin="$REPO_ROOT/target/$profile/hearth"
            log "building Hearth (cargo build -p hearth${profile/debug/})"
            if [[ "$profile" == release ]]; then
                (cd "$REPO_ROOT" && cargo build -p hearth --release)
            else
                (cd "$REPO_ROOT" && cargo build -p hearth)
            fi
        fi
        port="$(free_port)"
        mkdir -p "$workdir/hearth-data"
        db_url="sqlite://$workdir/hearth-data/hearth.db"
        if [[ $pg -eq 1 ]]; then
            pgdb="hearth_interop_$$"
            createdb -h 127.0.0.1 -U postgres "$pgdb"
            db_url="postgres://postgres@127.0.0.1:5432/$pgdb"
        fi
        cat >"$workdir/hearth.toml" <<EOF
server_name = "localhost:$port"
listen = "127.0.0.1:$port"
data_dir = "$workdir/hearth-data"

[database]
url = "$db_url"

[registration]
enabled = true

[rate_limits]
enabled = false
EOF
        # exec: the background job's PID must be Hearth itself, so that cleanup stops the server
        (cd "$workdir" && RUST_LOG="${HEARTH_LOG:-debug,tower_http=debug}" NO_COLOR=1 \
            exec "$hearth_bin" serve --config "$workdir/hearth.toml") \
            >"$workdir/hearth.log" 2>&1 </dev/null &
        server_pid=$!
        url="http://127.0.0.1:$port"
        if ! wait_for_versions "$url" "$server_pid" "Hearth"; then
            tail -n 15 "$workdir/hearth.log" | cut -c1-400 >&2 || true
            exit 1
        fi
        log "Hearth running at $url (pid $server_pid, log $workdir/hearth.log)"
        ;;
    synapse)
        port="$(free_port)"
        "$REPO_ROOT/scripts/synapse.sh" start "$workdir/synapse" "$port"
        url="http://127.0.0.1:$port"
        ;;
    external)
        curl -fsS "$url/_matrix/client/versions" >/dev/null || { log "$url/_matrix/client/versions does not answer"; exit 1; }
        log "testing the server at $url"
        ;;
esac

server_header="$(curl -sS -D - -o /dev/null "$url/_matrix/client/versions" | tr -d '\r' | sed -n 's/^[Ss]erver: //p')"

# ---------------------------------------------------------------- run
run_lib() {
    local name="$1"; shift
    log "running $name against $url"
    local rc=0
    "$@" 2>"$workdir/$name.stderr" || rc=$?
    echo "$rc" >"$workdir/$name.rc"
    if [[ $rc -ne 0 && -s "$workdir/$name.stderr" ]]; then
        log "$name stderr (last 20 lines without SDK MatrixRTC noise, full in $workdir/$name.stderr):"
        grep -v 'MatrixRTCSessionManager\]' "$workdir/$name.stderr" | tail -n 20 >&2 || true
    fi
    echo
}

if [[ -z "$only" || "$only" == nio ]]; then
    run_lib nio "$VENV/bin/python" "$HERE/nio_interop.py" --url "$url" --http-log "$workdir/nio-http.jsonl" "${nio_extra[@]}" \
        | tee "$workdir/nio.out"
fi
if [[ -z "$only" || "$only" == js ]]; then
    run_lib js node "$HERE/js/interop.mjs" --url "$url" --http-log "$workdir/js-http.jsonl" "${js_extra[@]}" \
        | tee "$workdir/js.out"
fi
if [[ $e2ee -eq 1 ]]; then
    run_lib e2ee node "$HERE/js/e2ee.mjs" --url "$url" --nio-python "$VENV/bin/python" \
        --nio-store "$workdir/nio-e2ee-store" --http-log "$workdir/e2ee-js-http.jsonl" \
        --nio-http-log "$workdir/e2ee-nio-http.jsonl" "${e2ee_extra[@]}" \
        | tee "$workdir/e2ee.out"
fi

echo "==================== client interop summary ===================="
echo "server: $target at $url${server_header:+ ($server_header)}${pgdb:+ on PostgreSQL}"
overall=0
names=()
[[ -z "$only" || "$only" == nio ]] && names+=(nio)
[[ -z "$only" || "$only" == js ]] && names+=(js)
[[ $e2ee -eq 1 ]] && names+=(e2ee)
for name in "${names[@]}"; do
    out="$workdir/$name.out"
    passed=$(grep -c '^PASS' "$out" || true)
    failed=$(grep -c '^FAIL' "$out" || true)
    rc="$(cat "$workdir/$name.rc" 2>/dev/null || echo 1)"
    if [[ "$rc" -ne 0 || "$failed" -gt 0 || "$passed" -eq 0 ]]; then
        overall=1
        verdict=FAIL
    else
        verdict=PASS
    fi
    xpassed=$(grep -c '^EXTRA PASS' "$out" || true)
    xfailed=$(grep -c '^EXTRA FAIL' "$out" || true)
    printf '%-4s %-4s %s steps passed, %s failed (exit status %s); EXTRA (not counted): %s passed, %s failed\n' \
        "$name" "$verdict" "$passed" "$failed" "$rc" "$xpassed" "$xfailed"
    grep '^FAIL\|^EXTRA FAIL' "$out" | sed 's/^/       /' || true
done
[[ "$target" == hearth ]] && echo "Hearth log: $workdir/hearth.log (kept when something failed or with --keep)"
exit $overall
