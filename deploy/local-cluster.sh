#!/usr/bin/env bash
# `make cluster`: a vpiska cluster on this machine (docs/cluster.md).
#
# 1. Debian's redis-server, installed with apt when missing (with sudo when not root).
# 2. A Redis on 127.0.0.1:$REDIS_PORT: the one that answers there already (used, and left
#    running), else one started here without persistence, in the background.
# 3. $WORKERS vpiska nodes (default: one per core) on $SERVER_PORT (default 5000), sharing that
#    Redis and $DATA_DIR (default ./data): `WORKERS=N REDIS_URL=… python -m vpiska`.
# Ctrl-C stops the nodes (they drain, as on SIGTERM); once they have exited, the Redis started
# here is shut down.
set -euo pipefail

PY=${PY:-.venv/bin/python}
WORKERS=${WORKERS:-$(nproc)}
REDIS_PORT=${REDIS_PORT:-6379}
DATA_DIR=${DATA_DIR:-data}
REDIS_URL=redis://127.0.0.1:$REDIS_PORT
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)

redis() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }

if ! command -v redis-server >/dev/null; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server
fi

if redis ping >/dev/null 2>&1; then
    echo "cluster: using the Redis that answers at $REDIS_URL (it is left running)"
else
    mkdir -p "$DATA_DIR"
    log=$(realpath "$DATA_DIR")/redis.log
    # Daemonized, so it is in a session of its own: Ctrl-C reaches the nodes, not Redis.
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
        --daemonize yes --pidfile "$(realpath "$DATA_DIR")/redis.pid" --logfile "$log"
    trap 'redis shutdown nosave >/dev/null 2>&1 || true; echo "cluster: Redis stopped"' EXIT
    for _ in $(seq 100); do
        redis ping >/dev/null 2>&1 && break
        sleep 0.1
    done
    redis ping >/dev/null || { echo "cluster: Redis did not start; see $log" >&2; exit 1; }
    echo "cluster: Redis started at $REDIS_URL (no persistence; log: $log)"
fi

# The terminal sends Ctrl-C to the nodes and to this script alike: the script waits for the
# nodes to drain and exit instead of dying first, so Redis outlives them (trap above).
trap : INT TERM
WORKERS=$WORKERS REDIS_URL=$REDIS_URL DATA_DIR=$DATA_DIR "$PY" -m vpiska
