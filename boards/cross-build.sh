#!/usr/bin/env bash
# Cross-builds release binaries of wasmgate for ARM gateways, without Docker:
# rustup targets plus Debian's/Ubuntu's cross gcc (glibc targets) and zig
# (the static musl target), then copies each to dist/<target>/wasmgate.
#
#   boards/cross-build.sh [options] [-- extra cargo build args]
#
#   --install        install what is missing first (apt-get, rustup, pip)
#   --target T       build only T; repeatable. Default: all three below
#   --smoke          run each binary under qemu-user: --version, and `invoke`
#                    of the vending example function on its example event
#   --deb            build Debian packages (cargo-deb) for the glibc targets
#                    into dist/<target>/, and list their contents
#   -h, --help       this text
#
# Targets:
#   aarch64-unknown-linux-gnu      Raspberry Pi 3/4/5 and most gateways, 64-bit OS
#   armv7-unknown-linux-gnueabihf  Pi 2/3/Zero 2 W on a 32-bit OS, BeagleBone Black
#   aarch64-unknown-linux-musl     static binary for any aarch64 Linux
#
# The glibc targets use the linkers and qemu runners in .cargo/config.toml,
# and are linked by boards/link-ordered.sh (the functions a gateway runs laid
# out together: less of the binary resident; rust-lld, from the toolchain);
# cc-rs finds the same cross gcc for C code (bundled SQLite) by the target
# name. Debian has no C compiler with musl headers for aarch64, so the musl
# target is built with `cargo zigbuild` (zig as C compiler and linker; both
# come from PyPI: `pip install ziglang cargo-zigbuild`).
#
# Environment: CARGO_TARGET_DIR (default target/), DIST (default dist/).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
DIST=${DIST:-$ROOT/dist}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
ALL_TARGETS=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf aarch64-unknown-linux-musl)

install=0 smoke=0 deb=0
targets=() cargo_args=()
while (($#)); do
    case $1 in
        --install) install=1 ;;
        --smoke) smoke=1 ;;
        --deb) deb=1 ;;
        --target) targets+=("${2:?--target needs a target triple}"); shift ;;
        --target=*) targets+=("${1#--target=}") ;;
        -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        --) shift; cargo_args=("$@"); break ;;
        *) echo "cross-build.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
((${#targets[@]})) || targets=("${ALL_TARGETS[@]}")

# Per target: Debian package of the cross gcc, GNU tool prefix, qemu-user binary, qemu -L root.
gcc_package() {
    case $1 in
        aarch64-unknown-linux-gnu | aarch64-unknown-linux-musl) echo gcc-aarch64-linux-gnu ;;
        armv7-unknown-linux-gnueabihf) echo gcc-arm-linux-gnueabihf ;;
    esac
}
tool_prefix() {
    case $1 in
        aarch64-*) echo aarch64-linux-gnu ;;
        armv7-*) echo arm-linux-gnueabihf ;;
    esac
}
qemu_cmd() {
    case $1 in
        aarch64-unknown-linux-gnu) echo "qemu-aarch64-static -L /usr/aarch64-linux-gnu" ;;
        armv7-unknown-linux-gnueabihf) echo "qemu-arm-static -L /usr/arm-linux-gnueabihf" ;;
        aarch64-unknown-linux-musl) echo "qemu-aarch64-static" ;;
    esac
}
is_musl() { [[ $1 == *-musl* ]]; }

for target in "${targets[@]}"; do
    [[ -n $(gcc_package "$target") ]] || {
        echo "cross-build.sh: unsupported target $target; supported: ${ALL_TARGETS[*]}" >&2
        exit 2
    }
done

have() { command -v "$1" >/dev/null 2>&1; }
have_zig() { have zig || python3 -m ziglang version >/dev/null 2>&1; }

# What is missing, as "kind:name" words.
missing() {
    local target apt=() rust=() other=()
    local installed_targets
    installed_targets=$(rustup target list --installed 2>/dev/null || true)
    for target in "${targets[@]}"; do
        have "$(tool_prefix "$target")-gcc" || apt+=("$(gcc_package "$target")")
        grep -qx "$target" <<<"$installed_targets" || rust+=("$target")
        if is_musl "$target"; then
            have cargo-zigbuild || other+=(pip:cargo-zigbuild)
            have_zig || other+=(pip:ziglang)
        fi
        if ((smoke)); then
            local qemu
            qemu=$(qemu_cmd "$target")
            have "${qemu%% *}" || apt+=(qemu-user-static)
        fi
    done
    ((deb)) && ! have cargo-deb && other+=(cargo:cargo-deb)
    printf 'apt:%s\n' "${apt[@]}" | sort -u | grep -v '^apt:$' || true
    printf 'rustup:%s\n' "${rust[@]}" | sort -u | grep -v '^rustup:$' || true
    printf '%s\n' "${other[@]}" | sort -u | grep -v '^$' || true
}

