#!/usr/bin/env python3
"""bench/footprint.sh's driver (Python standard library only): for each N,
starts `wasmgate run` with N deployed functions (each its own trigger),
measures the time from spawn to readiness (the sd_notify READY=1 datagram,
sent once every function's subscription is acked), waits, then reads the idle
memory from /proc: VmRSS, smaps_rollup, RSS by mapping kind, threads, open
file descriptors. Prints a table and writes JSON.

    python3 bench/footprint.py --wasmgate BIN --wasm FN.wasm --work DIR \
        --broker-port PORT --counts 1 10 100 1000 --out footprint.json
"""
import argparse
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time


def leb128(n):
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def distinct_copy(wasm, work, i):
    """The module with a custom section naming copy i appended: the same code,
    a different file and content hash, so nothing is shared between functions."""
    path = os.path.join(work, "modules", f"{i}.wasm")
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        name, payload = b"copy", str(i).encode()
        body = leb128(len(name)) + name + payload
        with open(wasm, "rb") as src, open(path, "wb") as dst:
            dst.write(src.read() + b"\x00" + leb128(len(body)) + body)
    return path


def config(n, work, wasm, mode, port, warm=None, distinct=False):
    lines = [f'gateway_id = "fp{n}"', f'data_dir = "{work}/data-{mode}-{n}"', "", "[broker]"]
    if mode == "external":
        lines += ['mode = "external"', 'host = "127.0.0.1"', f"port = {port}"]
    else:
        lines += ['mode = "embedded"', f'listen = "127.0.0.1:{port}"']
    for i in range(n):
        lines += [
            "",
            "[[functions]]",
            f'name = "vending-{i}"',
            f'wasm = "{distinct_copy(wasm, work, i) if distinct else wasm}"',
            f'triggers = [{{ mqtt = "site-{i}/vending/+/telemetry", qos = 1 }}]',
        ]
        if warm is not None:
            lines.append(f"limits = {{ warm_instances = {warm} }}")
        lines += [
            "[functions.grants]",
            f'local = ["site-{i}/vending/+/alert"]',
            'upstream = ["telemetry/#"]',
        ]
    return "\n".join(lines) + "\n"


def read(path):
    with open(path) as f:
        return f.read()


def kib_fields(text):
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+):\s+(\d+) kB", text, re.M)}


def smaps_by_kind(pid, binary):
    """RSS (KiB) by mapping: the binary, [heap], [stack], anonymous, other files."""
    kinds = {}
    name = None
    for line in read(f"/proc/{pid}/smaps").splitlines():
        parts = line.split()
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            path = parts[5] if len(parts) > 5 else ""
            if path == "":
                name = "anonymous (mmap: thread stacks, large allocations, wasm memories)"
            elif path.startswith("["):
                name = path
            elif os.path.realpath(path) == os.path.realpath(binary):
                name = "the binary (text, data)"
            else:
                name = "other files (libc, ...)"
        elif parts and parts[0] == "Rss:" and name:
            kinds[name] = kinds.get(name, 0) + int(parts[1])
    return kinds


