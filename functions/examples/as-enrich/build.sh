#!/usr/bin/env bash
# Builds as_enrich.wasm with the pinned AssemblyScript compiler (asc from
# node_modules: `npm ci` here first) and runs the node test, which
# instantiates it against a fake wasmgate host.
#   ./build.sh            -> build/as_enrich.wasm, then the test
#   ./build.sh wasm|test  -> only one of them
set -euo pipefail
cd "$(dirname "$0")"
what="${1:-all}"
command -v node >/dev/null || { echo "as-enrich: node not found (apt-get install nodejs npm)" >&2; exit 1; }

if [[ $what == all || $what == wasm ]]; then
    [[ -x node_modules/.bin/asc ]] || {
        echo "as-enrich: the AssemblyScript compiler (asc) is not installed: run \`npm ci\` in $(pwd)" >&2
        exit 1
    }
    # asconfig.json: --runtime stub (nothing here allocates, so no GC) and
    # --use abort=assembly/index/abort, so that the module imports nothing
    # but "wasmgate" (by default asc imports env.abort).
    node_modules/.bin/asc assembly/index.ts --config asconfig.json --target release
    echo "as-enrich: build/as_enrich.wasm $(wc -c < build/as_enrich.wasm) bytes"
fi

if [[ $what == all || $what == test ]]; then
    node --test test/enrich.test.mjs
fi
