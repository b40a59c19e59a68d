#!/usr/bin/env bash
# Hearth vs Synapse, side by side, with hearth-bench (loopback only), and Hearth against the
# project's performance targets.
#
#   scripts/bench-vs-synapse.sh
#
# Builds hearth and hearth-bench in release, then for each backend (SQLite, then PostgreSQL with a
# fresh database) starts Hearth on loopback with rate limits off, runs every scenario against it
# with --pid sampling (first `idle`: the freshly started server with no load), then the targets
# pass (below), stops it, and does the same with Synapse (scripts/synapse.sh). Ends with a table of
# ratios Hearth/Synapse per scenario and metric (the "better" column names the winner) and, per
# backend, the targets table (target, status, measured). On PostgreSQL the CPU of the server's
# database backends is measured too (server_db_cpu). Results (one JSON file per
# server/backend/scenario, plus logs) go to $BENCH_OUT; the targets pass to $BENCH_OUT/targets/.
#
# Comparison pass (both servers), default sizes:
#   idle          3 s settle, 5 s window, right after the server starts
#   send          4 senders x 8 in flight, 2 rooms, 15 s
#   deliver       20 msg/s, 2 senders, 8 receivers, 1 room, 15 s
#   connections   150 clients, 10 s hold
#   reaction      (only when named in BENCH_SCENARIOS) 10 reactions/s to one message, 4
#                 receivers long-polling /sync, 15 s: reaction send→arrival P50/P95
#   initial-sync  300 rooms (the target's size) x 2 members x 5 messages, 3 repeats. Members and
#                 messages are kept small because Synapse's setup dominates: 300 room creations,
#                 300 joins and 1,500 messages (each room's timeline then has ~13 events).
# Targets pass (Hearth only by default; Synapse at these sizes would not finish in bounded time):
#   send          16 senders x 4 in flight (64 requests in flight), 8 rooms, 15 s; more in flight
#                 only queues (16 x 64 gave the same msg/s with 15x the latency)
#   deliver       1,000 msg/s from 10 senders into 10 rooms, 100 receivers in every room, 15 s
#                 sending + 10 s drain; at most 64 sends in flight, a tick finding none free is
#                 skipped (counted), so a server slower than the rate still ends in bounded time
#   connections   min(50,000, open-file hard limit - 1,000) long-polls, 100 per user (so only a
#                 few hundred registrations; one initial /sync per user, each long-poll on its own
#                 TCP connection), over 127.0.0.x source addresses (one per 10,000), 10 s hold,
#                 60 s for the fan-out of one message (a client that has it keeps its connection,
#                 as a real one does, until every client has it). Each long-poll is a socket in the server and
#                 in the benchmark, so the per-process open-file hard limit (`ulimit -Hn`: 20,000
#                 on the 2-core reference machine, which cannot raise it: no CAP_SYS_RESOURCE)
#                 caps it at 19,000; the table then says "not measured" and gives the RSS per
#                 connection and its extrapolation to 50,000.
# Run time on the 2-core reference machine, builds excluded (measured piecewise on 2026-11-25
# while other builds and benchmarks shared the machine, load average 6-13):
#   Hearth on SQLite: comparison pass ~2 min (its 300-room initial-sync: 18 s), targets pass
#   ~4 min (send 20 s, deliver 50 s, connections at 19,000 ~2.5 min).
#   Hearth on PostgreSQL (at 92e4399): the 300-room initial-sync took ~3.5 min (24-30 s per
#   initial /sync, six of them); in the targets pass the deliver setup did not finish (each
#   receiver's catch-up /sync took over 60 s), so that scenario runs into BENCH_TARGETS_MAX_TIME.
#   Synapse 1.163: the 300-room initial-sync took 6.9 min on SQLite (then with 3 members x 10
#   messages, load ~6: 300 rooms 91 s one at a time, 600 joins 44 s, 3,000 messages at 12/s) and
#   7.0 min on PostgreSQL (2 x 5, load ~13: rooms 130 s, 300 joins 29 s, 1,500 messages at 8/s);
#   on a quiet machine (50-90 messages/s) the default 2 x 5 should take 2-3 min.
#   In all an estimated 25 minutes on a quiet machine once Hearth's PostgreSQL sync is fixed (the
#   former 12-minute comparison, plus ~8 for the targets pass, ~3 for Synapse's 300-room
#   initial-sync, ~1 for idle); up to ~10 more until then, and more when the machine is shared.
#   BENCH_TARGETS=0 saves ~8 min; BENCH_INITIAL_SYNC_ARGS="--rooms 300 --members 2 --messages 1
#   --repeat 3" cuts Synapse's setup further.
#
# Environment (all optional):
#   BENCH_OUT          results directory (default target/bench-results/<UTC time>)
#   BENCH_SERVERS      "hearth synapse" (default); e.g. "synapse" to measure Synapse alone
#   BENCH_BACKENDS     "sqlite postgres" (default)
#   BENCH_SCENARIOS    "idle send deliver connections initial-sync" (default); add "encrypted"
#                      for the end-to-end encrypted room (2 senders, 4 receivers, 10 msg/s, 10 s)
#   BENCH_SCALE        integer multiplier for the default comparison sizes (default 1)
#   BENCH_IDLE_ARGS, BENCH_SEND_ARGS, BENCH_DELIVER_ARGS, BENCH_CONNECTIONS_ARGS,
#   BENCH_INITIAL_SYNC_ARGS, BENCH_REACTION_ARGS
#                      replace a scenario's size flags entirely (see hearth-bench SCENARIO --help)
#   BENCH_SEARCH_ARGS, BENCH_SYNAPSE_SEARCH_ARGS
#                      the search scenario (only when named in BENCH_SCENARIOS): a corpus sent
#                      through /send, then ranked and recent queries and send->searchable lag;
#                      Hearth 100,000 messages x BENCH_SCALE by default, Synapse 5,000 x
#                      BENCH_SCALE (about 60 messages/s here: a larger corpus does not finish in
#                      bounded time)
#                      replace a scenario's size flags entirely (see hearth-bench SCENARIO --help)
#   BENCH_TARGETS      1 (default) runs the targets pass, 0 skips it
#   BENCH_TARGETS_SERVERS  servers given the targets pass (default "hearth"; adding synapse costs
#                      up to 3 x BENCH_TARGETS_MAX_TIME per backend)
#   BENCH_TARGETS_MAX_TIME  hard limit of each targets-pass scenario, seconds (default 420)
#   BENCH_TARGET_SEND_ARGS, BENCH_TARGET_DELIVER_ARGS, BENCH_TARGET_CONNECTIONS_ARGS
#                      replace the targets pass's size flags
#   BENCH_TARGET_TRANSPORTS  "long-poll ws" (default): the targets pass's deliver and connections
#                      run once per transport; `ws` (Hearth's org.hearth.ws stream, Hearth only)
#                      writes to $BENCH_OUT/targets-ws/ and gets its own targets table
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
SCENARIOS="${BENCH_SCENARIOS:-idle send deliver connections initial-sync}"
TARGETS="${BENCH_TARGETS:-1}"
TARGETS_SERVERS="${BENCH_TARGETS_SERVERS:-hearth}"
TARGETS_MAX_TIME="${BENCH_TARGETS_MAX_TIME:-420}"
SCALE="${BENCH_SCALE:-1}"
HEARTH_PORT="${HEARTH_BENCH_PORT:-18108}"
SYNAPSE_PORT="${SYNAPSE_BENCH_PORT:-18118}"
PG_URL="${BENCH_PG_URL:-postgres://postgres@127.0.0.1:5432}"
[[ "$SCALE" =~ ^[1-9][0-9]*$ ]] || die "BENCH_SCALE must be a positive integer"
[[ "$TARGETS_MAX_TIME" =~ ^[1-9][0-9]*$ ]] || die "BENCH_TARGETS_MAX_TIME must be a positive integer"
(( SCALE <= 100 )) || die "BENCH_SCALE is capped at 100"
for p in "$HEARTH_PORT" "$SYNAPSE_PORT"; do [[ "$p" =~ ^[0-9]+$ ]] || die "ports must be numbers"; done

