#!/usr/bin/env bash
# One run, one mosquitto, three systems under the same load:
#   (a) the broker alone: the bench publishes telemetry and subscribes to it (echo)
#   (b) a raw Rust pass-through: `wasmgate bench passthrough` (subscribe,
#       republish, ack after the republish is acked; no function, no SQLite)
#   (c) `wasmgate run` with vending-telemetry, broker.mode = "external"
# each at QoS 1, flat out and at a fixed rate. Prints a table and the ratios
# wasmgate / pass-through, and writes every report as JSON to bench/results/.
#
#   bench/compare.sh                      20,000 messages; flat out and 2,000 msg/s
#   COUNT=5000 RATE=1000 bench/compare.sh
#
# Needs: cargo, mosquitto (apt-get install mosquitto), python3.
# Settings (environment): COUNT, RATE, QOS (1), DEVICES (100), SETTLE (10 s),
# CARGO_TARGET_DIR (/var/tmp/wg-bench-target), MOSQUITTO (mosquitto binary).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
COUNT=${COUNT:-20000}
RATE=${RATE:-2000}
QOS=${QOS:-1}
DEVICES=${DEVICES:-100}
SETTLE=${SETTLE:-10}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/wg-bench-target}
MOSQUITTO=${MOSQUITTO:-$(command -v mosquitto || echo /usr/sbin/mosquitto)}
WASM="$ROOT/functions/examples/wasm/vending_telemetry.wasm"
RESULTS="$ROOT/bench/results"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)

say() { printf '== %s\n' "$*" >&2; }

say "building wasmgate (release) into $CARGO_TARGET_DIR"
cargo build --release -p wasmgate --manifest-path "$ROOT/Cargo.toml" >&2
WG="$CARGO_TARGET_DIR/release/wasmgate"

