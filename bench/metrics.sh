#!/usr/bin/env bash
# What /metrics costs, in one run on one mosquitto: telemetry-enrich under
# RATE QoS 1 msg/s, once with nothing scraping and once with a scraper
# taking /metrics every SCRAPE_MS (ten times Prometheus's usual rate),
# each scrape timed; then a gateway of 100 functions, scraped idle. Prints
# the gateway's CPU per message and latency for both runs and their ratio,
# the scrapes' time and size, and writes bench/results/metrics-<stamp>.json.
#
#   bench/metrics.sh
#   COUNT=20000 RATE=2000 SCRAPE_MS=100 bench/metrics.sh
#
# Needs: cargo, mosquitto, python3. Settings (environment): COUNT (20000),
# RATE (2000), SCRAPE_MS (100), DEVICES (100), SETTLE (10 s),
# CARGO_TARGET_DIR (/var/tmp/wg-bench-target), WASMGATE (a prebuilt binary).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
COUNT=${COUNT:-20000}
RATE=${RATE:-2000}
SCRAPE_MS=${SCRAPE_MS:-100}
DEVICES=${DEVICES:-100}
SETTLE=${SETTLE:-10}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/wg-bench-target}
ENRICH_WASM="$ROOT/functions/examples/wasm/telemetry_enrich.wasm"

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

wasmgate_binary
scratch WORK /var/tmp/wasmgate-metrics.XXXXXX
start_mosquitto "$WORK" "max_queued_messages 0
max_inflight_messages 0"
say "mosquitto on $BROKER (pid $MOSQ)"

# Times one scrape of /metrics at $1 (host:port) every $2 ms until the file
# $3 exists; one line per scrape: milliseconds, bytes.
cat > "$WORK/scraper.py" <<'PY'
import http.client, os, sys, time
host, port = sys.argv[1].split(":")
every, stop, out = float(sys.argv[2]) / 1000, sys.argv[3], open(sys.argv[4], "w")
while not os.path.exists(stop):
    t0 = time.perf_counter()
    c = http.client.HTTPConnection(host, int(port), timeout=10)
    c.request("GET", "/metrics")
    body = c.getresponse().read()
    c.close()
    out.write(f"{(time.perf_counter() - t0) * 1000:.3f} {len(body)}\n")
    out.flush()
    time.sleep(every)
PY

METRICS_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$WORK/data"
cat > "$WORK/gateway.toml" <<TOML
gateway_id = "bench"
data_dir = "$WORK/data"

[broker]
mode = "external"
host = "127.0.0.1"
port = $PORT

[metrics]
listen = "127.0.0.1:$METRICS_PORT"

[[functions]]
name = "enrich"
wasm = "$ENRICH_WASM"
triggers = [{ mqtt = "vending/+/telemetry", qos = 1 }]

[functions.grants]
upstream = ["telemetry/#"]

[functions.config]
site = "bench"
TOML
"$WG" run --config "$WORK/gateway.toml" 2> "$WORK/gateway.log" &
GW=$!
PIDS+=("$GW")
wait_for "$WORK/gateway.log" "gateway running"
sleep 2
for run in quiet scraped; do
    scraper=""
    if [ "$run" = scraped ]; then
        python3 "$WORK/scraper.py" "127.0.0.1:$METRICS_PORT" "$SCRAPE_MS" "$WORK/stop" "$WORK/scrapes.txt" &
        scraper=$!
        PIDS+=("$scraper")
    fi
    say "$run, $RATE msg/s, load $(cut -d' ' -f1-3 /proc/loadavg)"
    "$WG" bench --broker "$BROKER" --count "$COUNT" --rate "$RATE" --qos 1 \
        --devices "$DEVICES" --settle "$SETTLE" --label "$run" --json \
        --results 'telemetry/#' --pid "$GW" > "$WORK/$run.json"
    if [ -n "$scraper" ]; then
        touch "$WORK/stop"
        wait "$scraper" 2>/dev/null || true
    fi
