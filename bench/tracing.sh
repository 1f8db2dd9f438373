#!/usr/bin/env bash
# What tracing costs, in one run on one mosquitto: telemetry-enrich under
# RATE QoS 1 msg/s with [tracing] off and on, alternated ROUNDS times (each
# run on a fresh gateway), the spans going to the OTLP receiver of
# tests/support/otlp_receiver.py. Prints the gateway's CPU per message and
# latency for each run, the on/off ratio of the medians, and the spans the
# receiver took; then the RSS of gateways of 1 function, 100 functions and
# 100 functions with two versions each (after one event per version and a
# scrape: every per-function and per-version metric exists). Writes
# bench/results/tracing-<stamp>.json.
#
#   WASMGATE=target/release/wasmgate bench/tracing.sh
#
# Needs: cargo, mosquitto, python3 with opentelemetry-proto (.ci/setup).
# Settings (environment): COUNT (20000), RATE (2000), ROUNDS (3),
# DEVICES (100), SETTLE (10 s), CARGO_TARGET_DIR, WASMGATE.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
COUNT=${COUNT:-20000}
RATE=${RATE:-2000}
ROUNDS=${ROUNDS:-3}
DEVICES=${DEVICES:-100}
SETTLE=${SETTLE:-10}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/wg-bench-target}
ENRICH_WASM="$ROOT/functions/examples/wasm/telemetry_enrich.wasm"

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

wasmgate_binary
scratch WORK /var/tmp/wasmgate-tracing.XXXXXX
start_mosquitto "$WORK" "max_queued_messages 0
max_inflight_messages 0"
say "mosquitto on $BROKER (pid $MOSQ)"

OTLP_PORT=$(free_port)
python3 "$ROOT/tests/support/otlp_receiver.py" "$OTLP_PORT" > "$WORK/spans.jsonl" &
PIDS+=("$!")
wait_for "$WORK/spans.jsonl" "listening"

# config NAME TRACING(0|1): a gateway config of its own data dir.
config() {
    local name=$1 traced=$2
    mkdir -p "$WORK/data-$name"
    {
        printf 'gateway_id = "bench"\ndata_dir = "%s/data-%s"\n' "$WORK" "$name"
        printf '[broker]\nmode = "external"\nhost = "127.0.0.1"\nport = %s\n' "$PORT"
        if [ "$traced" = 1 ]; then
            printf '[tracing]\nendpoint = "http://127.0.0.1:%s/v1/traces"\n' "$OTLP_PORT"
        fi
        printf '[[functions]]\nname = "enrich"\nwasm = "%s"\n' "$ENRICH_WASM"
        printf 'triggers = [{ mqtt = "vending/+/telemetry", qos = 1 }]\n'
        printf '[functions.grants]\nupstream = ["telemetry/#"]\n[functions.config]\nsite = "bench"\n'
    } > "$WORK/$name.toml"
}

runs=()
for round in $(seq 1 "$ROUNDS"); do
    for mode in off on; do
        name="$mode-$round"
        config "$name" "$([ "$mode" = on ] && echo 1 || echo 0)"
        "$WG" run --config "$WORK/$name.toml" 2> "$WORK/$name.log" &
        GW=$!
        PIDS+=("$GW")
        wait_for "$WORK/$name.log" "gateway running"
        sleep 2
        say "$name, $RATE msg/s, load $(cut -d' ' -f1-3 /proc/loadavg)"
        "$WG" bench --broker "$BROKER" --count "$COUNT" --rate "$RATE" --qos 1 \
            --devices "$DEVICES" --settle "$SETTLE" --label "$name" --json \
            --results 'telemetry/#' --pid "$GW" > "$WORK/$name.json"
        kill -TERM "$GW" 2>/dev/null || true
        wait "$GW" 2>/dev/null || true
        runs+=("$name")
    done
done

# rss PID: the process's resident set, in KiB.
rss() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }

