#!/usr/bin/env bash
# HTTP routes, issue 17: one run, the same load on each of
#   (a) the floor: `wasmgate bench http-floor`, a minimal axum handler
#       answering /hello as hello-http does, with no function (a counter in
#       memory)
#   (b) `wasmgate run` serving functions/examples/hello-http on
#       `ANY /hello`, the defaults of `wasmgate config init` (embedded
#       broker, concurrency 1, every greeting's `hits` committed to SQLite
#       before the answer); the broker's child process is sampled too
#   (c) Node-RED (from npm, in a scratch directory): http in -> function
#       node doing what hello-http does (hits in flow context, in memory) ->
#       http response. Optional: skipped, with a line saying so, when node or
#       npm is missing or NODE_RED=0.
# Each is loaded by `wasmgate bench http` (keep-alive connections, one
# request in flight on each, flat out) with GET /hello?name=Ada, after a
# warm-up; its idle RSS is read from /proc before the load and its CPU and
# RSS sampled during it. Prints a table and the ratios wasmgate / Node-RED
# and wasmgate / floor, and writes every report as JSON to
# bench/results/http-<timestamp>.json.
#
#   bench/http.sh                                 32 connections, 20 s each, one round
#   DURATION=10 CONNECTIONS=64 ROUNDS=3 bench/http.sh
#
# Needs: cargo, python3 (stdlib only). Optional: node and npm.
# Settings (environment): DURATION (20 s), WARMUP (3 s), CONNECTIONS (32),
# ROUNDS (1: each round loads the contestants one after the other, in the
# same order), TARGET (/hello?name=Ada), CONTESTANTS ("floor wasmgate
# node-red"; add wasmgate-store for a second wasmgate whose [store] section
# holds WASMGATE_STORE, default "group_commit_ms = 0": what the group
# commit's wait costs), IDLE (5 s before the idle RSS is read), CARGO_TARGET_DIR
# (/var/tmp/wg-bench-target), WASMGATE (a prebuilt binary: skips the build),
# BUILT_FROM (what a prebuilt WASMGATE was built from, for the results),
# NODE_RED (0 skips it), NODE_RED_DIR (/var/tmp/wasmgate-node-red, where npm
# installs it).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DURATION=${DURATION:-20}
WARMUP=${WARMUP:-3}
CONNECTIONS=${CONNECTIONS:-32}
ROUNDS=${ROUNDS:-1}
TARGET=${TARGET:-"/hello?name=Ada"}
CONTESTANTS=${CONTESTANTS:-"floor wasmgate node-red"}
WASMGATE_STORE=${WASMGATE_STORE:-"group_commit_ms = 0"}
IDLE=${IDLE:-5}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/wg-bench-target}
NODE_RED=${NODE_RED:-1}
NODE_RED_DIR=${NODE_RED_DIR:-/var/tmp/wasmgate-node-red}
HELLO_WASM="$ROOT/functions/examples/wasm/hello_http.wasm"

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

for c in $CONTESTANTS; do
    case "$c" in
        floor | wasmgate | wasmgate-store | node-red) ;;
        *) say "CONTESTANTS: unknown contestant '$c' (floor, wasmgate, wasmgate-store, node-red)"; exit 2 ;;
    esac
done

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
# On disk, not tmpfs: wasmgate's commits fsync, as on a gateway's SD card.
scratch WORK /var/tmp/wasmgate-http.XXXXXX

