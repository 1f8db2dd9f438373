#!/usr/bin/env python3
"""What a deploy costs on a running gateway (the control-plane issue's
Measure): the time from `wasmgate deploy` to the first event served by the
new version, the latency of the first 200 events after a second swap (to a
new version of telemetry-enrich) against the second before the first
(steady state), each event's latency being its result's arrival less the
send time the bench stamped in it,
and the resident memory each further version adds.

One gateway (embedded broker) runs telemetry-enrich on vending telemetry;
`wasmgate bench` loads it at RATE msg/s; mid-run, `wasmgate deploy` moves
it to vending-telemetry (94 KB; its results carry `sales_cents`, so the
first one is seen). Then DEPLOYS more deploys of distinct versions (the
same module with a custom section appended) report VmRSS after each.

    python3 bench/deploy.py --wasmgate target/release/wasmgate
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WASM = os.path.join(ROOT, "functions/examples/wasm")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def variant(src, dst, n):
    """The module at src with a custom section holding n: another version."""
    data = open(src, "rb").read()
    name = b"bench-variant"
    payload = bytes([len(name)]) + name + str(n).encode()
    size = len(payload)
    leb = bytearray()
    while True:
        byte = size & 0x7F
        size >>= 7
        leb.append(byte | (0x80 if size else 0))
        if not size:
            break
    open(dst, "wb").write(data + b"\x00" + bytes(leb) + payload)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wasmgate", required=True)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--deploys", type=int, default=10)
    ap.add_argument("--out")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="wasmgate-deploy-", dir="/var/tmp")
    port = free_port()
    config = os.path.join(work, "gateway.toml")
    open(config, "w").write(f"""data_dir = "{work}/data"
[broker]
listen = "127.0.0.1:{port}"
[[functions]]
name = "f"
wasm = "{WASM}/telemetry_enrich.wasm"
triggers = [{{ mqtt = "vending/+/telemetry" }}]
[functions.grants]
upstream = ["telemetry/#"]
local = ["vending/#"]
""")
    log = open(os.path.join(work, "gateway.log"), "w")
    gw = subprocess.Popen([args.wasmgate, "run", "--config", config], stderr=log)
    try:
        for _ in range(300):
            if "gateway running" in open(log.name).read():
                break
            time.sleep(0.1)
        # Every result with its arrival time (ns); the new version's carry sales_cents.
        sub = subprocess.Popen(
            ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-t", "telemetry/#", "-F", "%U %p"],
            stdout=subprocess.PIPE, text=True)
        lines = []
        threading.Thread(target=lambda: lines.extend(sub.stdout), daemon=True).start()
        time.sleep(0.5)
        bench = subprocess.Popen(
            [args.wasmgate, "bench", "--broker", f"127.0.0.1:{port}", "--count", str(args.rate * 8),
             "--rate", str(args.rate), "--qos", "1", "--settle", "3", "--json"],
            stdout=subprocess.PIPE, text=True)
        time.sleep(3)
        t0 = time.time()
        deploy = subprocess.run(
            [args.wasmgate, "deploy", "f", f"{WASM}/vending_telemetry.wasm", "--config", config],
            capture_output=True, text=True)
        t1 = time.time()
        print(deploy.stdout.strip() or deploy.stderr.strip(), file=sys.stderr)
        # A second swap, to a new version of telemetry-enrich (whose results
        # carry the bench's send time): the events sent after it returned
        # run on the new version, from its first.
        time.sleep(2.5)
        variant(f"{WASM}/telemetry_enrich.wasm", os.path.join(work, "enrich-2.wasm"), 2)
        back = subprocess.run(
            [args.wasmgate, "deploy", "f", os.path.join(work, "enrich-2.wasm"), "--config", config],
            capture_output=True, text=True)
        t2 = time.time()
        print(back.stdout.strip() or back.stderr.strip(), file=sys.stderr)
        report = json.loads(bench.communicate()[0])
        time.sleep(0.5)
        new = [float(l.split()[0]) for l in lines if "sales_cents" in l]
        first_new = min(new) if new else None
        # Each result's latency: its arrival at the subscriber less the send
        # time the bench stamped in it (sent_us, which telemetry-enrich
        # carries through). Steady state: what was sent in the second before
        # the first deploy; after the swap: the first 200 sent after the
        # second deploy returned.
        timed = []
        for l in lines:
            at, _, payload = l.partition(" ")
            try:
                sent = json.loads(payload).get("sent_us")
            except ValueError:
                continue
            if sent:
                timed.append((sent, float(at) * 1e6 - sent))
        timed.sort()
        steady = [lat for sent, lat in timed if (t0 - 1.0) * 1e6 <= sent < t0 * 1e6]
        after = [lat for sent, lat in timed if sent >= t2 * 1e6][:200]

        def pct(xs, p):
            xs = sorted(xs)
            return round(xs[min(len(xs) - 1, int(p * len(xs)))] / 1000, 2) if xs else None
        result = {
            "rate": args.rate,
            "module_bytes": os.path.getsize(f"{WASM}/vending_telemetry.wasm"),
            "deploy_command_ms": round((t1 - t0) * 1000, 1),
            "deploy_to_first_new_result_ms": round((first_new - t0) * 1000, 1) if first_new else None,
            "bench_p50_ms": report["latency"]["p50_us"] / 1000,
            "bench_p99_ms": report["latency"]["p99_us"] / 1000,
            "bench_max_ms": report["latency"]["max_us"] / 1000,
            "steady_p50_p99_max_ms": [pct(steady, 0.5), pct(steady, 0.99), pct(steady, 1.0)],
            "steady_results": len(steady),
            "after_swap_p50_p99_max_ms": [pct(after, 0.5), pct(after, 0.99), pct(after, 1.0)],
            "after_swap_results": len(after),
            "lost": report["lost"],
            "duplicates": report["duplicates"],
        }
        # Memory per further version.
        rss = [rss_kib(gw.pid)]
        for n in range(args.deploys):
            path = os.path.join(work, f"v{n}.wasm")
            variant(f"{WASM}/vending_telemetry.wasm", path, n)
            subprocess.run([args.wasmgate, "deploy", "f", path, "--config", config],
                           capture_output=True, check=True)
            time.sleep(0.2)
            rss.append(rss_kib(gw.pid))
        result["rss_kib_after_each_deploy"] = rss
        result["rss_kib_per_version"] = round((rss[-1] - rss[0]) / args.deploys, 1)
        print(json.dumps(result, indent=1))
        if args.out:
            json.dump(result, open(args.out, "w"), indent=1)
        sub.send_signal(signal.SIGTERM)
    finally:
        gw.send_signal(signal.SIGTERM)
        gw.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
