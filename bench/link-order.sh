#!/usr/bin/env bash
# Regenerates gateway/link-order.txt: the functions a gateway executes from
# start-up to a stop, through a few hundred messages and idle time, with the
# external broker (mosquitto) and with the embedded one. boards/link-ordered.sh
# lays these out together in the binary (BENCHMARKS.md section 10).
#
#   bench/link-order.sh
#
# Run it after changes that add or rename much of what start-up or the
# message path runs; boards/link-ordered.sh fails when less than half of the
# list is found in a build. Needs: cargo, valgrind, mosquitto, python3.
# Settings (environment): CARGO_TARGET_DIR (/var/tmp/wg-bench-target),
# MESSAGES (300 per broker), IDLE (seconds after them, 3).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/wg-bench-target}
MESSAGES=${MESSAGES:-300}
IDLE=${IDLE:-3}
WASM="$ROOT/functions/examples/wasm/vending_telemetry.wasm"

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
command -v valgrind >/dev/null || { echo "link-order.sh: needs valgrind (apt-get install valgrind)" >&2; exit 1; }

say "building wasmgate (release, unstripped) into $CARGO_TARGET_DIR"
host=$(rustc -vV | sed -n 's/^host: //p')
cargo rustc --release -p wasmgate --bin wasmgate --target "$host" \
    --manifest-path "$ROOT/Cargo.toml" -- -C strip=none >&2
WG="$CARGO_TARGET_DIR/$host/release/wasmgate"

scratch WORK /var/tmp/wasmgate-link-order.XXXXXX
start_mosquitto "$WORK"

# trace NAME BROKER-TOML BENCH-BROKER: the gateway under callgrind, from start to stop.
trace() {
    local name=$1 broker=$2 bench_broker=$3
    cat > "$WORK/$name.toml" <<TOML
gateway_id = "link-order"
data_dir = "$WORK/data-$name"

[broker]
$broker

$(vending_function 1)
TOML
    say "$name: start-up, $MESSAGES messages, ${IDLE}s idle, stop, under callgrind"
    valgrind --tool=callgrind --demangle=no --callgrind-out-file="$WORK/$name.callgrind" \
        "$WG" run --config "$WORK/$name.toml" 2> "$WORK/$name.log" &
    local gw=$!
    PIDS+=("$gw")
    for _ in $(seq 1200); do
        grep -q "gateway running" "$WORK/$name.log" && break
        kill -0 "$gw" 2>/dev/null || { cat "$WORK/$name.log" >&2; return 1; }
        sleep 0.1
    done
    grep -q "gateway running" "$WORK/$name.log" || { echo "not running after 120 s" >&2; return 1; }
    "$WG" bench --broker "$bench_broker" --count "$MESSAGES" --rate 50 --settle 20 --results 'telemetry/#' >&2
    sleep "$IDLE"
    kill -TERM "$gw"
    wait "$gw" || true
}

trace external "mode = \"external\"
host = \"127.0.0.1\"
port = $PORT" "$BROKER"
EMBEDDED_PORT=$(free_port)
trace embedded "mode = \"embedded\"
listen = \"127.0.0.1:$EMBEDDED_PORT\"" "127.0.0.1:$EMBEDDED_PORT"

# Into place only once it is whole: a failed run leaves the committed list as it was.
{
    echo "# The functions of wasmgate a gateway ran, hashes taken out, each with its size(s)"
    echo "# in the build below. Laid out first by boards/link-ordered.sh. Regenerate with"
    echo "# bench/link-order.sh. $(rustc --version), $host, $(git -C "$ROOT" rev-parse --short HEAD)."
    python3 "$ROOT/boards/link-order.py" from-callgrind "$WORK/external.callgrind" "$WORK/embedded.callgrind" --binary "$WG"
} > "$WORK/link-order.txt"
mv "$WORK/link-order.txt" "$ROOT/gateway/link-order.txt"
say "wrote gateway/link-order.txt ($(grep -vc '^#' "$ROOT/gateway/link-order.txt") functions)"
