#!/usr/bin/env bash
# Footprint: idle RSS of `wasmgate run` with 1, 10, 100 and 1,000 deployed
# functions (each the committed vending-telemetry wasm with its own trigger),
# memory per idle function, time from spawn to ready (sd_notify READY=1, sent
# once every subscription is acked), threads, file descriptors, RSS by
# mapping, and the binary's size. Against an external mosquitto, then with
# the embedded broker. Writes bench/results/footprint-<stamp>.json.
#
#   bench/footprint.sh
#   COUNTS="1 10 100" EMBEDDED=0 bench/footprint.sh
#
# Needs: cargo, mosquitto, python3 (stdlib only). Settings (environment):
# COUNTS ("1 10 100 1000"), IDLE (5 s), EMBEDDED (1: also the embedded
# broker), WASM (the function; default the committed vending-telemetry),
# WARM (each function's limits.warm_instances; default the gateway's), DISTINCT=1 (each
# function its own copy of the module, so nothing is shared), CARGO_TARGET_DIR (/var/tmp/wg-bench-target), WASMGATE (a prebuilt
# binary: skips the build), MOSQUITTO.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
COUNTS=${COUNTS:-"1 10 100 1000"}
IDLE=${IDLE:-5}
EMBEDDED=${EMBEDDED:-1}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/wg-bench-target}
WASM=${WASM:-"$ROOT/functions/examples/wasm/vending_telemetry.wasm"}

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

wasmgate_binary
scratch WORK /var/tmp/wasmgate-footprint.XXXXXX

# 1,000 functions hold 1,000 MQTT sessions: the broker and the gateway each
# need a descriptor per session (the systemd unit sets LimitNOFILE=65536).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
say "open files limit $(ulimit -n)"

start_mosquitto "$WORK" "max_connections -1"

EMB=()
[ "$EMBEDDED" = 1 ] && EMB=(--embedded-port "$(free_port)")
mkdir -p "$RESULTS"
# shellcheck disable=SC2086 # COUNTS is a list
python3 "$ROOT/bench/footprint.py" --wasmgate "$WG" --wasm "$WASM" --work "$WORK" \
    --broker-port "$PORT" "${EMB[@]}" --counts $COUNTS --idle "$IDLE" ${WARM:+--warm-instances "$WARM"} ${DISTINCT:+--distinct-modules} \
    --out "$RESULTS/footprint-$STAMP.json"
