#!/usr/bin/env bash
# Rebuilds the test guests written in C against wasi-libc (Debian's clang,
# lld and wasi-libc packages: .ci/setup installs them) into *.wasm here.
set -euo pipefail
cd "$(dirname "$0")"
sysroot=/usr
for tool in clang wasm-ld; do
  command -v "$tool" >/dev/null || { echo "build.sh: $tool is missing (apt-get install clang lld)" >&2; exit 1; }
done
[ -e "$sysroot/lib/wasm32-wasi/crt1-reactor.o" ] || { echo "build.sh: wasi-libc is missing (apt-get install wasi-libc libclang-rt-14-dev-wasm32)" >&2; exit 1; }
for src in wasi_libc.c; do
  out="${src%.c}.wasm"
  # A reactor: no main; libc's constructors run from _initialize, once per
  # instance, and the gateway calls wasmgate_handle per event.
  clang --target=wasm32-wasi --sysroot="$sysroot" -O2 -mexec-model=reactor \
    -Wl,-z,stack-size=65536 -Wl,--strip-all -o "$out" "$src"
  printf '%-28s %7d bytes\n' "tests/guests/$out" "$(wc -c < "$out")"
done
