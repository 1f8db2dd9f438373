#!/usr/bin/env bash
# Builds the JavaScript runtime module (QuickJS-NG through rquickjs, for
# wasm32-wasip1, linked as a WASI reactor) and writes it to js_runtime.wasm.
#
#   ./build.sh                         # bundles examples/enrich.js
#   JS_RUNTIME_SCRIPT=/path/f.js ./build.sh   # bundles another script
#
# Needs: rustup's wasm32-wasip1 target, clang (14 works) with wasi-libc
# headers (Debian: clang, lld, wasi-libc) and llvm-ar. Honours
# CARGO_TARGET_DIR. QuickJS is C: rquickjs-sys would download the wasi-sdk
# from GitHub unless told not to (RQUICKJS_SYS_NO_WASI_SDK=1); it is then
# compiled by the clang named here against Debian's wasi-libc headers and
# linked against the wasi-libc Rust ships for wasm32-wasip1.
set -euo pipefail
cd "$(dirname "$0")"

missing=()
rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1 \
    || missing+=("the wasm32-wasip1 target (rustup target add wasm32-wasip1)")
command -v "${CC_wasm32_wasip1:-clang}" >/dev/null || missing+=("clang (apt-get install clang lld)")
command -v "${AR_wasm32_wasip1:-llvm-ar}" >/dev/null || missing+=("llvm-ar (apt-get install llvm)")
[ -e "${WASI_SYSROOT:-/usr}/include/wasm32-wasi/stdlib.h" ] \
    || missing+=("wasi-libc headers in ${WASI_SYSROOT:-/usr}/include/wasm32-wasi (apt-get install wasi-libc, or set WASI_SYSROOT)")
if [ ${#missing[@]} -gt 0 ]; then
    printf 'build.sh: missing %s\n' "${missing[@]}" >&2
    exit 1
fi

export RQUICKJS_SYS_NO_WASI_SDK=1
export CC_wasm32_wasip1="${CC_wasm32_wasip1:-clang}"
export AR_wasm32_wasip1="${AR_wasm32_wasip1:-llvm-ar}"
export CFLAGS_wasm32_wasip1="${CFLAGS_wasm32_wasip1:---target=wasm32-wasi --sysroot=${WASI_SYSROOT:-/usr}}"
target_dir="${CARGO_TARGET_DIR:-target}"

cargo build --release --target wasm32-wasip1 -p js-runtime
# fuel-regions (a native tool of this workspace) rewrites the module so
# that a wasmi without wasmgate's fuel patch bills QuickJS's interpreter for
# the code it runs (README: "Fuel"). The gateway's own wasmi has the patch
# since 2026-12-04, and the rewrite then only adds 8%: off unless
# FUEL_REGIONS=1.
if [ "${FUEL_REGIONS:-0}" = 1 ]; then
    cargo build --release -p fuel-regions
    "$target_dir/release/fuel-regions" "$target_dir/wasm32-wasip1/release/js_runtime.wasm" js_runtime.wasm
else
    cp "$target_dir/wasm32-wasip1/release/js_runtime.wasm" js_runtime.wasm
fi
printf '%-20s %8d bytes\n' js_runtime.wasm "$(wc -c < js_runtime.wasm)"
