#!/usr/bin/env bash
# One run, one mosquitto, every system under the same load:
#   (a) the broker alone: the bench publishes telemetry and subscribes to it (echo)
#   (b) a raw Rust pass-through: `wasmgate bench passthrough` (subscribe,
#       republish, ack after the republish is acked; no function, no SQLite)
#   (c) `wasmgate run`, broker.mode = "external", with a function per workload
#   (d) Node-RED (from npm, in a scratch directory): mqtt in -> function node
#       doing the same computation -> mqtt out. Optional: skipped, with a
#       line saying so, when node or npm is missing or NODE_RED=0.
# Workloads (WORKLOADS, both by default):
#   enrich   telemetry-enrich: parse the device's JSON object, add three
#            fields, forward it upstream. The small JSON enrichment the
#            headline ratios (wasmgate, node-red) are about.
#   vending  vending-telemetry: running totals in KV (durable in wasmgate,
#            in memory in Node-RED), an alert when warm or low, a summary
#            upstream (wasmgate-vending, node-red-vending).
# each at QoS 0 and QoS 1, flat out and at a fixed rate. Each contestant's
# idle RSS is read from /proc before its load starts. Prints a table and the
# ratios wasmgate / pass-through and wasmgate / Node-RED, and writes every
# report as JSON and a plot as SVG to bench/results/.
#
#   bench/compare.sh                      20,000 messages; flat out and 2,000 msg/s
#   COUNT=5000 RATE=1000 QOS_LEVELS=1 WORKLOADS=enrich bench/compare.sh
#
# Needs: cargo, mosquitto and mosquitto_pub (apt-get install mosquitto
# mosquitto-clients), python3 (stdlib only). Optional: node and npm.
# Settings (environment): COUNT (20000), RATE (2000), QOS_LEVELS ("0 1"),
# WORKLOADS ("enrich vending"), DEVICES (100), SETTLE (10 s), IDLE (5 s
# before the idle RSS is read), CARGO_TARGET_DIR (/var/tmp/wg-bench-target),
# WASMGATE (a prebuilt binary: skips the build), MOSQUITTO (mosquitto
# binary), NODE_RED (0 skips it), NODE_RED_DIR (/var/tmp/wasmgate-node-red,
# where npm installs it).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
COUNT=${COUNT:-20000}
RATE=${RATE:-2000}
QOS_LEVELS=${QOS_LEVELS:-"0 1"}
WORKLOADS=${WORKLOADS:-"enrich vending"}
DEVICES=${DEVICES:-100}
SETTLE=${SETTLE:-10}
IDLE=${IDLE:-5}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/wg-bench-target}
NODE_RED=${NODE_RED:-1}
NODE_RED_DIR=${NODE_RED_DIR:-/var/tmp/wasmgate-node-red}
WASM="$ROOT/functions/examples/wasm/vending_telemetry.wasm"
ENRICH_WASM="$ROOT/functions/examples/wasm/telemetry_enrich.wasm"

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

# workload NAME QOS: sets SUFFIX (of its contestants' names: the enrichment
# is the headline pair), LABEL and FUNCTIONS (its [[functions]] table).
workload() {
    case "$1" in
        enrich) SUFFIX="" LABEL="wasmgate + telemetry-enrich" FUNCTIONS=$(enrich_function "$2") ;;
        vending) SUFFIX="-vending" LABEL="wasmgate + vending-telemetry" FUNCTIONS=$(vending_function "$2") ;;
        *) say "WORKLOADS: unknown workload '$1' (enrich, vending)"; exit 2 ;;
    esac
}
# Refuse a typo before minutes of runs, not after them.
for w in $WORKLOADS; do workload "$w" 1; done

wasmgate_binary
# On disk, not tmpfs: wasmgate's commits fsync, as on a gateway's SD card.
scratch WORK /var/tmp/wasmgate-compare.XXXXXX

