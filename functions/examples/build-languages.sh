#!/usr/bin/env bash
# Rebuilds the example functions written in other languages than Rust, each
# a plain wasm32 module importing only "wasmgate" (no WASI), copies them to
# wasm/ (committed, like the Rust ones), prints their sizes and runs their
# native tests:
#
#   c-vending-alert  C, clang --target=wasm32 -nostdlib   -> wasm/c_vending_alert.wasm
#   zig-downsampler  Zig, wasm32-freestanding             -> wasm/zig_downsampler.wasm
#   as-enrich        AssemblyScript (asc, pinned in npm)  -> wasm/as_enrich.wasm
#
# Toolchains: .ci/setup-languages installs them (clang and lld from apt,
# ziglang from PyPI, `npm ci` in as-enrich). A missing one stops this script
# with a message naming it, before anything is built.
#   ./build-languages.sh          build, copy, test
#   ./build-languages.sh --check  only check that the toolchains are there
set -euo pipefail
cd "$(dirname "$0")"

missing=()
command -v clang >/dev/null || missing+=("clang (apt-get install clang)")
command -v wasm-ld >/dev/null || command -v wasm-ld-14 >/dev/null || missing+=("wasm-ld (apt-get install lld)")
command -v cc >/dev/null || command -v clang >/dev/null || missing+=("a native C compiler, cc or clang (for the C tests)")
if ! command -v zig >/dev/null && ! python3 -c 'import ziglang' 2>/dev/null; then
    missing+=("zig (pip install ziglang==0.15.2)")
fi
if command -v node >/dev/null; then
    major=$(node -p 'process.versions.node.split(".")[0]')
    (( major >= 20 )) || missing+=("Node.js 20 or later (found $(node --version); AssemblyScript 0.28 needs 20)")
else
    missing+=("node (Node.js 20 or later)")
fi
[[ -x as-enrich/node_modules/.bin/asc ]] || missing+=("asc, AssemblyScript's compiler (run \`npm ci\` in functions/examples/as-enrich)")
if (( ${#missing[@]} )); then
    echo "build-languages: missing toolchain:" >&2
    printf '  - %s\n' "${missing[@]}" >&2
    echo "build-languages: .ci/setup-languages installs all of them" >&2
    exit 1
fi
[[ ${1:-} == --check ]] && { echo "build-languages: every toolchain is there"; exit 0; }

examples=(c-vending-alert:c_vending_alert zig-downsampler:zig_downsampler as-enrich:as_enrich)

mkdir -p wasm
for example in "${examples[@]}"; do
    dir=${example%%:*} name=${example##*:}
    echo "== $dir: build"
    "$dir/build.sh" wasm
    cp "$dir/build/$name.wasm" "wasm/$name.wasm"
done

failed=()
for example in "${examples[@]}"; do
    dir=${example%%:*}
    echo "== $dir: native tests"
    "$dir/build.sh" test || failed+=("$dir")
done

echo
for example in "${examples[@]}"; do
    name=${example##*:}
    printf '%-28s %7d bytes\n' "wasm/$name.wasm" "$(wc -c < "wasm/$name.wasm")"
done
if (( ${#failed[@]} )); then
    echo "build-languages: native tests failed: ${failed[*]}" >&2
    echo "build-languages: ${#failed[@]} failed" >&2
    exit 1
fi
echo "build-languages: all native tests passed"