# On disk, not tmpfs: wasmgate's commits fsync, as on a gateway's SD card.
WORK=$(mktemp -d /var/tmp/wasmgate-compare.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$WORK/mosquitto.conf" <<CONF
listener $PORT 127.0.0.1
allow_anonymous true
# As root (containers) mosquitto would switch to the mosquitto user; harmless otherwise.
user root
persistence false
# No limits: a gateway's session may hold a whole burst unacked.
max_queued_messages 0
max_inflight_messages 0
log_dest file $WORK/mosquitto.log
CONF
"$MOSQUITTO" -c "$WORK/mosquitto.conf" &
MOSQ=$!
PIDS+=("$MOSQ")
BROKER="127.0.0.1:$PORT"

# Waits until FILE has a line matching PATTERN (or gives up after 20 s).
wait_for() {
    local file=$1 pattern=$2
    for _ in $(seq 200); do
        grep -q "$pattern" "$file" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "gave up waiting for '$pattern' in $file:" >&2
    cat "$file" >&2
    return 1
}
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.1
done
say "mosquitto $($MOSQUITTO -h 2>&1 | head -1 | awk '{print $3}') on $BROKER (pid $MOSQ)"

# bench NAME LABEL [bench flags...]: one flat-out run and one at RATE.
bench() {
    local name=$1 label=$2
    shift 2
    for mode in flat rate; do
        local rate=0
        [ "$mode" = rate ] && rate=$RATE
        local out="$WORK/$name-$mode.json"
        say "$label, $([ "$mode" = flat ] && echo 'flat out' || echo "$RATE msg/s")"
        "$WG" bench --broker "$BROKER" --count "$COUNT" --rate "$rate" --qos "$QOS" \
            --devices "$DEVICES" --settle "$SETTLE" --label "$label" --json "$@" > "$out"
    done
}

# (a) The broker alone.
bench echo "broker echo" --results 'vending/+/telemetry' --pid "$MOSQ"

# (b) The pass-through.
RUST_LOG=info "$WG" bench passthrough --broker "$BROKER" --qos "$QOS" \
    --from 'vending/+/telemetry' --to 'telemetry/vending/{machine}' 2> "$WORK/passthrough.log" &
PT=$!
PIDS+=("$PT")
wait_for "$WORK/passthrough.log" "pass-through running"
bench passthrough "pass-through" --results 'telemetry/#' --pid "$PT" --pid "$MOSQ"
kill -INT "$PT"
wait "$PT" || true
# Its session is persistent: forget it, or mosquitto keeps queueing for it.
mosquitto_pub -h 127.0.0.1 -p "$PORT" -i wasmgate-passthrough -t wasmgate/bench/forget -n -q 0 2>/dev/null ||
    say "mosquitto_pub not found; the pass-through's session stays at the broker"

# (c) wasmgate with vending-telemetry, the settings of `wasmgate config init`.
mkdir -p "$WORK/data"
cat > "$WORK/gateway.toml" <<TOML
gateway_id = "bench"
data_dir = "$WORK/data"

[broker]
mode = "external"
host = "127.0.0.1"
port = $PORT

[[functions]]
name = "vending"
wasm = "$WASM"
triggers = [{ mqtt = "vending/+/telemetry", qos = 1 }]

[functions.grants]
local = ["vending/+/alert"]
upstream = ["telemetry/#"]

[functions.config]
max_temp_c = "8"
TOML
"$WG" config check "$WORK/gateway.toml" >&2
"$WG" run --config "$WORK/gateway.toml" 2> "$WORK/gateway.log" &
GW=$!
PIDS+=("$GW")
wait_for "$WORK/gateway.log" "gateway running"
bench wasmgate "wasmgate + vending-telemetry" --results 'telemetry/#' --pid "$GW" --pid "$MOSQ"
kill -TERM "$GW"
wait "$GW" || true

# Collect, print, compare.
mkdir -p "$RESULTS"
OUT="$RESULTS/compare-$STAMP.json"
python3 - "$WORK" "$OUT" "$COUNT" "$RATE" "$QOS" <<'PY'
import json, os, platform, sys
work, out, count, rate, qos = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
runs = {}
for name in ("echo", "passthrough", "wasmgate"):
    for mode in ("flat", "rate"):
        with open(os.path.join(work, f"{name}-{mode}.json")) as f:
            runs[f"{name}-{mode}"] = json.load(f)

def proc(r, i):
    p = r["processes"]
    return p[i] if len(p) > i else None

print()
print(f"{'run':<40}{'in/s':>8}{'out/s':>8}{'p50 ms':>8}{'p90 ms':>8}{'p99 ms':>8}{'max ms':>8}{'lost':>6}{'dup':>5}"
      f"{'cpu %':>7}{'rss MiB':>9}{'broker %':>9}{'bench %':>8}")
for key, r in runs.items():
    l = r["latency"]
    mode = "flat out" if key.endswith("flat") else f"{rate:.0f} msg/s"
    p0 = proc(r, 0)
    # For the echo the only process is the broker; otherwise [system, broker].
    own = p0 if not key.startswith("echo") else None
    broker = proc(r, 1) if not key.startswith("echo") else p0
    cpu = f"{own['cpu_pct']:.0f}" if own else "-"
    rss = f"{own['rss_kib_max']/1024:.1f}" if own else "-"
    bcpu = f"{broker['cpu_pct']:.0f}" if broker else "-"
    print(f"{r['label'] + ', ' + mode:<40}{r['in_rate']:>8.0f}{r['out_rate']:>8.0f}"
          f"{l['p50_us']/1000:>8.2f}{l['p90_us']/1000:>8.2f}{l['p99_us']/1000:>8.2f}{l['max_us']/1000:>8.2f}"
          f"{r['lost']:>6}{r['duplicates']:>5}{cpu:>7}{rss:>9}{bcpu:>9}{r['bench']['cpu_pct']:>8.0f}")

ratios = {}
for mode in ("flat", "rate"):
    w, p = runs[f"wasmgate-{mode}"], runs[f"passthrough-{mode}"]
    ratios[mode] = {
        "out_rate": w["out_rate"] / p["out_rate"] if p["out_rate"] else None,
        "p50": w["latency"]["p50_us"] / p["latency"]["p50_us"] if p["latency"]["p50_us"] else None,
        "p99": w["latency"]["p99_us"] / p["latency"]["p99_us"] if p["latency"]["p99_us"] else None,
        "cpu": (proc(w, 0)["cpu_pct"] / proc(p, 0)["cpu_pct"]) if proc(p, 0) and proc(p, 0)["cpu_pct"] else None,
        "rss": (proc(w, 0)["rss_kib_max"] / proc(p, 0)["rss_kib_max"]) if proc(p, 0) and proc(p, 0)["rss_kib_max"] else None,
    }
def fmt(x):
    return "-" if x is None else f"{x:.2f}"
print()
print("wasmgate / pass-through")
for mode, r in ratios.items():
    label = "flat out" if mode == "flat" else f"{rate:.0f} msg/s"
    print(f"  {label:<12} throughput {fmt(r['out_rate'])}x   p50 {fmt(r['p50'])}x   p99 {fmt(r['p99'])}x   cpu {fmt(r['cpu'])}x   rss {fmt(r['rss'])}x")

doc = {
    "when": os.path.basename(out)[len("compare-"):-len(".json")],
    "machine": {"cpus": os.cpu_count(), "arch": platform.machine(), "kernel": platform.release()},
    "settings": {"count": count, "rate": rate, "qos": qos},
    "runs": runs,
    "ratios_wasmgate_over_passthrough": ratios,
}
with open(out, "w") as f:
    json.dump(doc, f, indent=2)
print(f"\nwrote {out}")
PY