# stop PID: SIGTERM, then wait for it.
stop() {
    kill -TERM "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# ---- Node-RED: installed once into NODE_RED_DIR, reused afterwards ----
node_red_install

# ---- mosquitto ----
# No limits: a gateway's session may hold a whole burst unacked.
start_mosquitto "$WORK" "max_queued_messages 0
max_inflight_messages 0"
say "mosquitto $($MOSQUITTO -h 2>&1 | head -1 | awk '{print $3}') on $BROKER (pid $MOSQ)"

# A persistent session left at the broker would queue every later run's
# messages: connect once with a clean session under its client id to drop it.
forget() {
    for id in "$@"; do
        mosquitto_pub -h 127.0.0.1 -p "$PORT" -i "$id" -t wasmgate/bench/forget -n -q 0 2>/dev/null ||
            say "mosquitto_pub not found; session $id stays at the broker"
    done
}

# idle_rss NAME PID...: VmRSS (KiB) of each PID after IDLE seconds of no load.
idle_rss() {
    local name=$1
    shift
    sleep "$IDLE"
    for pid in "$@"; do
        awk '/^VmRSS:/ {print $2}' "/proc/$pid/status"
    done > "$WORK/$name-idle.txt"
}

# bench NAME LABEL [bench flags...]: one flat-out run and one at RATE.
bench() {
    local name=$1 label=$2
    shift 2
    for mode in flat rate; do
        local rate=0
        [ "$mode" = rate ] && rate=$RATE
        local out="$WORK/$name-$mode.json"
        say "q$Q $label, $([ "$mode" = flat ] && echo 'flat out' || echo "$RATE msg/s"), load $(cut -d' ' -f1-3 /proc/loadavg)"
        cut -d' ' -f1 /proc/loadavg > "$WORK/$name-$mode.load"
        "$WG" bench --broker "$BROKER" --count "$COUNT" --rate "$rate" --qos "$Q" \
            --devices "$DEVICES" --settle "$SETTLE" --label "$label" --json "$@" > "$out"
    done
}

for Q in $QOS_LEVELS; do
    # (a) The broker alone.
    idle_rss "q$Q-echo" "$MOSQ"
    bench "q$Q-echo" "broker echo" --results 'vending/+/telemetry' --pid "$MOSQ"

    # (b) The pass-through.
    RUST_LOG=info "$WG" bench passthrough --broker "$BROKER" --qos "$Q" \
        --from 'vending/+/telemetry' --to 'telemetry/vending/{machine}' 2> "$WORK/q$Q-passthrough.log" &
    PT=$!
    PIDS+=("$PT")
    wait_for "$WORK/q$Q-passthrough.log" "pass-through running"
    idle_rss "q$Q-passthrough" "$PT"
    bench "q$Q-passthrough" "pass-through" --results 'telemetry/#' --pid "$PT" --pid "$MOSQ"
    kill -INT "$PT"
    wait "$PT" || true
    forget wasmgate-passthrough wasmgate-passthrough-out

    for w in $WORKLOADS; do
        workload "$w" "$Q"

        # (c) wasmgate, the settings of `wasmgate config init`.
        mkdir -p "$WORK/data-q$Q-$w"
        cat > "$WORK/gateway-q$Q-$w.toml" <<TOML
gateway_id = "bench"
data_dir = "$WORK/data-q$Q-$w"

[broker]
mode = "external"
host = "127.0.0.1"
port = $PORT

$FUNCTIONS
TOML
        "$WG" config check "$WORK/gateway-q$Q-$w.toml" >&2
        "$WG" run --config "$WORK/gateway-q$Q-$w.toml" 2> "$WORK/q$Q-wasmgate$SUFFIX.log" &
        GW=$!
        PIDS+=("$GW")
        wait_for "$WORK/q$Q-wasmgate$SUFFIX.log" "gateway running"
        idle_rss "q$Q-wasmgate$SUFFIX" "$GW"
        bench "q$Q-wasmgate$SUFFIX" "$LABEL" --results 'telemetry/#' --pid "$GW" --pid "$MOSQ"
        stop "$GW"
        forget "wasmgate-bench-$w" wasmgate-bench-out

        # (d) Node-RED: the same computation in a function node (vending's
        # state in flow context: memory, Node-RED's default), the output
        # published at QoS Q.
        if [ -n "$NR_JS" ]; then
            NR_USER="$WORK/node-red-q$Q-$w"
            mkdir -p "$NR_USER"
            python3 "$ROOT/bench/node_red_flow.py" --port "$PORT" --qos "$Q" --function "$w" > "$NR_USER/flows.json"
            node_red_settings "$NR_USER/settings.js" "$(free_port)" 'false'
            node "$NR_JS" --settings "$NR_USER/settings.js" --userDir "$NR_USER" > "$WORK/q$Q-node-red$SUFFIX.log" 2>&1 &
            NR=$!
            PIDS+=("$NR")
            wait_for "$WORK/q$Q-node-red$SUFFIX.log" "Connected to broker"
            # Node-RED does not log its SUBACK; the idle wait covers it.
            idle_rss "q$Q-node-red$SUFFIX" "$NR"
            bench "q$Q-node-red$SUFFIX" "Node-RED $NR_VERSION $w" --results 'telemetry/#' --pid "$NR" --pid "$MOSQ"
            stop "$NR"
        fi
    done
done

# Collect, print, compare, plot.
mkdir -p "$RESULTS"
# shellcheck disable=SC2086 # QOS_LEVELS is a list
python3 "$ROOT/bench/compare_report.py" --work "$WORK" --out "$RESULTS/compare-$STAMP.json" \
    --svg "$RESULTS/compare-$STAMP.svg" --count "$COUNT" --rate "$RATE" --qos $QOS_LEVELS \
    --wasmgate "$WG" --node-red "$NR_VERSION" \
    --mosquitto "$($MOSQUITTO -h 2>&1 | head -1 | awk '{print $3}')"
