#!/usr/bin/env bash
# Measures the JavaScript runtime against the Rust telemetry-enrich with
# `wasmgate invoke --repeat 20 --json` (defaults: the gateway's limits), and
# prints the README's table. Each row is the median of RUNS runs (default 5)
# of 20 invocations: the first is the cold start, the median of the other 19
# is "warm".
#
#   bench/measure.sh [RUNS]
#   WASMGATE=path/to/wasmgate RAW=path/to/unrewritten.wasm bench/measure.sh
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-5}"
W="${WASMGATE:-/var/tmp/wasmgate-dev/debug/wasmgate}"
raw="${RAW:-${CARGO_TARGET_DIR:-target}/wasm32-wasip1/release/js_runtime.wasm}"
rust=../examples/wasm/telemetry_enrich.wasm
tool="${CARGO_TARGET_DIR:-target}/release/fuel-regions"
event=examples/event.json

row() { # label module event [invoke args...]
    local label="$1" module="$2" ev="$3"; shift 3
    for _ in $(seq "$runs"); do
        "$W" invoke "$module" --event "$ev" --repeat 20 --json "$@" 2>/dev/null || true
        echo '<<END>>'
    done | python3 bench/summarize.py "$label" "$module"
}

echo "| module | bytes | deploy µs | cold fuel | cold µs | memory MiB | warm fuel | warm µs | all ok |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---|"
row "Rust telemetry_enrich.wasm" "$rust" "$event"
if [ -x "$tool" ]; then
    rust_fr="$(mktemp --suffix=.wasm)"
    "$tool" "$rust" "$rust_fr" 2>/dev/null
    row "Rust telemetry_enrich.wasm through fuel-regions" "$rust_fr" "$event"
fi
[ -e "$raw" ] && row "JS, as linked (no fuel-regions)" "$raw" "$event"
row "JS js_runtime.wasm (fuel-regions)" js_runtime.wasm "$event"
# A loop: what a function node that walks an array pays per iteration.
loop='function handle(msg) { let s = 0; for (let i = 0; i < 1000; i++) s += i; return null; }'
[ -e "$raw" ] && row "JS 1,000-iteration loop, as linked" "$raw" "$event" --set "script=$loop"
row "JS 1,000-iteration loop (fuel-regions)" js_runtime.wasm "$event" --set "script=$loop"
row "JS tests/selftest.js (fuel-regions)" js_runtime.wasm tests/selftest-event.json --set "script=$(cat tests/selftest.js)"
