#!/usr/bin/env bash
# Run Synapse (the reference homeserver) locally for conformance tests and benchmarks.
#
#   scripts/synapse.sh start DIR PORT [--postgres DBNAME] [--federation FEDPORT]
#   scripts/synapse.sh stop DIR
#
# start: installs Synapse into <repo>/.venv-synapse from PyPI when missing, generates a config in DIR
#        (server_name "localhost:PORT", plain-HTTP listener on 127.0.0.1:PORT serving the client and
#        federation resources, open registration without verification, all rc_* rate limits relaxed,
#        room directory publication allowed), starts Synapse in the background, waits until
#        GET /_matrix/client/versions answers and writes the PID to DIR/synapse.pid.
#        With --federation FEDPORT the server is named "127.0.0.1:FEDPORT" instead and also listens
#        there with TLS (a self-signed certificate made with openssl) for federation, reaching other
#        servers on loopback without checking their certificates (as the suite's federation tests and
#        a second Synapse need).
#        With --postgres DBNAME the database DBNAME is (re)created fresh on 127.0.0.1:5432 (user
#        postgres, or $SYNAPSE_PG_USER) with C collation, as Synapse requires; otherwise SQLite in DIR.
#        An existing DIR/homeserver.yaml is regenerated, so DIR can be reused.
# stop:  stops the Synapse whose PID is in DIR/synapse.pid and waits for it to exit.
#
# Environment: SYNAPSE_LOG_LEVEL (default WARNING), SYNAPSE_VERSION (pip spec, default latest),
#              SYNAPSE_START_TIMEOUT (seconds, default 60).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO_ROOT/.venv-synapse"

die() { echo "synapse.sh: $*" >&2; exit 1; }

usage() {
    sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

ensure_venv() {
    local want_pg="$1"
    if [[ ! -x "$VENV/bin/python" ]]; then
        echo "synapse.sh: creating $VENV" >&2
        python3 -m venv "$VENV" || die "python3 -m venv failed (on Debian: apt-get install -y python3-venv)"
    fi
    local spec="matrix-synapse${SYNAPSE_VERSION:+==$SYNAPSE_VERSION}"
    if ! "$VENV/bin/python" -c 'import synapse' 2>/dev/null; then
        echo "synapse.sh: installing $spec from PyPI" >&2
        "$VENV/bin/pip" install --quiet --disable-pip-version-check "matrix-synapse[postgres]${SYNAPSE_VERSION:+==$SYNAPSE_VERSION}" \
            || die "pip install matrix-synapse failed"
    fi
    if [[ "$want_pg" == 1 ]] && ! "$VENV/bin/python" -c 'import psycopg2' 2>/dev/null; then
        "$VENV/bin/pip" install --quiet --disable-pip-version-check "matrix-synapse[postgres]" \
            || die "pip install matrix-synapse[postgres] failed"
    fi
}

create_pg_db() {
    local db="$1" user="${SYNAPSE_PG_USER:-postgres}"
    [[ "$db" =~ ^[A-Za-z0-9_]+$ ]] || die "database name must be [A-Za-z0-9_]+: $db"
    # psycopg2 is in the venv, so this works without the psql client installed.
    "$VENV/bin/python" - "$db" "$user" <<'PY' || die "could not create PostgreSQL database $db on 127.0.0.1:5432"
import sys, psycopg2
db, user = sys.argv[1], sys.argv[2]
conn = psycopg2.connect(host="127.0.0.1", port=5432, user=user, dbname="postgres")
conn.autocommit = True
cur = conn.cursor()
cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (db,))
cur.execute(f'DROP DATABASE IF EXISTS "{db}"')
cur.execute(f"CREATE DATABASE \"{db}\" ENCODING 'UTF8' LC_COLLATE='C' LC_CTYPE='C' TEMPLATE template0")
PY
}

