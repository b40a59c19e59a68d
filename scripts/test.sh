#!/usr/bin/env bash
# Run every test of the project (what CI runs, via .ci/run).
#
# 1. makes sure PostgreSQL (127.0.0.1:5432, trust auth, database `test`) and Redis (127.0.0.1:6379)
#    are up, installing and starting them from Debian packages when absent (fails loudly if not);
# 2. cargo fmt --check, cargo clippy -D warnings, cargo build (whole workspace, all targets);
# 3. all workspace tests twice, with HEARTH_TEST_DB=sqlite and HEARTH_TEST_DB=postgres
#    (cargo nextest when installed, else cargo test); the conformance suite runs through
#    conformance-report (per-module table; tests listed in conformance-tests/known-gaps.txt are
#    skipped against Hearth and counted as skipped).
# Exit status is non-zero on any failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '\n==> %s\n' "$*"; }
die() { printf '\ntest.sh: FAILED: %s\n' "$*" >&2; exit 1; }

SUDO=""
if [[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null; then SUDO="sudo"; fi
apt_updated=0
apt_install() {
    if [[ $apt_updated == 0 ]]; then
        $SUDO apt-get update -qq || die "apt-get update failed"
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" || die "apt-get install $* failed"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pg_ready() {
    if command -v pg_isready >/dev/null; then
        pg_isready -q -h 127.0.0.1 -p 5432
    else
        port_open 5432
    fi
}

ensure_postgres() {
    if ! pg_ready; then
        log "PostgreSQL is not answering on 127.0.0.1:5432: installing/starting it"
        local fresh=0
        if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
            apt_install postgresql postgresql-client
            fresh=1
        fi
        local version
        version="$(ls /etc/postgresql | sort -V | tail -n1)"
        local hba="/etc/postgresql/$version/main/pg_hba.conf"
        if [[ $fresh == 1 ]] || ! grep -qE '^host\s+all\s+all\s+127\.0\.0\.1/32\s+trust' "$hba"; then
            # Trust local TCP connections (test machine only), ahead of the default rules.
            $SUDO sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
        fi
        $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null \
            || $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main reload \
            || die "could not start PostgreSQL $version"
        for _ in $(seq 1 60); do pg_ready && break; sleep 0.5; done
        pg_ready || die "PostgreSQL did not come up on 127.0.0.1:5432"
    fi
    command -v psql >/dev/null || apt_install postgresql-client
    psql -h 127.0.0.1 -U postgres -d postgres -tAc 'SELECT 1' >/dev/null \
        || die "cannot connect to PostgreSQL as postgres on 127.0.0.1 without a password (trust auth needed)"
    if [[ "$(psql -h 127.0.0.1 -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'test'")" != 1 ]]; then
        psql -h 127.0.0.1 -U postgres -d postgres -qc 'CREATE DATABASE test' || die "cannot create database test"
    fi
    echo "PostgreSQL: ready on 127.0.0.1:5432"
}

redis_ready() {
    if command -v redis-cli >/dev/null; then
        [[ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" == PONG ]]
    else
        port_open 6379
    fi
}

ensure_redis() {
    if ! redis_ready; then
        log "Redis is not answering on 127.0.0.1:6379: installing/starting it"
        command -v redis-server >/dev/null || apt_install redis-server
        redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null \
            || die "could not start redis-server"
        for _ in $(seq 1 40); do redis_ready && break; sleep 0.25; done
        redis_ready || die "Redis did not come up on 127.0.0.1:6379"
    fi
    echo "Redis: ready on 127.0.0.1:6379"
}

ensure_rust_components() {
    cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt || die "rustfmt missing"
    cargo clippy --version >/dev/null 2>&1 || rustup component add clippy || die "clippy missing"
}

start=$(date +%s)
log "Services"
ensure_postgres
ensure_redis
ensure_rust_components

log "cargo fmt --check"
cargo fmt --all -- --check || die "code is not formatted (run cargo fmt --all)"

log "Layering: api/ never names the store"
# Handlers extract, authenticate, make one domain call and respond; SQL is reached only through
# the domain modules (ARCHITECTURE.md, Invariants).
if grep -rnE 'svc\.store|crate::store|\bstore::|^\s*\.store\b' homeserver/src/api; then
    die "api/ names the store (above): move the call into a domain module"
fi

log "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings || die "clippy"

log "cargo build"
cargo build --workspace --all-targets || die "build"

export HEARTH_TEST_PG_URL="${HEARTH_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/test}"
export HEARTH_BIN="${HEARTH_BIN:-$PWD/target/debug/hearth}"
unset HS_URL
failures=()
gaps=$(grep -cvE '^\s*(#|$)' conformance-tests/known-gaps.txt 2>/dev/null || true)

for db in sqlite postgres; do
    log "Workspace tests (HEARTH_TEST_DB=$db)"
    if cargo nextest --version >/dev/null 2>&1; then
        HEARTH_TEST_DB=$db cargo nextest run --workspace --no-fail-fast --no-tests=pass \
            -E 'not (package(conformance-tests) & binary(suite))' || failures+=("workspace tests ($db)")
    else
        HEARTH_TEST_DB=$db cargo test --workspace --no-fail-fast --exclude conformance-tests || failures+=("workspace tests ($db)")
        HEARTH_TEST_DB=$db cargo test -p conformance-tests --lib --bins || failures+=("conformance-tests unit tests ($db)")
    fi
    log "Conformance suite against Hearth (HEARTH_TEST_DB=$db; ${gaps:-0} known gaps skipped)"
    HEARTH_TEST_DB=$db cargo run -q -p conformance-tests --bin conformance-report -- --server "hearth-$db" \
        || failures+=("conformance suite ($db)")
done

elapsed=$(( $(date +%s) - start ))
if [[ ${#failures[@]} -gt 0 ]]; then
    printf '\ntest.sh: FAILED after %ss: %s\n' "$elapsed" "${failures[*]}" >&2
    exit 1
fi
printf '\ntest.sh: all tests passed in %ss (%s conformance tests skipped as known gaps of Hearth, see conformance-tests/known-gaps.txt)\n' "$elapsed" "${gaps:-0}"