IDLE_ARGS="${BENCH_IDLE_ARGS:---settle 3 --window 5}"
SEND_ARGS="${BENCH_SEND_ARGS:---senders 4 --rooms 2 --in-flight 8 --duration $((15 * SCALE))}"
DELIVER_ARGS="${BENCH_DELIVER_ARGS:---senders 2 --receivers $((8 * SCALE)) --rooms 1 --rate 20 --duration $((15 * SCALE))}"
CONNECTIONS_ARGS="${BENCH_CONNECTIONS_ARGS:---clients $((150 * SCALE)) --hold 10}"
ENCRYPTED_ARGS="${BENCH_ENCRYPTED_ARGS:---senders 2 --receivers $((4 * SCALE)) --rate 10 --duration $((10 * SCALE))}"
INITIAL_SYNC_ARGS="${BENCH_INITIAL_SYNC_ARGS:---rooms 300 --members 2 --messages $((5 * SCALE)) --repeat 3}"
SEARCH_ARGS="${BENCH_SEARCH_ARGS:---messages $((100000 * SCALE)) --in-flight 8 --max-time 3600}"
SYNAPSE_SEARCH_ARGS="${BENCH_SYNAPSE_SEARCH_ARGS:---messages $((5000 * SCALE)) --max-time 1800}"
REACTION_ARGS="${BENCH_REACTION_ARGS:---receivers $((4 * SCALE)) --rate 10 --duration $((15 * SCALE))}"