write_config() {
    local dir="$1" port="$2" pgdb="$3" fedport="$4"
    local name="localhost:$port"
    if [[ -n "$fedport" ]]; then
        name="127.0.0.1:$fedport"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
            -subj "/CN=127.0.0.1" -addext "subjectAltName=IP:127.0.0.1" \
            -keyout "$dir/fed.key" -out "$dir/fed.crt" >/dev/null 2>&1 \
            || die "openssl could not make the federation certificate"
    fi
    rm -f "$dir/homeserver.yaml"
    (cd "$dir" && "$VENV/bin/python" -m synapse.app.homeserver --server-name "$name" \
        --config-path "$dir/homeserver.yaml" --generate-config --report-stats=no >/dev/null) \
        || die "synapse --generate-config failed"
    "$VENV/bin/python" - "$dir" "$port" "$pgdb" "${SYNAPSE_LOG_LEVEL:-WARNING}" "${SYNAPSE_PG_USER:-postgres}" "$fedport" <<'PY'
import sys, yaml
d, port, pgdb, level, pguser, fedport = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
path = f"{d}/homeserver.yaml"
with open(path) as f:
    cfg = yaml.safe_load(f)
cfg["listeners"] = [{
    "port": port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": False,
    "x_forwarded": False,
    "resources": [{"names": ["client", "federation"], "compress": False}],
}]
if fedport:
    cfg["listeners"].append({
        "port": int(fedport), "bind_addresses": ["127.0.0.1"], "type": "http", "tls": True,
        "resources": [{"names": ["federation"], "compress": False}],
    })
    cfg["tls_certificate_path"] = f"{d}/fed.crt"
    cfg["tls_private_key_path"] = f"{d}/fed.key"
    cfg["federation_verify_certificates"] = False
    # Other servers are on loopback, named by IP literals (Synapse ignores the whitelist there).
    cfg["ip_range_blacklist"] = []
    cfg["ip_range_whitelist"] = ["127.0.0.1/8"]
    cfg["federation_ip_range_blacklist"] = []
cfg["pid_file"] = f"{d}/homeserver.pid"
if pgdb:
    cfg["database"] = {"name": "psycopg2", "args": {
        "user": pguser, "dbname": pgdb, "host": "127.0.0.1", "port": 5432, "cp_min": 5, "cp_max": 10}}
else:
    cfg["database"] = {"name": "sqlite3", "args": {"database": f"{d}/homeserver.db"}}
cfg["enable_registration"] = True
cfg["enable_registration_without_verification"] = True
cfg["room_list_publication_rules"] = [{"action": "allow"}]
cfg["trusted_key_servers"] = []
cfg["suppress_key_server_warning"] = True
cfg["report_stats"] = False
cfg["presence"] = {"enabled": True}
relaxed = {"per_second": 100000, "burst_count": 1000000}
for key in ["rc_message", "rc_registration", "rc_registration_token_validity", "rc_admin_redaction",
            "rc_joins_per_room", "rc_3pid_validation", "rc_third_party_invite", "rc_media_create",
            "rc_room_creation", "rc_reports", "rc_delayed_event_mgmt", "rc_send_email"]:
    cfg[key] = dict(relaxed)
cfg["rc_login"] = {k: dict(relaxed) for k in ["address", "account", "failed_attempts"]}
cfg["rc_joins"] = {k: dict(relaxed) for k in ["local", "remote"]}
cfg["rc_invites"] = {k: dict(relaxed) for k in ["per_room", "per_user", "per_issuer"]}
cfg["rc_presence"] = {"per_user": dict(relaxed)}
cfg["rc_federation"] = {"window_size": 1000, "sleep_limit": 100000, "sleep_delay": 1,
                        "reject_limit": 100000, "concurrent": 1000}
cfg["federation_rr_transactions_per_room_per_second"] = 100000
cfg["log_config"] = f"{d}/log.config"
with open(path, "w") as f:
    yaml.safe_dump(cfg, f, sort_keys=False)
with open(f"{d}/log.config", "w") as f:
    yaml.safe_dump({
        "version": 1,
        "formatters": {"precise": {"format": "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s"}},
        "handlers": {"file": {"class": "logging.FileHandler", "formatter": "precise",
                              "filename": f"{d}/homeserver.log", "filters": ["context"]}},
        "filters": {"context": {"()": "synapse.logging.context.LoggingContextFilter", "request": ""}},
        "loggers": {"synapse.storage.SQL": {"level": "WARNING"}},
        "root": {"level": level, "handlers": ["file"]},
        "disable_existing_loggers": False,
    }, f, sort_keys=False)
PY
}

