#!/usr/bin/env bash
# Builds c_vending_alert.wasm (plain wasm32, no libc, no WASI) and runs the
# native tests against the fake host.
#   ./build.sh            -> build/c_vending_alert.wasm, then the tests
#   ./build.sh wasm|test  -> only one of them
# CLANG (default clang) must target wasm32 and find wasm-ld (Debian: the
# clang and lld packages); the tests use CC (default cc, else clang).
set -euo pipefail
cd "$(dirname "$0")"
what="${1:-all}"
CLANG="${CLANG:-clang}"
CC="${CC:-$(command -v cc || command -v clang || true)}"
mkdir -p build

if [[ $what == all || $what == wasm ]]; then
    command -v "$CLANG" >/dev/null || { echo "c-vending-alert: $CLANG not found (apt-get install clang lld)" >&2; exit 1; }
    command -v wasm-ld >/dev/null || command -v wasm-ld-14 >/dev/null \
        || { echo "c-vending-alert: wasm-ld not found (apt-get install lld)" >&2; exit 1; }
    # -nostdlib: no libc and no crt, so nothing imports from WASI or "env";
    # --no-entry: no _start, only the exports; -mbulk-memory: copies and
    # zeroing compile to memory.copy/fill instead of calls to an absent
    # memcpy/memset; 64 KiB of stack (the resident memory of an instance).
    # Compiled, then linked with wasm-ld directly: the clang driver would run
    # binaryen's wasm-opt on the output by itself whenever wasm-opt is on
    # PATH, so the module would depend on what else the machine has.
    "$CLANG" --target=wasm32 -O2 -std=c11 -Wall -Wextra -Wpedantic -Werror \
        -nostdlib -mbulk-memory -I ../../c -c -o build/vending_alert.o vending_alert.c
    wasm_ld=$(command -v wasm-ld || command -v wasm-ld-14)
    "$wasm_ld" --no-entry -z stack-size=65536 --strip-all \
        -o build/c_vending_alert.wasm build/vending_alert.o
    echo "c-vending-alert: build/c_vending_alert.wasm $(wc -c < build/c_vending_alert.wasm) bytes"
fi

if [[ $what == all || $what == test ]]; then
    [[ -n $CC ]] || { echo "c-vending-alert: no C compiler for the native tests (cc or clang)" >&2; exit 1; }
    "$CC" -std=c11 -O1 -g -Wall -Wextra -I ../../c -I test \
        -o build/test_vending_alert vending_alert.c test/fake_host.c test/test_vending_alert.c
    ./build/test_vending_alert
fi