mapfile -t need < <(missing)
if ((${#need[@]})); then
    if ((install)); then
        apt=() rust=() pip=() crates=()
        for item in "${need[@]}"; do
            case $item in
                apt:*) apt+=("${item#apt:}") ;;
                rustup:*) rust+=("${item#rustup:}") ;;
                pip:*) pip+=("${item#pip:}") ;;
                cargo:*) crates+=("${item#cargo:}") ;;
            esac
        done
        sudo=""
        ((EUID == 0)) || sudo=sudo
        if ((${#apt[@]})); then
            echo "==> apt-get install ${apt[*]}"
            $sudo apt-get update -qq
            $sudo apt-get install -y -qq --no-install-recommends "${apt[@]}"
        fi
        if ((${#rust[@]})); then
            echo "==> rustup target add ${rust[*]}"
            rustup target add "${rust[@]}"
        fi
        if ((${#pip[@]})); then
            echo "==> pip install ${pip[*]}"
            python3 -m pip install --quiet "${pip[@]}"
        fi
        for crate in "${crates[@]}"; do
            echo "==> cargo install $crate"
            cargo install --locked "$crate"
        done
    else
        echo "cross-build.sh: missing: ${need[*]}" >&2
        echo "run with --install to install them (apt-get, rustup, pip, cargo install)" >&2
        exit 1
    fi
fi

human() { awk -v b="$1" 'BEGIN { printf "%.2f MiB", b / 1048576 }'; }

# The newest glibc symbol version a dynamically linked binary needs.
needs_glibc() {
    local objdump
    objdump="$(tool_prefix "$1")-objdump"
    have "$objdump" || return 0
    "$objdump" -T "$2" 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1
}

built=() summary=()
for target in "${targets[@]}"; do
    start=$(date +%s)
    if is_musl "$target"; then
        # zig links; the hot functions are not laid out together (link-ordered.sh needs lld).
        echo "==> cargo zigbuild --release -p wasmgate --target $target ${cargo_args[*]}"
        cargo zigbuild --release -p wasmgate --bin wasmgate --target "$target" "${cargo_args[@]}"
    else
        echo "==> boards/link-ordered.sh --target $target -- ${cargo_args[*]}"
        boards/link-ordered.sh --target "$target" -- "${cargo_args[@]}" >/dev/null
    fi
    seconds=$(($(date +%s) - start))
    binary="$TARGET_DIR/$target/release/wasmgate"
    mkdir -p "$DIST/$target"
    cp "$binary" "$DIST/$target/wasmgate"
    # The release profile strips already; strip again in case a caller's profile does not.
    "$(tool_prefix "$target")-strip" "$DIST/$target/wasmgate" 2>/dev/null || true
    size=$(stat -c %s "$DIST/$target/wasmgate")
    glibc=""
    is_musl "$target" || glibc=$(needs_glibc "$target" "$DIST/$target/wasmgate")
    summary+=("$(printf '%-32s %9d bytes  %-10s  built in %4ds  %s' \
        "$target" "$size" "$(human "$size")" "$seconds" "${glibc:+needs $glibc}")")
    built+=("$target")
done

echo
echo "Stripped binaries in ${DIST#"$ROOT"/}/<target>/wasmgate:"
printf '  %s\n' "${summary[@]}"

failed=0
if ((smoke)); then
    wasm=functions/examples/wasm/vending_telemetry.wasm
    event=functions/examples/vending-telemetry/event.json
    for target in "${built[@]}"; do
        read -r -a qemu <<<"$(qemu_cmd "$target")"
        binary="$DIST/$target/wasmgate"
        echo
        echo "==> smoke test $target under ${qemu[0]}"
        if version=$("${qemu[@]}" "$binary" --version) && [[ $version == wasmgate\ * ]]; then
            echo "  ok   --version: $version"
        else
            echo "  FAIL --version: ${version:-no output}"
            failed=1
        fi
        if out=$("${qemu[@]}" "$binary" invoke "$wasm" --event "$event" --json 2>&1) &&
            grep -q '"ok": true' <<<"$out" && grep -q 'telemetry/vending/vm-17' <<<"$out"; then
            echo "  ok   invoke $(basename "$wasm"): exit 0, ok, emitted telemetry/vending/vm-17"
        else
            echo "  FAIL invoke $(basename "$wasm") (exit or output):"
            sed 's/^/       /' <<<"$out"
            failed=1
        fi
    done
fi

if ((deb)); then
    for target in "${built[@]}"; do
        is_musl "$target" && continue
        echo
        echo "==> cargo deb --target $target"
        deb_file=$(cargo deb -p wasmgate --target "$target" --no-build --no-strip \
            --output "$DIST/$target/" | tail -1)
        echo "  $deb_file"
        dpkg-deb --info "$deb_file" | sed -n 's/^ \(Package\|Version\|Architecture\|Depends\|Installed-Size\):/  \1:/p'
        dpkg-deb --contents "$deb_file" | awk '{ print "  " $1, $3, $6 }'
    done
fi

exit "$failed"
