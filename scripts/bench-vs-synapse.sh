#!/usr/bin/env bash
# Hearth vs Synapse, side by side, with hearth-bench (loopback only).
#
#   scripts/bench-vs-synapse.sh
#
# Builds hearth and hearth-bench in release, then for each backend (SQLite, then PostgreSQL with a
# fresh database) starts Hearth on loopback with rate limits off, runs every scenario against it
# with --pid sampling, stops it, and does the same with Synapse (scripts/synapse.sh). Ends with a
# table of ratios Hearth/Synapse per scenario and metric (the "better" column names the winner).
# On PostgreSQL the CPU of the server's database backends is measured too (server_db_cpu).
# Results (one JSON file per server/backend/scenario, plus logs) go to $BENCH_OUT.
#
# Environment (all optional):
#   BENCH_OUT          results directory (default target/bench-results/<UTC time>)
#   BENCH_SERVERS      "hearth synapse" (default); e.g. "synapse" to measure Synapse alone
#   BENCH_BACKENDS     "sqlite postgres" (default)
#   BENCH_SCENARIOS    "send deliver connections initial-sync" (default)
#   BENCH_SCALE        integer multiplier for the default sizes (default 1: the whole comparison
#                      takes about 12 minutes on a 2-core machine, builds excluded)
#   BENCH_SEND_ARGS, BENCH_DELIVER_ARGS, BENCH_CONNECTIONS_ARGS, BENCH_INITIAL_SYNC_ARGS
#                      replace a scenario's size flags entirely (see hearth-bench SCENARIO --help)
#   HEARTH_BENCH_PORT  (default 18108), SYNAPSE_BENCH_PORT (default 18118)
#   BENCH_PG_URL       PostgreSQL server for Hearth (default postgres://postgres@127.0.0.1:5432)
#   BENCH_NO_BUILD=1   use the existing target/release binaries
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

die() { echo "bench-vs-synapse: $*" >&2; exit 1; }
log() { echo "bench-vs-synapse: $*" >&2; }

OUT="${BENCH_OUT:-$REPO_ROOT/target/bench-results/$(date -u +%Y%m%dT%H%M%SZ)}"
SERVERS="${BENCH_SERVERS:-hearth synapse}"
BACKENDS="${BENCH_BACKENDS:-sqlite postgres}"
SCENARIOS="${BENCH_SCENARIOS:-send deliver connections initial-sync}"
SCALE="${BENCH_SCALE:-1}"
HEARTH_PORT="${HEARTH_BENCH_PORT:-18108}"
SYNAPSE_PORT="${SYNAPSE_BENCH_PORT:-18118}"
PG_URL="${BENCH_PG_URL:-postgres://postgres@127.0.0.1:5432}"
[[ "$SCALE" =~ ^[1-9][0-9]*$ ]] || die "BENCH_SCALE must be a positive integer"
(( SCALE <= 100 )) || die "BENCH_SCALE is capped at 100"
for p in "$HEARTH_PORT" "$SYNAPSE_PORT"; do [[ "$p" =~ ^[0-9]+$ ]] || die "ports must be numbers"; done

SEND_ARGS="${BENCH_SEND_ARGS:---senders 4 --rooms 2 --in-flight 8 --duration $((15 * SCALE))}"
DELIVER_ARGS="${BENCH_DELIVER_ARGS:---senders 2 --receivers $((8 * SCALE)) --rooms 1 --rate 20 --duration $((15 * SCALE))}"
CONNECTIONS_ARGS="${BENCH_CONNECTIONS_ARGS:---clients $((150 * SCALE)) --hold 10}"
INITIAL_SYNC_ARGS="${BENCH_INITIAL_SYNC_ARGS:---rooms $((20 * SCALE)) --members 10 --messages 50 --repeat 3}"

# Each held long-poll is a socket in both the benchmark and the server (children inherit this).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || ulimit -n 65536 2>/dev/null || true
log "open-file limit $(ulimit -n)"

if [[ "${BENCH_NO_BUILD:-0}" != 1 ]]; then
    pkgs=(-p hearth-bench)
    [[ " $SERVERS " == *" hearth "* ]] && pkgs+=(-p hearth)
    log "cargo build --release ${pkgs[*]}"
    cargo build --release "${pkgs[@]}" || die "release build failed"
fi
BENCH="$REPO_ROOT/target/release/hearth-bench"
HEARTH="$REPO_ROOT/target/release/hearth"
[[ -x "$BENCH" ]] || die "$BENCH missing"
mkdir -p "$OUT"
log "results in $OUT"

wait_versions() { # PORT PID LOGFILE
    local port="$1" pid="$2" logfile="$3" i
    for i in $(seq 1 200); do
        curl -fsS "http://127.0.0.1:$port/_matrix/client/versions" >/dev/null 2>&1 && return 0
        kill -0 "$pid" 2>/dev/null || { tail -n 30 "$logfile" >&2 || true; return 1; }
        sleep 0.3
    done
    return 1
}

stop_pid() { # PID
    local pid="$1" i
    kill "$pid" 2>/dev/null || return 0
    for i in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    log "pid $pid still alive after 10 s, sending SIGKILL"
    kill -9 "$pid" 2>/dev/null || true
}

psql_admin() { # SQL
    psql "$PG_URL/postgres" -v ON_ERROR_STOP=1 -qc "$1" >/dev/null
}

export RUST_LIB_BACKTRACE=0
SERVER_PID=""
SERVER_DIR=""
SERVER_KIND=""
cleanup() {
    if [[ -n "$SERVER_PID" ]]; then
        stop_server
    fi
}
trap cleanup EXIT