# stop PID: SIGTERM, then wait for it.
stop() {
    kill -TERM "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# wait_http URL: until a GET of URL answers 200 (30 s at most).
wait_http() {
    python3 - "$1" <<'PY'
import sys, time, urllib.request
deadline = time.time() + 30
last = None
while True:
    try:
        with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
            if r.status == 200:
                break
            last = f"status {r.status}"
    except Exception as e:
        last = e
    if time.time() > deadline:
        sys.exit(f"no 200 from {sys.argv[1]} within 30 s: {last}")
    time.sleep(0.1)
PY
}

# idle_rss NAME PID...: VmRSS (KiB) of each PID, a line each, after IDLE
# seconds of no load.
idle_rss() {
    local name=$1
    shift
    sleep "$IDLE"
    for pid in "$@"; do
        awk '/^VmRSS:/ {print $2}' "/proc/$pid/status"
    done > "$WORK/$name-idle.txt"
}

# load NAME LABEL PORT PID...: the bench's run against 127.0.0.1:PORT,
# sampling each PID (the server first).
load() {
    local name=$1 label=$2 port=$3
    shift 3
    local pid_flags=()
    for pid in "$@"; do pid_flags+=(--pid "$pid"); done
    say "$label: $CONNECTIONS connections, ${WARMUP} s warm-up + ${DURATION} s, load $(cut -d' ' -f1-3 /proc/loadavg)"
    cut -d' ' -f1 /proc/loadavg > "$WORK/$name.load"
    "$WG" bench http "http://127.0.0.1:$port$TARGET" --connections "$CONNECTIONS" \
        --duration "$DURATION" --warmup "$WARMUP" "${pid_flags[@]}" --label "$label" --json > "$WORK/$name.json"
    python3 "$ROOT/bench/http_report.py" --line "$WORK/$name.json" >&2
}

# run_wasmgate NAME LABEL STORE-LINES: `wasmgate run` serving hello-http on
# ANY /hello, the store's settings the defaults plus STORE-LINES; loaded, then
# stopped (its "store totals" line kept: transactions and commits).
run_wasmgate() {
    local name=$1 label=$2 store=$3
    HTTP_PORT=$(free_port)
    mkdir -p "$WORK/$name-data"
    cat > "$WORK/$name.toml" <<TOML
gateway_id = "bench-http"
data_dir = "$WORK/$name-data"

[broker]
listen = "127.0.0.1:$(free_port)"

[http]
listen = "127.0.0.1:$HTTP_PORT"

[store]
$store

[[functions]]
name = "hello"
wasm = "$HELLO_WASM"
triggers = [{ http = "ANY /hello" }]
TOML
    "$WG" config check "$WORK/$name.toml" >&2
    "$WG" run --config "$WORK/$name.toml" 2> "$WORK/$name.log" &
    GW=$!
    PIDS+=("$GW")
    wait_for "$WORK/$name.log" "gateway running"
    wait_http "http://127.0.0.1:$HTTP_PORT$TARGET"
    # The embedded broker is a child process (idle here): sampled too.
    BROKER_PID=$(pgrep -P "$GW" | head -1 || true)
    idle_rss "$name" "$GW" ${BROKER_PID:+"$BROKER_PID"}
    load "$name" "$label" "$HTTP_PORT" "$GW" ${BROKER_PID:+"$BROKER_PID"}
    stop "$GW"
    grep "store totals" "$WORK/$name.log" | tail -1 > "$WORK/$name.store" || true
}

# ---- Node-RED: installed once into NODE_RED_DIR, reused afterwards ----
NR_JS=""
NR_VERSION=""
case " $CONTESTANTS " in *" node-red "*) node_red_install ;; esac

for round in $(seq "$ROUNDS"); do
    R="r$round"
    for c in $CONTESTANTS; do
        case "$c" in
            floor)
                HTTP_PORT=$(free_port)
                "$WG" bench http-floor --listen "127.0.0.1:$HTTP_PORT" 2> "$WORK/$R-floor.log" &
                FL=$!
                PIDS+=("$FL")
                wait_http "http://127.0.0.1:$HTTP_PORT$TARGET"
                idle_rss "$R-floor" "$FL"
                load "$R-floor" "floor (axum, no function)" "$HTTP_PORT" "$FL"
                stop "$FL"
                ;;
            wasmgate) run_wasmgate "$R-wasmgate" "wasmgate + hello-http" "" ;;
            wasmgate-store) run_wasmgate "$R-wasmgate-store" "wasmgate + hello-http, [store] $WASMGATE_STORE" "$WASMGATE_STORE" ;;
            node-red)
                [ -n "$NR_JS" ] || continue
                HTTP_PORT=$(free_port)
                NR_USER="$WORK/$R-node-red"
                mkdir -p "$NR_USER"
                python3 "$ROOT/bench/node_red_http_flow.py" --url /hello > "$NR_USER/flows.json"
                node_red_settings "$NR_USER/settings.js" "$HTTP_PORT" '"/"'
                node "$NR_JS" --settings "$NR_USER/settings.js" --userDir "$NR_USER" > "$WORK/$R-node-red.log" 2>&1 &
                NR=$!
                PIDS+=("$NR")
                wait_for "$WORK/$R-node-red.log" "Started flows"
                wait_http "http://127.0.0.1:$HTTP_PORT$TARGET"
                idle_rss "$R-node-red" "$NR"
                load "$R-node-red" "Node-RED $NR_VERSION" "$HTTP_PORT" "$NR"
                stop "$NR"
                ;;
        esac
    done
done

mkdir -p "$RESULTS"
python3 "$ROOT/bench/http_report.py" --work "$WORK" --out "$RESULTS/http-$STAMP.json" \
    --rounds "$ROUNDS" --wasmgate "$WG" --node-red "$NR_VERSION" --built-from "$BUILT_FROM" \
    --settings "DURATION=$DURATION WARMUP=$WARMUP CONNECTIONS=$CONNECTIONS ROUNDS=$ROUNDS TARGET=$TARGET CONTESTANTS=$CONTESTANTS WASMGATE_STORE=$WASMGATE_STORE"