# Each held long-poll is a socket in both the benchmark and the server (children inherit this).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || ulimit -n 65536 2>/dev/null || true
NOFILE="$(ulimit -n)"
[[ "$NOFILE" =~ ^[0-9]+$ ]] || NOFILE=1048576 # "unlimited"
log "open-file limit $NOFILE"

# Targets pass sizes. Connections: 50,000, or as many as the open-file limit (per process, so it
# binds the server and the benchmark alike; 1,000 kept for their other descriptors) and the
# system-wide file table (two sockets per loopback connection) allow.
TARGET_CONNECTIONS=50000
file_max="$(cat /proc/sys/fs/file-max 2>/dev/null || echo 0)"
(( NOFILE - 1000 < TARGET_CONNECTIONS )) && TARGET_CONNECTIONS=$(( NOFILE - 1000 ))
(( file_max > 0 && (file_max - 20000) / 2 < TARGET_CONNECTIONS )) && TARGET_CONNECTIONS=$(( (file_max - 20000) / 2 ))
(( TARGET_CONNECTIONS < 100 )) && TARGET_CONNECTIONS=100
# One loopback source address per 10,000 connections, well inside each address's share of the
# ephemeral port range (net.ipv4.ip_local_port_range).
read -r port_lo port_hi </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || { port_lo=32768; port_hi=60999; }
TARGET_SOURCES=$(( TARGET_CONNECTIONS / 10000 + 1 ))
TARGET_SEND_ARGS="${BENCH_TARGET_SEND_ARGS:---senders 16 --rooms 8 --in-flight 4 --duration 15}"
TARGET_DELIVER_ARGS="${BENCH_TARGET_DELIVER_ARGS:---senders 10 --rooms 10 --receivers 100 --rate 1000 --duration 15 --drain 10}"
TARGET_CONNECTIONS_ARGS="${BENCH_TARGET_CONNECTIONS_ARGS:---clients $TARGET_CONNECTIONS --polls-per-user 100 --sources $TARGET_SOURCES --ramp-concurrency 64 --hold 10 --drain 60}"
TARGET_TRANSPORTS="${BENCH_TARGET_TRANSPORTS:-long-poll ws}"
if [[ "$TARGETS" == 1 ]]; then
    log "targets pass for: $TARGETS_SERVERS"
    if (( TARGET_CONNECTIONS < 50000 )) && [[ -z "${BENCH_TARGET_CONNECTIONS_ARGS:-}" ]]; then
        log "connections target: $TARGET_CONNECTIONS long-polls, not 50,000 (open-file limit $NOFILE" \
            "per process, fs.file-max $file_max; ports $port_lo-$port_hi per source address)"
    fi