start_hearth() { # DIR BACKEND
    local dir="$1" backend="$2" db_url
    [[ -x "$HEARTH" ]] || die "$HEARTH missing"
    rm -rf "$dir/hearth-data"
    mkdir -p "$dir/hearth-data"
    if [[ "$backend" == postgres ]]; then
        psql_admin "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'hearth_bench'"
        psql_admin "DROP DATABASE IF EXISTS hearth_bench"
        psql_admin "CREATE DATABASE hearth_bench"
        db_url="$PG_URL/hearth_bench"
    else
        db_url="sqlite://./hearth-data/hearth.db"
    fi
    cat >"$dir/hearth.toml" <<EOF
server_name = "localhost:$HEARTH_PORT"
listen = "127.0.0.1:$HEARTH_PORT"
data_dir = "./hearth-data"

[database]
url = "$db_url"

[registration]
enabled = true

[rate_limits]
enabled = false
EOF
    # exec: the background job's PID is Hearth's own, for --pid sampling and for stopping it.
    (cd "$dir" && RUST_LOG="${HEARTH_BENCH_LOG:-warn}" exec "$HEARTH" serve --config hearth.toml \
        >"$dir/hearth.log" 2>&1) &
    SERVER_PID=$!
    echo "$SERVER_PID" >"$dir/hearth.pid"
    SERVER_DIR="$dir"
    SERVER_KIND=hearth
    wait_versions "$HEARTH_PORT" "$SERVER_PID" "$dir/hearth.log"
}

start_synapse() { # DIR BACKEND
    local dir="$1" backend="$2"
    SERVER_DIR="$dir"
    SERVER_KIND=synapse
    if [[ "$backend" == postgres ]]; then
        scripts/synapse.sh start "$dir" "$SYNAPSE_PORT" --postgres hearth_bench_synapse
    else
        rm -f "$dir/homeserver.db"
        scripts/synapse.sh start "$dir" "$SYNAPSE_PORT"
    fi
    SERVER_PID="$(python_pid "$(cat "$dir/synapse.pid")")"
}

# The PID synapse.sh records may be a wrapper shell whose child is the Synapse python process;
# sample and stop the python process itself.
python_pid() { # PID
    local pid="$1" child
    if [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == python* ]]; then
        echo "$pid"
        return
    fi
    child="$(ps -o pid= --ppid "$pid" | head -n 1 | tr -d ' ')"
    echo "${child:-$pid}"
}

stop_server() {
    if [[ "$SERVER_KIND" == synapse ]]; then
        scripts/synapse.sh stop "$SERVER_DIR" || true
    fi
    stop_pid "$SERVER_PID"
    SERVER_PID=""
}

scenario_args() {
    case "$1" in
        send) echo "$SEND_ARGS" ;;
        deliver) echo "$DELIVER_ARGS" ;;
        connections) echo "$CONNECTIONS_ARGS" ;;
        initial-sync) echo "$INITIAL_SYNC_ARGS" ;;
        *) die "unknown scenario $1" ;;
    esac
}

FAILED=()
for backend in $BACKENDS; do
    [[ "$backend" == sqlite || "$backend" == postgres ]] || die "unknown backend $backend"
    for server in $SERVERS; do
        label="$server-$backend"
        dir="$OUT/$label"
        mkdir -p "$dir"
        log "== $label: starting"
        db_args=()
        if [[ "$backend" == postgres ]]; then
            [[ "$server" == hearth ]] && db_args=(--db-name hearth_bench) || db_args=(--db-name hearth_bench_synapse)
        fi
        case "$server" in
            hearth) port="$HEARTH_PORT"; start_hearth "$dir" "$backend" || { FAILED+=("$label:start"); SERVER_PID=""; continue; } ;;
            synapse) port="$SYNAPSE_PORT"; start_synapse "$dir" "$backend" || { FAILED+=("$label:start"); SERVER_PID=""; continue; } ;;
            *) die "unknown server $server" ;;
        esac
        for scenario in $SCENARIOS; do
            log "== $label: $scenario $(scenario_args "$scenario")"
            started=$(date +%s)
            # shellcheck disable=SC2046 # the size flags are meant to be split into words
            if ! "$BENCH" --url "http://127.0.0.1:$port" --pid "$SERVER_PID" --label "$label" "${db_args[@]}" \
                --json "$dir/$scenario.json" "$scenario" $(scenario_args "$scenario") \
                2> >(tee -a "$dir/bench.log" >&2) | tee -a "$dir/results.txt"; then
                FAILED+=("$label:$scenario")
            fi
            log "== $label: $scenario took $(( $(date +%s) - started )) s"
            if ! kill -0 "$SERVER_PID" 2>/dev/null; then
                status=0
                [[ "$server" == hearth ]] && { wait "$SERVER_PID" || status=$?; }
                log "$label died during $scenario (exit status $status; log in $dir)"
                FAILED+=("$label:died")
                SERVER_PID=""
                break
            fi
        done
        [[ -n "$SERVER_PID" ]] && stop_server
    done
done

{
    for backend in $BACKENDS; do
        if [[ -d "$OUT/hearth-$backend" && -d "$OUT/synapse-$backend" ]]; then
            "$BENCH" compare --candidate "$OUT/hearth-$backend" --baseline "$OUT/synapse-$backend" \
                --candidate-label hearth --baseline-label synapse \
                --title "Hearth vs Synapse on $backend" || true
        fi
    done
    if (( ${#FAILED[@]} > 0 )); then
        echo
        echo "FAILED: ${FAILED[*]}"
    fi
} | tee "$OUT/comparison.txt"
log "results in $OUT"
(( ${#FAILED[@]} == 0 ))
