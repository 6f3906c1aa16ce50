#!/usr/bin/env bash
# Start a local Prefect server and a process worker, and deploy prefect.yaml: what the UI,
# manual deployment runs and schedules need (flows run in-process without any of this).
#
# Idempotent: when the server and worker it recorded are still alive it only says so. Each
# process gets its own session (setsid), so scripts/prefect_down.sh can stop exactly it and its
# children, by the PIDs recorded in .prefect/pids. Port: PREFECT_PORT (default 4200).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BIN="$ROOT/.venv/bin"
RUN_DIR="$ROOT/.prefect"
PIDS="$RUN_DIR/pids"
POOL=multitag-process
PORT="${PREFECT_PORT:-4200}"
API="http://127.0.0.1:$PORT/api"

# The same defaults as the Makefile, so the script also works when run directly.
export PREFECT_HOME="${PREFECT_HOME:-$RUN_DIR}"
export KERAS_HOME="${KERAS_HOME:-$ROOT/.keras}"
export MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-sqlite:///$ROOT/mlflow.db}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
export PREFECT_API_URL="$API"
export PREFECT_CLI_PROMPT=false
export PREFECT_SERVER_ANALYTICS_ENABLED="${PREFECT_SERVER_ANALYTICS_ENABLED:-false}"
# Read by prefect.yaml: the pull step (at run time, in the worker's flow runs) and the schedules.
export MULTITAG_PROJECT_DIR="$ROOT"

say() { echo "prefect_up: $*"; }

# Alive, and still the Prefect process we started (not a recycled PID).
ours() { ps -p "$1" -o args= 2>/dev/null | grep -q prefect; }

healthy() {
    "$BIN/python" -c "import sys, urllib.request; sys.exit(urllib.request.urlopen('$API/health', timeout=2).read().strip() != b'true')" 2>/dev/null
}

pool_ready() {
    "$BIN/python" -c "import json, sys, urllib.request; sys.exit(json.load(urllib.request.urlopen('$API/work_pools/$POOL', timeout=2)).get('status') != 'READY')" 2>/dev/null
}

how_to_use() {
    cat <<EOF
prefect_up: ready.
  UI:      http://127.0.0.1:$PORT
  trigger: PREFECT_API_URL=$API $BIN/prefect deployment run training-pipeline/training-pipeline
           (tiny run: add -p epochs=1 -p 'architectures=["small_cnn"]')
  logs:    $RUN_DIR/server.log, $RUN_DIR/worker.log
  stop:    make prefect-down
EOF
}

# Start "$@" in the background in its own session, logging to $RUN_DIR/<name>.log; record its PID.
start() {
    local name=$1
    shift
    if command -v setsid >/dev/null; then
        setsid "$@" >"$RUN_DIR/$name.log" 2>&1 </dev/null &
    else
        "$@" >"$RUN_DIR/$name.log" 2>&1 </dev/null &
    fi
    echo "$name $!" >>"$PIDS"
    say "$name started (pid $!), log $RUN_DIR/$name.log"
}

# Wait until "$2" succeeds; fail when the process named $1 exits or after $3 seconds.
wait_for() {
    local name=$1 check=$2 seconds=$3 pid
    pid=$(awk -v n="$name" '$1 == n {print $2}' "$PIDS")
    for _ in $(seq "$seconds"); do
        "$check" && return 0
        ours "$pid" || { say "the $name exited; last lines of $RUN_DIR/$name.log:"; tail -n 30 "$RUN_DIR/$name.log"; return 1; }
        sleep 1
    done
    say "the $name was not ready after ${seconds}s; last lines of $RUN_DIR/$name.log:"
    tail -n 30 "$RUN_DIR/$name.log"
    return 1
}

[ -x "$BIN/prefect" ] || { say "$BIN/prefect not found: run \`make install\` first"; exit 1; }
mkdir -p "$RUN_DIR"

if [ -s "$PIDS" ]; then
    all_alive=true
    while read -r _ pid; do ours "$pid" || all_alive=false; done <"$PIDS"
    if $all_alive && healthy; then
        say "already running ($(tr '\n' ' ' <"$PIDS"))"
        how_to_use
        exit 0
    fi
    say "a previous start is only partly alive; stopping what is left of it first"
    bash "$ROOT/scripts/prefect_down.sh"
fi

if healthy; then
    say "something not started by this script already serves $API; stop it, or pick another port: PREFECT_PORT=4201 make prefect-up"
    exit 1
fi

# On any failure below, stop whatever this run started: no half-started stack left behind.
ready=false
trap '$ready || { say "failed; stopping what it started"; bash "$ROOT/scripts/prefect_down.sh"; }' EXIT

: >"$PIDS"
start server "$BIN/prefect" server start --host 127.0.0.1 --port "$PORT"
wait_for server healthy 120
say "server healthy at $API"

# Create the pool unless it exists (a worker may create it too: inspect again before failing).
"$BIN/prefect" work-pool inspect "$POOL" >/dev/null 2>&1 \
    || "$BIN/prefect" work-pool create "$POOL" --type process >/dev/null \
    || "$BIN/prefect" work-pool inspect "$POOL" >/dev/null
# One flow run at a time on this pool: the deployments share one workspace.
"$BIN/prefect" work-pool set-concurrency-limit "$POOL" 1 >/dev/null
say "work pool $POOL (process) exists"

export MULTITAG_RETRAIN_TIMEZONE
MULTITAG_RETRAIN_TIMEZONE="$("$BIN/python" -c 'from multitag.config import load_params; print(load_params("params.yaml").retrain.timezone)')"
"$BIN/python" -m flows.deploy
say "deployed prefect.yaml"

start worker "$BIN/prefect" worker start --pool "$POOL"
wait_for worker pool_ready 90
say "worker polling $POOL"

ready=true
how_to_use
