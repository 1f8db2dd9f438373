#!/usr/bin/env bash
# Profiles wasmgate's hot path under load: `wasmgate run` with vending-telemetry
# (or, WORKLOAD=enrich, telemetry-enrich) on a mosquitto, while `wasmgate bench` sends COUNT messages at QoS QOS.
#
#   TOOL=perf bench/profile.sh        perf record (cpu-clock, DWARF call graphs)
#                                     for the length of the load; flat and
#                                     caller/callee reports
#   TOOL=callgrind bench/profile.sh   valgrind callgrind: instruction counts,
#                                     zeroed once the gateway is ready, so
#                                     Ir / COUNT is the cost of one message
#
# The binary is built with the `profiling` profile: the release settings
# (opt-level "s", panic = "abort") with symbols and line tables, and without
# LTO so it builds in a few minutes, but wasmi in one codegen unit as its
# tail-call dispatch needs (see Cargo.toml); defined on the command line
# below, so Cargo.toml stays as it is. Reports go to bench/results/profile-<stamp>-*.
#
# Needs: cargo, mosquitto, perf or valgrind, python3. Settings (environment):
# TOOL (perf), WORKLOAD (vending or enrich), TRACING (1: [tracing] on, spans
# to tests/support/otlp_receiver.py, which needs opentelemetry-proto), COUNT (20000 for perf, 2000 for callgrind), RATE (0: flat out),
# QOS (1), CONCURRENCY (the function's, default 1), SYNCHRONOUS (store's, default
# full), KEEP (a path to copy perf.data or the callgrind dump to), CARGO_TARGET_DIR (/var/tmp/wg-bench-target), WASMGATE (a prebuilt
# binary with symbols: skips the build).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOOL=${TOOL:-perf}
if [ "$TOOL" = callgrind ]; then COUNT=${COUNT:-2000}; else COUNT=${COUNT:-20000}; fi
RATE=${RATE:-0}
QOS=${QOS:-1}
CONCURRENCY=${CONCURRENCY:-1}
SYNCHRONOUS=${SYNCHRONOUS:-full}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/wg-bench-target}
WORKLOAD=${WORKLOAD:-vending}
TRACING=${TRACING:-0}
case "$WORKLOAD" in
    vending) WASM="$ROOT/functions/examples/wasm/vending_telemetry.wasm" ;;
    enrich) WASM="$ROOT/functions/examples/wasm/telemetry_enrich.wasm" ;;
    *) echo "WORKLOAD must be vending or enrich" >&2; exit 2 ;;
esac
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

case "$TOOL" in
    perf) command -v perf >/dev/null || { say "perf not found (apt-get install linux-perf)"; exit 1; } ;;
    callgrind) command -v valgrind >/dev/null || { say "valgrind not found (apt-get install valgrind)"; exit 1; } ;;
    *) say "TOOL must be perf or callgrind"; exit 2 ;;
esac

if [ -n "${WASMGATE:-}" ]; then
    WG=$WASMGATE
else
    say "building wasmgate (profiling: release + symbols, no LTO) into $CARGO_TARGET_DIR"
    cargo build -p wasmgate --manifest-path "$ROOT/Cargo.toml" --profile profiling \
        --config 'profile.profiling.inherits="release"' --config 'profile.profiling.lto=false' \
        --config 'profile.profiling.codegen-units=16' --config 'profile.profiling.strip=false' \
        --config 'profile.profiling.debug="line-tables-only"' \
        --config 'profile.profiling.package.wasmi.codegen-units=1' \
        --config 'profile.profiling.package.wasmi_core.codegen-units=1' \
        --config 'profile.profiling.package.wasmi_ir.codegen-units=1' >&2
    WG="$CARGO_TARGET_DIR/profiling/wasmgate"
fi

scratch WORK /var/tmp/wasmgate-profile.XXXXXX
start_mosquitto "$WORK" "max_queued_messages 0
max_inflight_messages 0"

mkdir -p "$WORK/data"
cat > "$WORK/gateway.toml" <<TOML
gateway_id = "profile"
data_dir = "$WORK/data"

[broker]
mode = "external"
host = "127.0.0.1"
port = $PORT

[store]
synchronous = "$SYNCHRONOUS"

[[functions]]
name = "$WORKLOAD"
wasm = "$WASM"
triggers = [{ mqtt = "vending/+/telemetry", qos = $QOS }]
limits = { concurrency = $CONCURRENCY }