is_running() {
    local pidfile="$1/synapse.pid"
    [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

cmd_start() {
    [[ $# -ge 2 ]] || usage
    local dir="$1" port="$2" pgdb="" fedport=""
    shift 2
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --postgres) [[ $# -ge 2 ]] || usage; pgdb="$2"; shift 2 ;;
            --federation) [[ $# -ge 2 ]] || usage; fedport="$2"; shift 2 ;;
            *) usage ;;
        esac
    done
    [[ "$port" =~ ^[0-9]+$ ]] || die "PORT must be a number: $port"
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    if is_running "$dir"; then
        die "Synapse already running from $dir (pid $(cat "$dir/synapse.pid")); stop it first"
    fi
    ensure_venv "$([[ -n "$pgdb" ]] && echo 1 || echo 0)"
    [[ -n "$pgdb" ]] && create_pg_db "$pgdb"
    [[ -z "$fedport" || "$fedport" =~ ^[0-9]+$ ]] || die "FEDPORT must be a number: $fedport"
    write_config "$dir" "$port" "$pgdb" "$fedport"
    # exec: the PID recorded is Synapse's own, not a wrapper shell's.
    (cd "$dir" && exec nohup "$VENV/bin/python" -m synapse.app.homeserver --config-path "$dir/homeserver.yaml" \
        >"$dir/stdout.log" 2>&1) &
    echo $! >"$dir/synapse.pid"
    local pid deadline
    pid="$(cat "$dir/synapse.pid")"
    deadline=$(( $(date +%s) + ${SYNAPSE_START_TIMEOUT:-60} ))
    until "$VENV/bin/python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
            "http://127.0.0.1:$port/_matrix/client/versions" >/dev/null 2>&1; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 30 "$dir/stdout.log" "$dir/homeserver.log" >&2 2>/dev/null || true
            rm -f "$dir/synapse.pid"
            die "Synapse exited during startup (logs in $dir)"
        fi
        if (( $(date +%s) > deadline )); then
            kill "$pid" 2>/dev/null || true
            rm -f "$dir/synapse.pid"
            die "Synapse did not answer on port $port within ${SYNAPSE_START_TIMEOUT:-60}s (logs in $dir)"
        fi
        sleep 0.3
    done
    echo "synapse.sh: Synapse $("$VENV/bin/python" -c 'import synapse; print(synapse.__version__)') running at http://127.0.0.1:$port (server_name $(grep -m1 '^server_name' "$dir/homeserver.yaml" | cut -d' ' -f2-), pid $pid, dir $dir)" >&2
}

cmd_stop() {
    [[ $# -eq 1 ]] || usage
    local dir="$1" pid
    [[ -f "$dir/synapse.pid" ]] || { echo "synapse.sh: no $dir/synapse.pid; nothing to stop" >&2; return 0; }
    pid="$(cat "$dir/synapse.pid")"
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "synapse.sh: Synapse (pid $pid) still alive after 10s, sending SIGKILL" >&2
            kill -9 "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$dir/synapse.pid"
    echo "synapse.sh: stopped Synapse (pid $pid)" >&2
}

case "${1:-}" in
    start) shift; cmd_start "$@" ;;
    stop) shift; cmd_stop "$@" ;;
    *) usage ;;
esac