# A gateway of N functions (one module, one topic each), idle; with
# VERSIONS=2 each gets a second version deployed. One event per function
# (the mirror of telemetry-enrich's input) and a scrape, then its RSS.
footprint() {
    local n=$1 versions=$2 name="fp-$1-$2" metrics
    metrics=$(free_port)
    mkdir -p "$WORK/data-$name"
    {
        printf 'gateway_id = "bench"\ndata_dir = "%s/data-%s"\n' "$WORK" "$name"
        printf '[broker]\nmode = "external"\nhost = "127.0.0.1"\nport = %s\n' "$PORT"
        printf '[metrics]\nlisten = "127.0.0.1:%s"\n' "$metrics"
        for i in $(seq 1 "$n"); do
            printf '[[functions]]\nname = "f%s"\nwasm = "%s"\ntriggers = [{ mqtt = "many/%s/telemetry" }]\n[functions.grants]\nupstream = ["telemetry/#"]\n' "$i" "$ENRICH_WASM" "$i"
        done
    } > "$WORK/$name.toml"
    "$WG" run --config "$WORK/$name.toml" 2> "$WORK/$name.log" &
    GW=$!
    PIDS+=("$GW")
    wait_for "$WORK/$name.log" "gateway running"
    if [ "$versions" = 2 ]; then
        # A module that differs by one custom section: a version of its own.
        python3 - "$ENRICH_WASM" "$WORK/v2.wasm" <<'PY'
import sys
wasm = open(sys.argv[1], "rb").read()
name, body = b"v2", b"second"
section = bytes([len(name)]) + name + body
open(sys.argv[2], "wb").write(wasm + bytes([0, len(section)]) + section)
PY
        for i in $(seq 1 "$n"); do
            "$WG" deploy "f$i" "$WORK/v2.wasm" --config "$WORK/$name.toml" > /dev/null
        done
    fi
    for i in $(seq 1 "$n"); do
        mosquitto_pub -p "$PORT" -q 1 -t "many/$i/telemetry" -m '{"device":"d","temp_c":5.0}'
    done
    sleep 3
    python3 -c "import urllib.request,sys; sys.stdout.write(str(len(urllib.request.urlopen('http://127.0.0.1:$metrics/metrics').read())))" > "$WORK/$name.scrape"
    rss "$GW" > "$WORK/$name.rss"
    kill -TERM "$GW" 2>/dev/null || true
    wait "$GW" 2>/dev/null || true
}
footprint 1 1
footprint 100 1
footprint 100 2

mkdir -p "$RESULTS"
python3 - "$WORK" "$RESULTS/tracing-$STAMP.json" "$COUNT" "$RATE" "${runs[@]}" <<'PY'
import json, statistics, sys
work, out, count, rate, *names = sys.argv[1:]
count, rate = int(count), int(rate)
runs = {r: json.load(open(f"{work}/{r}.json")) for r in names}

def cpu_per_message(report):
    procs = report.get("processes") or []
    if not procs or not report.get("outputs"):
        return None
    return procs[0]["cpu_s"] / report["outputs"] * 1e6

print(f"\n{count} QoS 1 messages at {rate}/s, telemetry-enrich, [tracing] off and on\n")
print(f"{'run':<8} {'out msg/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'lost':>5} {'dup':>5} {'CPU us/msg':>11}")
for name, report in runs.items():
    lat = report["latency"]
    print(f"{name:<8} {report['out_rate']:>10.0f} {lat['p50_us'] / 1000:>8.2f} {lat['p99_us'] / 1000:>8.2f} "
          f"{report['lost']:>5} {report['duplicates']:>5} {cpu_per_message(report) or 0:>11.1f}")
cpu = {m: [cpu_per_message(r) for n, r in runs.items() if n.startswith(m + "-")] for m in ("off", "on")}
medians = {m: statistics.median([c for c in v if c]) for m, v in cpu.items()}
ratio = medians["on"] / medians["off"]
spans = sum(1 for line in open(f"{work}/spans.jsonl") if '"span_id"' in line)
print(f"\nmedian CPU per message: off {medians['off']:.1f} us, on {medians['on']:.1f} us: on / off {ratio:.3f}x")
print(f"spans the receiver decoded: {spans} (of {count * len(cpu['on'])} traced messages)")
footprints = {}
for n, v in (("1", "1"), ("100", "1"), ("100", "2")):
    name = f"fp-{n}-{v}"
    footprints[name] = {"rss_kib": int(open(f"{work}/{name}.rss").read()),
                        "scrape_bytes": int(open(f"{work}/{name}.scrape").read())}
    print(f"{n} function(s) x {v} version(s): RSS {footprints[name]['rss_kib']} KiB, /metrics {footprints[name]['scrape_bytes']} bytes")
json.dump({"count": int(count), "rate": int(rate), "runs": runs, "cpu_median_us": medians,
           "cpu_ratio": ratio, "spans_received": spans, "footprints": footprints},
          open(out, "w"), indent=1)
print(f"\nreports: {out}")
PY