[functions.grants]
local = ["vending/+/alert"]
upstream = ["telemetry/#"]
TOML
if [ "$TRACING" = 1 ]; then
    OTLP_PORT=$(free_port)
    python3 "$ROOT/tests/support/otlp_receiver.py" "$OTLP_PORT" > "$WORK/spans.jsonl" &
    PIDS+=("$!")
    wait_for "$WORK/spans.jsonl" "listening"
    printf '[tracing]\nendpoint = "http://127.0.0.1:%s/v1/traces"\n' "$OTLP_PORT" >> "$WORK/gateway.toml"
fi
"$WG" config check "$WORK/gateway.toml" >&2

mkdir -p "$RESULTS"
OUT="$RESULTS/profile-$STAMP-$TOOL"
if [ "$TOOL" = callgrind ]; then
    valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.out" \
        "$WG" run --config "$WORK/gateway.toml" 2> "$WORK/gateway.log" &
else
    "$WG" run --config "$WORK/gateway.toml" 2> "$WORK/gateway.log" &
fi
GW=$!
PIDS+=("$GW")
for _ in $(seq 1200); do
    grep -q "gateway running" "$WORK/gateway.log" && break
    sleep 0.1
done
grep -q "gateway running" "$WORK/gateway.log" || { cat "$WORK/gateway.log" >&2; exit 1; }
sleep 1

if [ "$TOOL" = callgrind ]; then
    callgrind_control -z "$GW" >/dev/null
else
    perf record -e cpu-clock -F 999 --call-graph dwarf,32768 -p "$GW" -o "$WORK/perf.data" 2> "$WORK/perf.log" &
    PERF=$!
    PIDS+=("$PERF")
    sleep 1
fi
say "load: $COUNT messages, QoS $QOS, rate $RATE (0 = flat out), load avg $(cut -d' ' -f1-3 /proc/loadavg)"
"$WG" bench --broker "127.0.0.1:$PORT" --count "$COUNT" --rate "$RATE" --qos "$QOS" \
    --settle 120 --pid "$GW" --label "profiled wasmgate ($TOOL)" > "$OUT-bench.txt"
cat "$OUT-bench.txt" >&2

if [ "$TOOL" = callgrind ]; then
    callgrind_control -d "$GW" >/dev/null
    sleep 2
    kill -TERM "$GW"
    wait "$GW" || true
    # callgrind_control -d writes the counts since the zeroing to
    # callgrind.out.1; the exit writes the shutdown's to callgrind.out.
    DUMP="$WORK/callgrind.out.1"
    if [ -n "${KEEP:-}" ]; then cp "$DUMP" "$KEEP"; say "kept the callgrind dump as $KEEP"; fi
    # Inclusive costs: with inlining, "self" costs land on whichever function
    # the code was inlined into, so the inclusive view is the one to read.
    callgrind_annotate --inclusive=yes --auto=no "$DUMP" 2> /dev/null | head -200 > "$OUT-inclusive.txt" || true
    TOTAL=$(grep -m1 -E '^ *[0-9,]+ .*PROGRAM TOTALS' "$OUT-inclusive.txt" | awk '{gsub(",","",$1); print $1}')
    echo "instructions after ready: $TOTAL; per message: $((TOTAL / COUNT))" | tee "$OUT-summary.txt" >&2
    say "wrote $OUT-{bench,inclusive,summary}.txt"
else
    kill -INT "$PERF"
    wait "$PERF" || true
    kill -TERM "$GW"
    wait "$GW" || true
    # DWARF call graphs make each report slow (minutes): four views, then the data is gone.
    perf report -i "$WORK/perf.data" --no-children --sort dso,symbol --stdio --percent-limit 1 \
        2> /dev/null | cut -c1-240 > "$OUT-self.txt"
    perf report -i "$WORK/perf.data" --children --sort symbol --stdio --percent-limit 1 -g none \
        2> /dev/null | cut -c1-240 > "$OUT-children.txt"
    perf report -i "$WORK/perf.data" --no-children --sort comm --stdio -g none > "$OUT-threads.txt" 2> /dev/null
    perf report -i "$WORK/perf.data" --no-children --sort dso --stdio -g none > "$OUT-dso.txt" 2> /dev/null
    if [ -n "${KEEP:-}" ]; then cp "$WORK/perf.data" "$KEEP"; say "kept perf.data as $KEEP"; fi
    say "wrote $OUT-{bench,self,children,threads,dso}.txt"
fi
