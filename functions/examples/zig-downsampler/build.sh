#!/usr/bin/env bash
# Builds zig_downsampler.wasm (wasm32-freestanding, imports only "wasmgate")
# and runs the native tests (`zig test`, the fake host chosen at comptime).
#   ./build.sh            -> build/zig_downsampler.wasm, then the tests
#   ./build.sh wasm|test  -> only one of them
# ZIG (default: `zig` if on PATH, else `python3 -m ziglang`, the PyPI build
# that .ci/setup-languages installs).
set -euo pipefail
cd "$(dirname "$0")"
what="${1:-all}"
if [[ -n ${ZIG:-} ]]; then
    read -r -a zig <<< "$ZIG"
elif command -v zig >/dev/null; then
    zig=(zig)
elif python3 -c 'import ziglang' 2>/dev/null; then
    zig=(python3 -m ziglang)
else
    echo "zig-downsampler: zig not found (pip install ziglang==0.15.2, see .ci/setup-languages)" >&2
    exit 1
fi
mkdir -p build

if [[ $what == all || $what == wasm ]]; then
    # -fno-entry: no _start; -rdynamic: the `@export`ed functions become
    # wasm exports (without it only `memory` is exported); ReleaseFast:
    # interpreted code pays for every instruction, so speed over size.
    "${zig[@]}" build-exe src/downsampler.zig -target wasm32-freestanding \
        -fno-entry -rdynamic -O ReleaseFast --stack 65536 -fstrip \
        -femit-bin=build/zig_downsampler.wasm
    echo "zig-downsampler: build/zig_downsampler.wasm $(wc -c < build/zig_downsampler.wasm) bytes"
fi

if [[ $what == all || $what == test ]]; then
    out=$("${zig[@]}" test src/tests.zig 2>&1) || { echo "$out"; echo "zig-downsampler: zig test failed" >&2; exit 1; }
    echo "$out"
    # `zig test` prints "All N tests passed."; say it in the plain form too.
    n=$(grep -oE 'All [0-9]+ tests passed' <<< "$out" | grep -oE '[0-9]+' || echo 0)
    echo "zig-downsampler: $n passed, 0 failed"
fi
