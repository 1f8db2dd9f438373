#!/usr/bin/env python3
"""bench/schedules.sh's driver (Python standard library only): for each
count of schedules (1 and 10,000 by default), starts `wasmgate run` with one
function (vending-heartbeat) carrying that many schedule triggers, each its
own expression (`rate(61 minutes)`, `rate(62 minutes)`, ...: a schedule's
name is its expression, and none of them fires within the hour), then:

- times `wasmgate config check`, the spawn to READY=1 (sd_notify), and the
  spawn to every schedule's cursor being in the database (each new schedule
  commits its start time);
- waits until the process is idle (CPU below --idle-pct over 5 s);
- samples /proc/<pid> every second for --idle-secs: CPU per second (the
  threads' schedstat, in ns), RSS, threads, how often its threads ran; the
  embedded broker's child process too;
- stops it (SIGTERM; time to exit), starts it again on the same database
  (every cursor there now), and times that start too.

Prints a table and writes JSON.

    python3 bench/schedules.py --wasmgate BIN --wasm vending_heartbeat.wasm --work DIR \
        --counts 1 10000 --idle-secs 120 --out schedules.json
"""
import argparse
import json
import os
import platform
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time

TICKS = os.sysconf("SC_CLK_TCK")


def read(path):
    with open(path) as f:
        return f.read()


def cpu_ticks(pid):
    stat = read(f"/proc/{pid}/stat")
    fields = stat[stat.rfind(")") + 2:].split()
    return int(fields[11]) + int(fields[12])


def status_field(pid, name):
    m = re.search(rf"^{name}:\s+(\d+)", read(f"/proc/{pid}/status"), re.M)
    return int(m.group(1)) if m else None


def schedstat(pid):
    """(CPU ns, times scheduled in) summed over the threads of pid, from
    /proc/<pid>/task/*/schedstat: nanoseconds, where stat's utime and stime
    count 10 ms ticks, too coarse for an idle process."""
    ns = runs = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = read(f"/proc/{pid}/task/{tid}/schedstat").split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        ns += int(fields[0])
        runs += int(fields[2])
    return ns, runs


