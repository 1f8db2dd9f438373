#!/usr/bin/env bash
# Checks a built wasmgate .deb holds what a Pi user expects from
# `apt install ./wasmgate_*.deb`: the binary, the systemd unit, the default
# config (as a conffile, so upgrades keep local edits), and the example functions.
set -euo pipefail
deb=$1
contents=$(dpkg-deb -c "$deb" | awk '{print $6}')
missing=0
for path in \
  ./usr/bin/wasmgate \
  ./usr/lib/systemd/system/wasmgate.service \
  ./etc/wasmgate/gateway.toml \
  ./etc/default/wasmgate \
  ./usr/share/wasmgate/functions/vending_telemetry.wasm \
  ./usr/share/wasmgate/functions/robot_telemetry.wasm \
  ./usr/share/wasmgate/functions/hello_http.wasm; do
  grep -qx -- "$path" <<<"$contents" || { echo "check-deb: $deb lacks $path" >&2; missing=1; }
done
conffiles=$(dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles 2>/dev/null || true)
grep -qx /etc/wasmgate/gateway.toml <<<"$conffiles" || { echo "check-deb: /etc/wasmgate/gateway.toml is not a conffile" >&2; missing=1; }
[ "$missing" = 0 ] || exit 1
echo "check-deb: $(basename "$deb") ok ($(dpkg-deb -f "$deb" Architecture), $(du -h "$deb" | cut -f1))"
