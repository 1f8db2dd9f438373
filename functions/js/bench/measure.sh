#!/usr/bin/env bash
# Measures the JavaScript runtime against the Rust telemetry-enrich with
# `wasmgate invoke --repeat 20 --json` (defaults: the gateway's limits), and
# prints the README's table. Each row is the median of RUNS runs (default 5)
# of 20 invocations: the first is the cold start, the median of the other 19
# is "warm".
#
#   bench/measure.sh [RUNS]
#   WASMGATE=path/to/wasmgate bench/measure.sh
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-5}"
W="${WASMGATE:-/var/tmp/wasmgate-dev/debug/wasmgate}"
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
row "JS js_runtime.wasm" js_runtime.wasm "$event"
# A loop: what a function node that walks an array pays per iteration.
loop='function handle(msg) { let s = 0; for (let i = 0; i < 1000; i++) s += i; return null; }'
row "JS 1,000-iteration loop" js_runtime.wasm "$event" --set "script=$loop"
row "JS tests/selftest.js" js_runtime.wasm tests/selftest-event.json --set "script=$(cat tests/selftest.js)"
# The guest-side fuel rewrite, for gateways whose wasmi lacks the fuel patch.
if [ -x "$tool" ]; then
    js_fr="$(mktemp --suffix=.wasm)"
    "$tool" js_runtime.wasm "$js_fr" 2>/dev/null
    row "JS js_runtime.wasm through fuel-regions" "$js_fr" "$event"
fi
