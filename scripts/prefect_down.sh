#!/usr/bin/env bash
# Stop the Prefect server and worker that scripts/prefect_up.sh started: exactly the PIDs it
# recorded in .prefect/pids (and their process groups, as it started each in its own session),
# never processes found by name. SIGTERM first, SIGKILL after a grace period.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PIDS="$ROOT/.prefect/pids"
GRACE_SECONDS=20

say() { echo "prefect_down: $*"; }

# Alive, and still the Prefect process we started (not a recycled PID).
ours() { ps -p "$1" -o args= 2>/dev/null | grep -q prefect; }

# A process group led by $1 (started with setsid) with a Prefect process still in it; the
# leader may already be gone while its children (the server's, the worker's flow runs) are not.
our_group() { ps -eo pgid=,args= | awk -v g="$1" '$1 == g' | grep -q prefect; }

stop() {
    local name=$1 pid=$2 target
    if our_group "$pid"; then
        target="-$pid"
    elif ours "$pid"; then
        target="$pid"
    else
        say "$name (pid $pid) is not running"
        return 0
    fi
    kill -TERM -- "$target" 2>/dev/null || true
    for _ in $(seq $((GRACE_SECONDS * 5))); do
        kill -0 -- "$target" 2>/dev/null || { say "$name (pid $pid) stopped"; return 0; }
        sleep 0.2
    done
    kill -KILL -- "$target" 2>/dev/null || true
    say "$name (pid $pid) killed after ${GRACE_SECONDS}s"
}

if [ ! -s "$PIDS" ]; then
    say "nothing to stop ($PIDS is absent)"
    rm -f "$PIDS"
    exit 0
fi

# The worker first (it is recorded last), so it does not poll a server that is going away.
tac "$PIDS" | while read -r name pid; do
    if [ -n "${pid:-}" ]; then stop "$name" "$pid"; fi
done
rm -f "$PIDS"
