#!/usr/bin/env bash
# Batching windows against single events, in one run on one mosquitto: the
# telemetry-enrich function (parse the device's JSON, add three fields,
# forward it) as deployed by default, one event per invocation, and with
# `batch = { size = 100, window_ms = 10 }`, under the same QoS 1 load:
# COUNT messages flat out and at RATE msg/s. Prints messages/s, latency and
# the gateway's CPU per message for both, and their ratio, and writes the
# reports to bench/results/batching-<stamp>.json.
#
#   bench/batching.sh
#   COUNT=20000 RATE=2000 SIZE=100 WINDOW_MS=10 bench/batching.sh
#
# Needs: cargo, mosquitto, python3. Settings (environment): COUNT (20000),
# RATE (2000), SIZE (100), WINDOW_MS (10), DEVICES (100), SETTLE (10 s),
# CARGO_TARGET_DIR (/var/tmp/wg-bench-target), WASMGATE (a prebuilt binary).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
COUNT=${COUNT:-20000}
RATE=${RATE:-2000}
SIZE=${SIZE:-100}
WINDOW_MS=${WINDOW_MS:-10}
DEVICES=${DEVICES:-100}
SETTLE=${SETTLE:-10}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/wg-bench-target}
ENRICH_WASM="$ROOT/functions/examples/wasm/telemetry_enrich.wasm"

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

wasmgate_binary
scratch WORK /var/tmp/wasmgate-batching.XXXXXX
start_mosquitto "$WORK" "max_queued_messages 0
max_inflight_messages 0"
say "mosquitto on $BROKER (pid $MOSQ)"

for variant in single batch; do
    batch=""
    [ "$variant" = batch ] && batch=", batch = { size = $SIZE, window_ms = $WINDOW_MS }"
    mkdir -p "$WORK/data-$variant"
    cat > "$WORK/gateway-$variant.toml" <<TOML
gateway_id = "bench"
data_dir = "$WORK/data-$variant"

[broker]
mode = "external"
host = "127.0.0.1"
port = $PORT

[[functions]]
name = "enrich-$variant"
wasm = "$ENRICH_WASM"
triggers = [{ mqtt = "vending/+/telemetry", qos = 1$batch }]

[functions.grants]
upstream = ["telemetry/#"]

[functions.config]
site = "bench"
TOML
    "$WG" config check "$WORK/gateway-$variant.toml" >&2
    "$WG" run --config "$WORK/gateway-$variant.toml" 2> "$WORK/$variant.log" &
    GW=$!
    PIDS+=("$GW")
    wait_for "$WORK/$variant.log" "gateway running"
    sleep 2
    for mode in flat rate; do
        rate=0
        [ "$mode" = rate ] && rate=$RATE
        say "$variant, $([ "$mode" = flat ] && echo 'flat out' || echo "$RATE msg/s"), load $(cut -d' ' -f1-3 /proc/loadavg)"
        "$WG" bench --broker "$BROKER" --count "$COUNT" --rate "$rate" --qos 1 \
            --devices "$DEVICES" --settle "$SETTLE" --label "$variant" --json \
            --results 'telemetry/#' --pid "$GW" > "$WORK/$variant-$mode.json"
    done
    kill -TERM "$GW" 2>/dev/null || true
    wait "$GW" 2>/dev/null || true
    grep "function totals" "$WORK/$variant.log" | tail -1 >&2 || true
    mosquitto_pub -h 127.0.0.1 -p "$PORT" -i "wasmgate-bench-enrich-$variant" -t wasmgate/bench/forget -n -q 0 2>/dev/null || true
done

mkdir -p "$RESULTS"
python3 - "$WORK" "$RESULTS/batching-$STAMP.json" "$COUNT" "$RATE" "$SIZE" "$WINDOW_MS" <<'PY'
import json, sys
work, out, count, rate, size, window = sys.argv[1:]
runs = {}
for variant in ("single", "batch"):
    for mode in ("flat", "rate"):
        with open(f"{work}/{variant}-{mode}.json") as f:
            runs[f"{variant}-{mode}"] = json.load(f)

def cpu_per_message(report):
    procs = report.get("processes") or []
    if not procs or not report.get("outputs"):
        return None
    return procs[0]["cpu_s"] / report["outputs"] * 1e6

print(f"\n{count} QoS 1 messages, telemetry-enrich; batch = {{ size = {size}, window_ms = {window} }}\n")
print(f"{'variant':<8} {'load':<10} {'out msg/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'lost':>5} {'dup':>5} {'CPU us/msg':>11}")
for key, report in runs.items():
    variant, mode = key.split("-")
    lat = report["latency"]
    print(f"{variant:<8} {('flat out' if mode == 'flat' else rate + '/s'):<10} "
          f"{report['out_rate']:>10.0f} {lat['p50_us'] / 1000:>8.2f} {lat['p99_us'] / 1000:>8.2f} "
          f"{report['lost']:>5} {report['duplicates']:>5} {cpu_per_message(report) or 0:>11.1f}")
flat_ratio = runs["batch-flat"]["out_rate"] / runs["single-flat"]["out_rate"]
print(f"\nflat out, batch / single: {flat_ratio:.2f}x messages/s")
for mode in ("flat", "rate"):
    a, b = cpu_per_message(runs[f"batch-{mode}"]), cpu_per_message(runs[f"single-{mode}"])
    if a and b:
        print(f"{'flat out' if mode == 'flat' else rate + '/s'}, batch / single: {a / b:.2f}x gateway CPU per message")
json.dump({"count": int(count), "rate": int(rate), "size": int(size), "window_ms": int(window), "runs": runs}, open(out, "w"), indent=1)
print(f"\nreports: {out}")
PY
