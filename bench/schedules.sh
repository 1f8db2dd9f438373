#!/usr/bin/env bash
# Schedules, issue 17: `wasmgate run` with 10,000 schedule triggers against
# the same gateway with one, in one run. One function (the committed
# vending-heartbeat wasm) carries the schedules, each its own expression
# (rate(61 minutes), rate(62 minutes), ...: a schedule is named by its
# expression, so two alike on one function would be one cursor), none of
# which fires during the run. For each count: config check time, spawn to
# READY=1, spawn to every schedule's cursor in the database, time to go idle,
# then idle RSS, CPU per second, context switches per second and threads,
# sampled from /proc every second over IDLE_SECS; then the stop, and a
# restart on the same database. Embedded broker (its child process is
# reported apart). Writes bench/results/schedules-<stamp>.json.
#
#   bench/schedules.sh
#   COUNTS="1 1000 10000" IDLE_SECS=60 bench/schedules.sh
#
# Each schedule's task sleeps in steps of at most 60 s (to notice a clock
# set forward), so IDLE_SECS should cover whole minutes: the default 120 s
# sees each schedule wake twice.
#
# Needs: cargo, python3 (stdlib only). Settings (environment): COUNTS
# ("1 10000"), FUNCTIONS (1: how many functions share the schedules),
# IDLE_SECS (120), CARGO_TARGET_DIR (/var/tmp/wg-bench-target), WASMGATE (a
# prebuilt binary: skips the build), BUILT_FROM (what that binary was built
# from, for the results).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
COUNTS=${COUNTS:-"1 10000"}
FUNCTIONS=${FUNCTIONS:-1}
IDLE_SECS=${IDLE_SECS:-120}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/wg-bench-target}
WASM="$ROOT/functions/examples/wasm/vending_heartbeat.wasm"

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

# What the binary was built from, for the results: this checkout's commit
# (and how many tracked files differ from it) when built here; BUILT_FROM
# (or "unknown") for a prebuilt WASMGATE.
if [ -n "${WASMGATE:-}" ]; then
    BUILT_FROM=${BUILT_FROM:-"unknown (prebuilt $WASMGATE)"}
else
    BUILT_FROM="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    BUILT_FROM+=" + $(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null | wc -l) uncommitted tracked files"
fi
wasmgate_binary
# On disk, not tmpfs: each new schedule's first cursor is a commit (fsync).
scratch WORK /var/tmp/wasmgate-schedules.XXXXXX

mkdir -p "$RESULTS"
# shellcheck disable=SC2086 # COUNTS is a list
python3 "$ROOT/bench/schedules.py" --wasmgate "$WG" --wasm "$WASM" --work "$WORK" \
    --port "$(free_port)" --counts $COUNTS --functions "$FUNCTIONS" --idle-secs "$IDLE_SECS" \
    --built-from "$BUILT_FROM" \
    --out "$RESULTS/schedules-$STAMP.json"