def children(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def expressions(n):
    return [f"rate({61 + i} minutes)" for i in range(n)]


def config(n, functions, work, wasm, port, tag):
    lines = [f'gateway_id = "sched{n}"', f'data_dir = "{work}/data-{tag}"', "",
             "[broker]", 'mode = "embedded"', f'listen = "127.0.0.1:{port}"']
    exprs = expressions(n)
    per = -(-n // functions)
    for f in range(functions):
        mine = exprs[f * per:(f + 1) * per]
        if not mine:
            break
        lines += ["", "[[functions]]", f'name = "heartbeat-{f}"', f'wasm = "{wasm}"', "triggers = ["]
        lines += [f'    {{ schedule = "{e}" }},' for e in mine]
        lines += ["]", "[functions.grants]", 'upstream = ["heartbeat/#"]']
    return "\n".join(lines) + "\n"


def cursors(db):
    """Rows in the schedules table; None while the database is not there."""
    if not os.path.exists(db):
        return None
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return con.execute("SELECT count(*) FROM schedules").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return None


def start(args, cfg, log_path, sock_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if os.path.exists(sock_path):
        os.unlink(sock_path)
    sock.bind(sock_path)
    env = dict(os.environ, NOTIFY_SOCKET=sock_path, RUST_LOG=os.environ.get("RUST_LOG", "info"))
    log = open(log_path, "a")
    t0 = time.monotonic()
    proc = subprocess.Popen([args.wasmgate, "run", "--config", cfg], env=env, stderr=log, stdout=log)
    return proc, sock, log, t0


def wait_ready(proc, sock, t0, timeout):
    sock.settimeout(0.5)
    while time.monotonic() - t0 < timeout:
        try:
            if "READY=1" in sock.recv(4096).decode():
                return time.monotonic() - t0
        except socket.timeout:
            if proc.poll() is not None:
                return None
    return None


def wait_cursors(db, n, t0, timeout):
    while time.monotonic() - t0 < timeout:
        if (cursors(db) or 0) >= n:
            return time.monotonic() - t0
        time.sleep(0.2)
    return None


def wait_idle(pid, pct, timeout):
    """Seconds until CPU over the last 5 s is below pct % of a core."""
    t0 = time.monotonic()
    window = [(time.monotonic(), cpu_ticks(pid))]
    while time.monotonic() - t0 < timeout:
        time.sleep(1)
        window.append((time.monotonic(), cpu_ticks(pid)))
        window = window[-6:]
        if len(window) == 6:
            (ta, ca), (tb, cb) = window[0], window[-1]
            if 100 * (cb - ca) / TICKS / (tb - ta) < pct:
                return time.monotonic() - t0
    return None


def sample_idle(pid, broker, secs):
    """Per-second CPU (ms) and RSS over secs, and the totals."""
    per_s, rss = [], []
    t_start = time.monotonic()
    (ns_start, runs_start), ticks_start = schedstat(pid), cpu_ticks(pid)
    b_start = schedstat(broker)[0] if broker else None
    last_t, last_ns = t_start, ns_start
    while time.monotonic() - t_start < secs:
        time.sleep(1)
        now, (ns, _) = time.monotonic(), schedstat(pid)
        per_s.append(round((ns - last_ns) / 1e6 / (now - last_t), 3))
        rss.append(status_field(pid, "VmRSS"))
        last_t, last_ns = now, ns
    wall = time.monotonic() - t_start
    (ns_end, runs_end), ticks_end = schedstat(pid), cpu_ticks(pid)
    out = {
        "secs": round(wall, 1),
        "cpu_ms_per_s": (ns_end - ns_start) / 1e6 / wall,
        "cpu_ms_per_s_from_ticks": 1000 * (ticks_end - ticks_start) / TICKS / wall,
        "cpu_ms_per_s_max_1s": max(per_s) if per_s else None,
        "runs_per_s": (runs_end - runs_start) / wall,
        "rss_kib_start": rss[0] if rss else None,
        "rss_kib_end": rss[-1] if rss else None,
        "rss_kib_max": max(rss) if rss else None,
        "threads": status_field(pid, "Threads"),
        "cpu_ms_each_second": per_s,
    }
    if broker:
        out["broker_cpu_ms_per_s"] = (schedstat(broker)[0] - b_start) / 1e6 / wall
        out["broker_rss_kib"] = status_field(broker, "VmRSS")
    return out


def stop(proc):
    t = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=120)
        return time.monotonic() - t
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


def sec(s):
    return "-" if s is None else f"{s:.2f}"


def measure(n, args, port):
    work = args.work
    tag = f"{n}"
    cfg = os.path.join(work, f"gateway-{tag}.toml")
    with open(cfg, "w") as f:
        f.write(config(n, args.functions, work, args.wasm, port, tag))
    row = {"schedules": n, "functions": min(args.functions, n), "config_bytes": os.path.getsize(cfg)}
    t = time.monotonic()
    check = subprocess.run([args.wasmgate, "config", "check", cfg], capture_output=True, text=True)
    row["config_check_s"] = time.monotonic() - t
    row["config_check"] = (check.stdout + check.stderr).strip().splitlines()[-1:] or [""]
    if check.returncode != 0:
        row["error"] = f"config check failed: {check.stdout}{check.stderr}"
        return row
    db = os.path.join(work, f"data-{tag}", "wasmgate.db")
    log_path = os.path.join(work, f"gateway-{tag}.log")
    sock_path = os.path.join(work, f"notify-{tag}.sock")
    proc, sock, log, t0 = start(args, cfg, log_path, sock_path)
    try:
        row["pid"] = proc.pid
        row["ready_s"] = wait_ready(proc, sock, t0, args.timeout)
        if row["ready_s"] is None:
            row["error"] = f"not ready within {args.timeout} s; see {log_path}"
            return row
        row["rss_kib_at_ready"] = status_field(proc.pid, "VmRSS")
        row["all_cursors_s"] = wait_cursors(db, n, t0, args.timeout)
        row["cursors"] = cursors(db)
        row["settle_s"] = wait_idle(proc.pid, args.idle_pct, args.timeout)
        row["rss_kib_hwm_start_up"] = status_field(proc.pid, "VmHWM")
        kids = children(proc.pid)
        broker = kids[0] if kids else None
        print(f"== {n} schedules: ready {row['ready_s']:.2f} s, cursors {row['cursors']}, idle after "
              f"{sec(row['settle_s'])} s more; sampling {args.idle_secs:.0f} s, load {os.getloadavg()[0]:.2f}",
              file=sys.stderr, flush=True)
        row["load_avg_1m_before"] = os.getloadavg()[0]
        row["idle"] = sample_idle(proc.pid, broker, args.idle_secs)
        row["load_avg_1m_after"] = os.getloadavg()[0]
        row["log_warnings"] = sum(1 for line in read(log_path).splitlines() if " WARN " in line or " ERROR " in line)
        row["stop_s"] = stop(proc)
        sock.close()

        # Again, on the same database: every cursor is there now.
        proc, sock, log2, t0 = start(args, cfg, log_path, sock_path)
        row["restart_ready_s"] = wait_ready(proc, sock, t0, args.timeout)
        row["restart_settle_s"] = wait_idle(proc.pid, args.idle_pct, args.timeout) if row["restart_ready_s"] else None
        row["restart_rss_kib"] = status_field(proc.pid, "VmRSS") if proc.poll() is None else None
        row["restart_stop_s"] = stop(proc)
        log2.close()
        return row
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        sock.close()
        if os.path.exists(sock_path):
            os.unlink(sock_path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wasmgate", required=True)
    ap.add_argument("--wasm", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--port", type=int, required=True, help="the embedded broker's port")
    ap.add_argument("--counts", type=int, nargs="+", default=[1, 10000])
    ap.add_argument("--functions", type=int, default=1, help="spread the schedules over this many functions")
    ap.add_argument("--idle-secs", type=float, default=120.0)
    ap.add_argument("--idle-pct", type=float, default=2.0)
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--built-from", default="", help="what the binary was built from (commit)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    rows = []
    for n in a.counts:
        rows.append(measure(n, a, a.port))

    def mib(kib):
        return "-" if kib is None else f"{kib / 1024:.1f}"

    print()
    print("| schedules | config check s | ready s | all cursors s | settle s | idle RSS MiB | RSS max at start-up MiB | "
          "idle CPU ms/s | busiest second ms | thread runs/s | threads | broker RSS MiB | broker CPU ms/s | stop s | restart ready s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['schedules']:,} | {r['error']} |")
            continue
        i = r["idle"]
        print(f"| {r['schedules']:,} | {sec(r['config_check_s'])} | {sec(r['ready_s'])} | {sec(r['all_cursors_s'])} | "
              f"{sec(r['settle_s'])} | {mib(i['rss_kib_end'])} | {mib(r['rss_kib_hwm_start_up'])} | "
              f"{i['cpu_ms_per_s']:.3f} | {i['cpu_ms_per_s_max_1s']:.2f} | {i['runs_per_s']:.1f} | {i['threads']} | "
              f"{mib(i.get('broker_rss_kib'))} | {i.get('broker_cpu_ms_per_s', 0):.3f} | {sec(r['stop_s'])} | "
              f"{sec(r['restart_ready_s'])} |")
    ok = [r for r in rows if "error" not in r]
    if len(ok) >= 2:
        lo, hi = ok[0], ok[-1]
        d = hi["schedules"] - lo["schedules"]
        if d > 0:
            per = (hi["idle"]["rss_kib_end"] - lo["idle"]["rss_kib_end"]) * 1024 / d
            print(f"\n{hi['schedules']:,} vs {lo['schedules']:,} schedules: idle RSS "
                  f"{hi['idle']['rss_kib_end'] / lo['idle']['rss_kib_end']:.2f}x ({per:,.0f} bytes per schedule), "
                  f"idle CPU {hi['idle']['cpu_ms_per_s']:.3f} vs {lo['idle']['cpu_ms_per_s']:.3f} ms/s")

    doc = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "built_from": a.built_from,
        "machine": {"cpus": os.cpu_count(), "arch": platform.machine(), "kernel": platform.release()},
        "binary": a.wasmgate,
        "binary_bytes": os.path.getsize(a.wasmgate),
        "wasm": a.wasm,
        "expressions": "rate(61 minutes), rate(62 minutes), ... (one per schedule)",
        "idle_secs": a.idle_secs,
        "idle_pct": a.idle_pct,
        "rows": rows,
    }
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=2)
    print(f"\nwrote {a.out}")


if __name__ == "__main__":
    main()
