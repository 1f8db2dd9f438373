#!/usr/bin/env bash
# Builds the example functions for wasm32-unknown-unknown and copies them to
# wasm/<crate_name>.wasm. Honours CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")"

crates=(vending-telemetry robot-telemetry hello-http telemetry-enrich vending-heartbeat vending-sales kv-audit vending-ledger vending-live)
target_dir="${CARGO_TARGET_DIR:-target}"

args=()
for crate in "${crates[@]}"; do args+=(-p "$crate"); done
cargo build --release --target wasm32-unknown-unknown "${args[@]}"

mkdir -p wasm
for crate in "${crates[@]}"; do
    name="${crate//-/_}"
    cp "$target_dir/wasm32-unknown-unknown/release/$name.wasm" "wasm/$name.wasm"
    printf '%-24s %7d bytes\n' "wasm/$name.wasm" "$(wc -c < "wasm/$name.wasm")"
done