fi

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
    # Hearth reads HEARTH_* variables as configuration, so this script's HEARTH_BENCH_* settings
    # must not reach it (HEARTH_BENCH_PORT would be the unknown field `bench_port`).
    local log_level="${HEARTH_BENCH_LOG:-warn}"
    (cd "$dir" && unset "${!HEARTH_BENCH_@}" && RUST_LOG="$log_level" exec "$HEARTH" serve --config hearth.toml \
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
        idle) echo "$IDLE_ARGS" ;;
        send) echo "$SEND_ARGS" ;;
        deliver) echo "$DELIVER_ARGS" ;;
        connections) echo "$CONNECTIONS_ARGS" ;;
        initial-sync) echo "$INITIAL_SYNC_ARGS" ;;
        encrypted) echo "$ENCRYPTED_ARGS" ;;
        reaction) echo "$REACTION_ARGS" ;;
        # `server` is the loop's current server: Synapse gets the corpus it can build in time.
        search) if [[ "$server" == synapse ]]; then echo "$SYNAPSE_SEARCH_ARGS"; else echo "$SEARCH_ARGS"; fi ;;
        *) die "unknown scenario $1" ;;
    esac
}

target_args() {
    case "$1" in
        send) echo "$TARGET_SEND_ARGS" ;;
        deliver) echo "$TARGET_DELIVER_ARGS" ;;
        connections) echo "$TARGET_CONNECTIONS_ARGS" ;;
        *) die "unknown target scenario $1" ;;
    esac
}

# run_scenario LABEL DIR PORT KIND SCENARIO ARGS... : one hearth-bench run against the running
# server, JSON to DIR/SCENARIO.json; false if it failed or the server died.
run_scenario() {
    local label="$1" dir="$2" port="$3" server="$4" scenario="$5" started status
    shift 5
    log "== $label: $scenario $*"
    started=$(date +%s)
    if ! "$BENCH" --url "http://127.0.0.1:$port" --pid "$SERVER_PID" --label "$label" "${db_args[@]}" \
        "${extra_args[@]}" --json "$dir/$scenario.json" "$scenario" "$@" \
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
        return 1
    fi
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
        extra_args=()
        for scenario in $SCENARIOS; do
            # shellcheck disable=SC2046 # the size flags are meant to be split into words
            run_scenario "$label" "$dir" "$port" "$server" "$scenario" $(scenario_args "$scenario") || break
        done
        if [[ "$TARGETS" == 1 && " $TARGETS_SERVERS " == *" $server "* && -n "$SERVER_PID" ]]; then
            tdir="$OUT/targets/$label"
            mkdir -p "$tdir"
            # Bounded, whatever the server's speed: a slow one costs at most this per scenario.
            extra_args=(--max-time "$TARGETS_MAX_TIME")
            for scenario in send deliver connections; do
                # shellcheck disable=SC2046
                run_scenario "$label/targets" "$tdir" "$port" "$server" "$scenario" $(target_args "$scenario") || break
            done
            # The same delivery and connection targets over the WebSocket stream (Hearth's own).
            if [[ " $TARGET_TRANSPORTS " == *" ws "* && "$server" == hearth && -n "$SERVER_PID" ]]; then
                wdir="$OUT/targets-ws/$label"
                mkdir -p "$wdir"
                for scenario in deliver connections; do
                    # shellcheck disable=SC2046
                    run_scenario "$label/targets-ws" "$wdir" "$port" "$server" "$scenario" \
                        $(target_args "$scenario") --transport ws || break
                done
            fi
        fi
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
    if [[ "$TARGETS" == 1 ]]; then
        for backend in $BACKENDS; do
            for server in $TARGETS_SERVERS; do
                [[ -d "$OUT/$server-$backend" ]] || continue
                "$BENCH" targets --results "$OUT/$server-$backend" --targets "$OUT/targets/$server-$backend" \
                    --baseline "$OUT/synapse-$backend" --title "Targets: $server on $backend" || true
                if [[ -d "$OUT/targets-ws/$server-$backend" ]]; then
                    # Only deliver and connections are run over the stream; the other rows say so.
                    "$BENCH" targets --results "$OUT/targets-ws/$server-$backend" \
                        --title "Targets: $server on $backend, receivers on org.hearth.ws" || true
                fi
            done
        done
        [[ " $TARGETS_SERVERS " == *" synapse "* ]] \
            || echo "(targets pass run for $TARGETS_SERVERS only: Synapse at those sizes would not finish in bounded time)"
    fi
    if (( ${#FAILED[@]} > 0 )); then
        echo
        echo "FAILED: ${FAILED[*]}"
    fi
} | tee "$OUT/comparison.txt"
log "results in $OUT"
(( ${#FAILED[@]} == 0 ))