done
kill -TERM "$GW" 2>/dev/null || true
wait "$GW" 2>/dev/null || true

# 100 functions (one module, one topic each), idle: the exposition's size
# and how long a scrape takes.
mkdir -p "$WORK/data-100"
{
    printf 'gateway_id = "bench100"\ndata_dir = "%s/data-100"\n[broker]\nmode = "external"\nhost = "127.0.0.1"\nport = %s\n[metrics]\nlisten = "127.0.0.1:%s"\n' "$WORK" "$PORT" "$METRICS_PORT"
    for i in $(seq 1 100); do
        printf '[[functions]]\nname = "f%s"\nwasm = "%s"\ntriggers = [{ mqtt = "many/%s/telemetry" }]\n[functions.grants]\nupstream = ["telemetry/#"]\n' "$i" "$ENRICH_WASM" "$i"
    done
} > "$WORK/gateway-100.toml"
"$WG" run --config "$WORK/gateway-100.toml" 2> "$WORK/gateway-100.log" &
GW=$!
PIDS+=("$GW")
wait_for "$WORK/gateway-100.log" "gateway running"
rm -f "$WORK/stop"
python3 "$WORK/scraper.py" "127.0.0.1:$METRICS_PORT" 50 "$WORK/stop" "$WORK/scrapes-100.txt" &
scraper=$!
sleep 10
touch "$WORK/stop"
wait "$scraper" 2>/dev/null || true
kill -TERM "$GW" 2>/dev/null || true
wait "$GW" 2>/dev/null || true

mkdir -p "$RESULTS"
python3 - "$WORK" "$RESULTS/metrics-$STAMP.json" "$COUNT" "$RATE" "$SCRAPE_MS" <<'PY'
import json, sys
work, out, count, rate, every = sys.argv[1:]
runs = {r: json.load(open(f"{work}/{r}.json")) for r in ("quiet", "scraped")}

def cpu_per_message(report):
    procs = report.get("processes") or []
    if not procs or not report.get("outputs"):
        return None
    return procs[0]["cpu_s"] / report["outputs"] * 1e6

def scrapes(path):
    rows = [tuple(map(float, l.split())) for l in open(path) if l.strip()]
    ms = sorted(r[0] for r in rows)
    pick = lambda p: ms[min(len(ms) - 1, int(p * len(ms)))]
    return {"scrapes": len(ms), "p50_ms": pick(0.5), "p99_ms": pick(0.99), "max_ms": ms[-1],
            "bytes": int(rows[-1][1])}

print(f"\n{count} QoS 1 messages at {rate}/s, telemetry-enrich; the scraped run takes /metrics every {every} ms\n")
print(f"{'run':<8} {'out msg/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'lost':>5} {'dup':>5} {'CPU us/msg':>11}")
for name, report in runs.items():
    lat = report["latency"]
    print(f"{name:<8} {report['out_rate']:>10.0f} {lat['p50_us'] / 1000:>8.2f} {lat['p99_us'] / 1000:>8.2f} "
          f"{report['lost']:>5} {report['duplicates']:>5} {cpu_per_message(report) or 0:>11.1f}")
a, b = cpu_per_message(runs["scraped"]), cpu_per_message(runs["quiet"])
ratio = a / b if a and b else None
if ratio:
    print(f"\nscraped / quiet: {ratio:.3f}x gateway CPU per message")
under_load, hundred = scrapes(f"{work}/scrapes.txt"), scrapes(f"{work}/scrapes-100.txt")
print(f"scrapes under load (1 function): {under_load}")
print(f"scrapes idle (100 functions):    {hundred}")
json.dump({"count": int(count), "rate": int(rate), "scrape_ms": int(every), "runs": runs,
           "cpu_ratio": ratio, "scrapes_under_load": under_load, "scrapes_100_functions": hundred},
          open(out, "w"), indent=1)
print(f"\nreports: {out}")
PY
