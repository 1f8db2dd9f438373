#!/usr/bin/env bash
# Builds wasmgate with the functions a running gateway executes laid out
# together (gateway/link-order.txt), so that the kernel maps about 2.5 MiB
# less of the binary: idle RSS 9.0-9.1 -> 6.4-6.8 MiB on x86_64
# (BENCHMARKS.md section 10).
# The code is the same; only its order in the file changes.
#
#   boards/link-ordered.sh [--target T] [--profile P] [--min-match F] [-- cargo args]
#
#   --target T     a rustup target (default: the host)
#   --profile P    a cargo profile (default: release)
#   --min-match F  fail if less than this share of the list is found in the
#                  build (default 0.5): the list is stale, regenerate it
#                  with bench/link-order.sh
#   -- ARGS        more arguments for cargo (e.g. --no-default-features)
#
# Two links of the binary crate (dependencies are built once): one
# unstripped, to read its symbol names, which carry hashes that change with
# the target, profile and toolchain (boards/link-order.py resolves the
# committed hash-free list against them); then the one that ships, with
# `--symbol-ordering-file`. That needs lld: rustc's own (rust-lld, in the
# toolchain), driven by the target's gcc as usual, so no package is needed.
# Prints the binary's path last: cargo's copy, which the next build for this
# target and profile replaces (copy it to keep it).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
target="" profile=release min_match=0.5 cargo_args=()
while (($#)); do
    case $1 in
        --target) target=${2:?--target needs a target triple}; shift ;;
        --profile) profile=${2:?--profile needs a profile}; shift ;;
        --min-match) min_match=${2:?--min-match needs a number}; shift ;;
        --) shift; cargo_args=("$@"); break ;;
        -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        *) echo "link-ordered.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

host=$(rustc -vV | sed -n 's/^host: //p')
target=${target:-$host}
# Where cargo puts it, whichever way the target dir is set (environment,
# .cargo/config.toml, relative or not).
target_dir=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
case $profile in
    dev) out_dir="$target_dir/$target/debug" ;;
    test | bench) echo "link-ordered.sh: --profile $profile builds tests, not the binary; use release or a profile of your own" >&2; exit 2 ;;
    *) out_dir="$target_dir/$target/$profile" ;;
esac
nm="nm"
case $target in
    aarch64-*) command -v aarch64-linux-gnu-nm >/dev/null && nm=aarch64-linux-gnu-nm ;;
    armv7-*) command -v arm-linux-gnueabihf-nm >/dev/null && nm=arm-linux-gnueabihf-nm ;;
esac
# rustc's lld and the gcc-ld/ld.lld shim that lets a gcc driver (-fuse-ld=lld) find it.
gcc_ld="$(rustc --print sysroot)/lib/rustlib/$host/bin/gcc-ld"
[ -x "$gcc_ld/ld.lld" ] || { echo "link-ordered.sh: no $gcc_ld/ld.lld in this toolchain" >&2; exit 1; }

build=(cargo rustc -p wasmgate --bin wasmgate --profile "$profile" --target "$target" "${cargo_args[@]}")
echo "==> link 1 of 2: $target ($profile), unstripped, to read its symbols" >&2
"${build[@]}" -- -C strip=none >&2
python3 boards/link-order.py resolve gateway/link-order.txt "$out_dir/wasmgate" \
    --nm "$nm" --min-match "$min_match" > "$out_dir/link-order.resolved"
# Named by its content: cargo decides whether to link again from the
# arguments, not from what a file they name holds, and it keeps the output of
# every set of arguments it has seen; the same name for another order would
# hand back the binary of an earlier link.
resolved="$out_dir/link-order-$(sha256sum "$out_dir/link-order.resolved" | cut -c1-16).txt"
mv "$out_dir/link-order.resolved" "$resolved"
echo "==> link 2 of 2: with the functions of gateway/link-order.txt first" >&2
"${build[@]}" -- -C link-arg=-fuse-ld=lld -C "link-arg=-B$gcc_ld" \
    -C "link-arg=-Wl,--symbol-ordering-file=$resolved" -C link-arg=-Wl,--no-warn-symbol-ordering >&2
echo "$out_dir/wasmgate"