def measure(n, args, mode, port):
    work = args.work
    cfg = os.path.join(work, f"gateway-{mode}-{n}.toml")
    with open(cfg, "w") as f:
        f.write(config(n, work, args.wasm, mode, port, args.warm_instances, args.distinct_modules))
    sock_path = os.path.join(work, f"notify-{mode}-{n}.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(args.ready_timeout)
    env = dict(os.environ, NOTIFY_SOCKET=sock_path, RUST_LOG=os.environ.get("RUST_LOG", "info"))
    log_path = os.path.join(work, f"gateway-{mode}-{n}.log")
    log = open(log_path, "w")
    t0 = time.monotonic()
    proc = subprocess.Popen([args.wasmgate, "run", "--config", cfg], env=env, stderr=log, stdout=log)
    row = {"functions": n, "broker": mode, "pid": proc.pid}
    try:
        ready_s = None
        while True:
            try:
                msg = sock.recv(4096).decode()
            except socket.timeout:
                break
            if "READY=1" in msg:
                ready_s = time.monotonic() - t0
                break
        row["ready_s"] = ready_s
        if ready_s is None or proc.poll() is not None:
            row["error"] = f"not ready within {args.ready_timeout} s; see {log_path}"
            return row
        time.sleep(args.idle)
        status = kib_fields(read(f"/proc/{proc.pid}/status"))
        rollup = kib_fields(read(f"/proc/{proc.pid}/smaps_rollup"))
        row.update({
            "rss_kib": status.get("VmRSS"),
            "hwm_kib": status.get("VmHWM"),
            "rss_anon_kib": status.get("RssAnon"),
            "rss_file_kib": status.get("RssFile"),
            "vm_size_kib": status.get("VmSize"),
            "pss_kib": rollup.get("Pss"),
            "private_dirty_kib": rollup.get("Private_Dirty"),
            "threads": int(re.search(r"^Threads:\s+(\d+)", read(f"/proc/{proc.pid}/status"), re.M).group(1)),
            "fds": len(os.listdir(f"/proc/{proc.pid}/fd")),
            "rss_by_kind_kib": smaps_by_kind(proc.pid, args.wasmgate),
            "not_subscribed_warning": "not yet subscribed" in read(log_path),
        })
        t1 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
            row["stop_s"] = time.monotonic() - t1
        except subprocess.TimeoutExpired:
            row["stop_s"] = None
        return row
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        sock.close()
        os.unlink(sock_path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wasmgate", required=True)
    ap.add_argument("--wasm", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--broker-port", type=int, help="the external broker (mosquitto)")
    ap.add_argument("--embedded-port", type=int, help="also measure with the embedded broker on this port")
    ap.add_argument("--counts", type=int, nargs="+", default=[1, 10, 100, 1000])
    ap.add_argument("--idle", type=float, default=5.0)
    ap.add_argument("--warm-instances", type=int, help="each function's limits.warm_instances (default: the gateway's)")
    ap.add_argument("--distinct-modules", action="store_true",
                    help="give each function its own copy of the module (nothing shared)")
    ap.add_argument("--ready-timeout", type=float, default=120.0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    modes = []
    if a.broker_port:
        modes.append(("external", a.broker_port))
    if a.embedded_port:
        modes.append(("embedded", a.embedded_port))
    rows = []
    for mode, port in modes:
        for n in a.counts:
            print(f"== {mode} broker, {n} functions, load {os.getloadavg()[0]:.2f}", file=sys.stderr, flush=True)
            row = measure(n, a, mode, port)
            row["load_avg_1m"] = os.getloadavg()[0]
            rows.append(row)

    def per_fn(mode, n, key="rss_kib"):
        base = next((r for r in rows if r["broker"] == mode and r["functions"] == 1 and r.get(key)), None)
        r = next((r for r in rows if r["broker"] == mode and r["functions"] == n and r.get(key)), None)
        if not base or not r or n == 1:
            return None
        return (r[key] - base[key]) / (n - 1)

    print()
    print(f"{'broker':<10}{'functions':>10}{'ready s':>9}{'RSS MiB':>9}{'anon MiB':>9}{'PSS MiB':>9}"
          f"{'KiB/fn':>8}{'threads':>8}{'fds':>6}{'stop s':>8}")
    for r in rows:
        if "error" in r:
            print(f"{r['broker']:<10}{r['functions']:>10}  {r['error']}")
            continue
        r["rss_per_function_kib"] = per_fn(r["broker"], r["functions"])
        pf = r["rss_per_function_kib"]
        print(f"{r['broker']:<10}{r['functions']:>10}{r['ready_s']:>9.3f}{r['rss_kib'] / 1024:>9.1f}"
              f"{r['rss_anon_kib'] / 1024:>9.1f}{r['pss_kib'] / 1024:>9.1f}"
              f"{('-' if pf is None else f'{pf:.0f}'):>8}{r['threads']:>8}{r['fds']:>6}"
              f"{('-' if r['stop_s'] is None else format(r['stop_s'], '.2f')):>8}")
    print()
    for r in rows:
        if "rss_by_kind_kib" in r:
            kinds = ", ".join(f"{k.split(' (')[0]} {v / 1024:.1f}" for k, v in
                              sorted(r["rss_by_kind_kib"].items(), key=lambda kv: -kv[1]) if v >= 64)
            print(f"{r['broker']:<10}{r['functions']:>6} fns, RSS MiB by mapping: {kinds}")

    doc = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "arch": platform.machine(), "kernel": platform.release(),
                    "note": "shared VM; idle figures are little affected by load, ready_s is"},
        "binary_bytes": os.path.getsize(a.wasmgate),
        "wasm": a.wasm,
        "wasm_bytes": os.path.getsize(a.wasm),
        "idle_s": a.idle,
        "warm_instances": a.warm_instances,
        "distinct_modules": a.distinct_modules,
        "rows": rows,
    }
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=2)
    print(f"\nbinary {os.path.getsize(a.wasmgate):,} bytes; wrote {a.out}")


if __name__ == "__main__":
    main()
