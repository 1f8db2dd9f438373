#!/usr/bin/env bash
# End-to-end smoke test of a real ARM binary under qemu-user, as CI runs it:
# start it with the embedded broker, publish telemetry, receive the function's
# alert, stop it, and check that its KV state survives a restart. First, a
# function that loops until its fuel runs out must end in "out of fuel" and not
# crash the process (boards/testdata/spin.wat says why).
#
#   boards/qemu-smoke.sh aarch64-unknown-linux-gnu path/to/wasmgate
#
# Needs qemu-user-static and mosquitto-clients (.ci/setup installs both).
set -euo pipefail
target=$1
binary=$(realpath "$2")
repo=$(cd "$(dirname "$0")/.." && pwd)

case "$target" in
  aarch64-unknown-linux-gnu) run=(qemu-aarch64-static -L /usr/aarch64-linux-gnu) ;;
  armv7-unknown-linux-gnueabihf) run=(qemu-arm-static -L /usr/arm-linux-gnueabihf) ;;
  aarch64-unknown-linux-musl) run=(qemu-aarch64-static) ;;
  *) echo "qemu-smoke: unknown target $target" >&2; exit 2 ;;
esac

work=$(mktemp -d)
pid=""
cleanup() {
  [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# `wasmgate run` starts the embedded broker as a child process of the same
# binary; without binfmt_misc the kernel cannot exec an ARM binary, so the
# child goes through qemu as well (WASMGATE_EXE names the program to run).
printf '#!/bin/sh\nexec %s "%s" "$@"\n' "${run[*]}" "$binary" > "$work/wasmgate-under-qemu"
chmod +x "$work/wasmgate-under-qemu"
export WASMGATE_EXE="$work/wasmgate-under-qemu"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/gateway.toml" <<EOF
gateway_id = "smoke"
data_dir = "$work/data"
[broker]
mode = "embedded"
listen = "127.0.0.1:$port"
[[functions]]
name = "vending"
wasm = "$repo/functions/examples/wasm/vending_telemetry.wasm"
triggers = [{ mqtt = "vending/+/telemetry" }]
[functions.grants]
local = ["vending/+/alert"]
upstream = ["telemetry/#"]
EOF

telemetry='{"machine":"vm-1","ts":1764160000000,"temp_c":9.5,"door_open":false,"stock":[{"slot":"A1","count":5}],"sale":{"slot":"A1","price_cents":150}}'

start() {
  # A fresh log per start, so "gateway running" is this start's.
  [ -f "$work/gateway.log" ] && mv "$work/gateway.log" "$work/gateway.previous.log"
  "${run[@]}" "$binary" run --config "$work/gateway.toml" >"$work/gateway.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 600); do
    grep -q "gateway running" "$work/gateway.log" && return 0
    kill -0 "$pid" 2>/dev/null || { cat "$work/gateway.log"; echo "qemu-smoke: the gateway exited" >&2; exit 1; }
    sleep 0.1
  done
  cat "$work/gateway.log"; echo "qemu-smoke: the gateway did not start in 60 s" >&2; exit 1
}

stop() {
  kill -TERM "$pid"
  wait "$pid" || { cat "$work/gateway.log"; echo "qemu-smoke: unclean exit" >&2; exit 1; }
  pid=""
}

# One message in, its alert out.
round() {
  mosquitto_sub -h 127.0.0.1 -p "$port" -t 'vending/+/alert' -C 1 -W 60 >"$work/alert" &
  local sub=$!
  sleep 0.5
  mosquitto_pub -h 127.0.0.1 -p "$port" -q 1 -t vending/vm-1/telemetry -m "$telemetry"
  wait "$sub" || { cat "$work/gateway.log"; echo "qemu-smoke: no alert within 60 s" >&2; exit 1; }
  grep -q '"too_warm":true' "$work/alert" || { cat "$work/alert"; echo "qemu-smoke: unexpected alert" >&2; exit 1; }
}

echo "qemu-smoke: $target: $("${run[@]}" "$binary" --version)"

# 20 million ops of every kind; exit 1 is the function's failure, a signal
# (134: the stack overflowed) is the gateway's.
status=0
"${run[@]}" "$binary" invoke "$repo/boards/testdata/spin.wasm" \
  --event "$repo/functions/examples/vending-telemetry/event.json" \
  --fuel 20000000 --timeout-ms 300000 --json >"$work/spin.json" 2>&1 || status=$?
if [ "$status" != 1 ] || ! grep -q '"error": "out_of_fuel"' "$work/spin.json"; then
  cat "$work/spin.json"; echo "qemu-smoke: spin.wasm: expected out_of_fuel and exit 1, got exit $status" >&2; exit 1
fi
echo "qemu-smoke: $target: spin.wasm ran 20 million ops and ran out of fuel cleanly"
start; round; stop
start; round; stop
vends=$("${run[@]}" "$binary" kv --config "$work/gateway.toml" get vending vm-1/vends)
case "$vends" in
  "2 "*) echo "qemu-smoke: $target ok (alerts received, KV kept across a restart: vends = 2)" ;;
  *) echo "qemu-smoke: expected vends = 2 after two runs, got: $vends" >&2; exit 1 ;;
esac
