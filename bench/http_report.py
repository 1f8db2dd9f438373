#!/usr/bin/env python3
"""Collects what bench/http.sh measured: prints a table per round and the
ratios wasmgate / Node-RED and wasmgate / floor (issue 17's goals: >= 3x
Node-RED's requests/s, >= 0.5x the floor's), and writes one JSON file with
every report. Standard library only.

    python3 bench/http_report.py --work DIR --out bench/results/http-STAMP.json --rounds 1
    python3 bench/http_report.py --line DIR/r1-floor.json      one line about one report
"""
import argparse
import json
import os
import platform
import re
import statistics
import sys
import time

CONTESTANTS = ["floor", "wasmgate", "wasmgate-store", "node-red"]
GOALS = {"node-red": 3.0, "floor": 0.5}


def line(report: dict) -> str:
    lat = report["latency"]
    return (
        f"== {report['ok_per_s']:.0f} req/s, p50 {lat['p50_us'] / 1000:.2f} ms, "
        f"p99 {lat['p99_us'] / 1000:.2f} ms, non-2xx {report['non_2xx']}, "
        f"errors {sum(report['errors'].values())}"
    )


def summary(work: str, name: str) -> dict | None:
    path = os.path.join(work, f"{name}.json")
    if not os.path.exists(path):
        return None
    report = json.load(open(path))
    procs = report["processes"]
    server = procs[0] if procs else {}
    idle = []
    idle_path = os.path.join(work, f"{name}-idle.txt")
    if os.path.exists(idle_path):
        idle = [int(x) for x in open(idle_path).read().split()]
    idle_kib = idle[0] if idle else None
    # Every sampled process (wasmgate: the gateway and its broker child).
    cpu_s = sum(p["cpu_s"] for p in procs)
    cpu_pct = sum(p["cpu_pct"] for p in procs) if procs else None
    load_path = os.path.join(work, f"{name}.load")
    load = float(open(load_path).read().strip()) if os.path.exists(load_path) else None
    answered = report["answered"] or 1
    store = None
    store_path = os.path.join(work, f"{name}.store")
    if os.path.exists(store_path):
        text = open(store_path).read()
        fields = dict(re.findall(r"(\w+)=(\d+)", text))
        if "transactions" in fields and "commits" in fields:
            store = {k: int(v) for k, v in fields.items()}
    lat = report["latency"]
    return {
        "label": report["label"],
        "req_per_s": report["ok_per_s"],
        "answered": report["answered"],
        "ok": report["ok"],
        "non_2xx": report["non_2xx"],
        "statuses": report["statuses"],
        "errors": report["errors"],
        "p50_ms": lat["p50_us"] / 1000,
        "p90_ms": lat["p90_us"] / 1000,
        "p99_ms": lat["p99_us"] / 1000,
        "max_ms": lat["max_us"] / 1000,
        "server_cpu_pct": cpu_pct,
        "server_cpu_ms_per_req": 1000 * cpu_s / answered if procs else None,
        "rss_idle_mib": idle_kib / 1024 if idle_kib else None,
        "rss_load_max_mib": server["rss_kib_max"] / 1024 if server else None,
        "child_rss_idle_mib": [k / 1024 for k in idle[1:]],
        "child_rss_load_max_mib": [p["rss_kib_max"] / 1024 for p in procs[1:]],
        "bench_cpu_pct": report["bench"]["cpu_pct"],
        "load_1min": load,
        "answer": report.get("sample_body"),
        # The gateway's "store totals" at its stop (the whole run, warm-up and readiness probe included).
        "store": store,
        "report": report,
    }


def fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def table(round_name: str, rows: dict) -> str:
    out = [
        f"round {round_name}",
        "| contestant | req/s | p50 ms | p90 ms | p99 ms | max ms | non-2xx | errors | server CPU % | CPU ms/req | RSS idle MiB | RSS load MiB | bench CPU % | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        # Server CPU: every sampled process; RSS: the first (the server), a child's after a +.
    ]
    for name in CONTESTANTS:
        r = rows.get(name)
        if r is None:
            continue
        out.append(
            f"| {r['label']} | {r['req_per_s']:,.0f} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | {r['max_ms']:.1f} | {r['non_2xx']} | {sum(r['errors'].values())} | "
            f"{fmt(r['server_cpu_pct'], '.0f')} | {fmt(r['server_cpu_ms_per_req'], '.3f')} | "
            f"{fmt(r['rss_idle_mib'], '.1f')}{''.join(f' + {c:.1f}' for c in r['child_rss_idle_mib'])} | "
            f"{fmt(r['rss_load_max_mib'], '.1f')}{''.join(f' + {c:.1f}' for c in r['child_rss_load_max_mib'])} | "
            f"{r['bench_cpu_pct']:.0f} | {fmt(r['load_1min'], '.2f')} |"
        )
    for name in CONTESTANTS:
        r = rows.get(name)
        if r and r.get("store") and r["store"]["transactions"]:
            st = r["store"]
            out.append(
                f"{r['label']}: {st['commits']:,} commits in {st['transactions']:,} transactions "
                f"({st['commits'] / st['transactions']:.1f} per transaction, each an fsync)"
            )
    return "\n".join(out)


def ratios(rows: dict, me: str = "wasmgate") -> dict:
    wg = rows.get(me)
    out = {}
    if wg is None:
        return out
    for other in ("node-red", "floor"):
        o = rows.get(other)
        if o is None or not o["req_per_s"]:
            continue
        out[other] = {
            "req_per_s": wg["req_per_s"] / o["req_per_s"],
            "p50": wg["p50_ms"] / o["p50_ms"] if o["p50_ms"] else None,
            "p99": wg["p99_ms"] / o["p99_ms"] if o["p99_ms"] else None,
            "cpu_per_req": (
                wg["server_cpu_ms_per_req"] / o["server_cpu_ms_per_req"]
                if wg["server_cpu_ms_per_req"] and o["server_cpu_ms_per_req"]
                else None
            ),
            "goal": GOALS[other],
            "met": wg["req_per_s"] / o["req_per_s"] >= GOALS[other],
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--line", help="print one line about this report and stop")
    parser.add_argument("--work")
    parser.add_argument("--out")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--wasmgate", default="")
    parser.add_argument("--node-red", default="")
    parser.add_argument("--built-from", default="", help="what the binary was built from (commit)")
    parser.add_argument("--settings", default="", help="the script's settings, kept in the JSON")
    args = parser.parse_args()
    if args.line:
        print(line(json.load(open(args.line))))
        return
    if not args.work or not args.out:
        parser.error("--work and --out are needed (or --line)")

    rounds = []
    for i in range(1, args.rounds + 1):
        rows = {}
        for name in CONTESTANTS:
            s = summary(args.work, f"r{i}-{name}")
            if s is not None:
                rows[name] = s
        rounds.append({
            "round": i,
            "contestants": rows,
            "ratios": ratios(rows),
            "ratios_wasmgate_store": ratios(rows, "wasmgate-store"),
        })

    for r in rounds:
        print(table(str(r["round"]), r["contestants"]))
        for me, key in (("wasmgate", "ratios"), ("wasmgate-store", "ratios_wasmgate_store")):
            for other, q in r[key].items():
                print(
                    f"{me} / {other}: req/s {q['req_per_s']:.2f}x (goal >= {q['goal']}x: "
                    f"{'met' if q['met'] else 'NOT met'}), p50 {fmt(q['p50'], '.2f')}x, "
                    f"p99 {fmt(q['p99'], '.2f')}x, CPU per request {fmt(q['cpu_per_req'], '.2f')}x"
                )
        if "node-red" not in r["contestants"]:
            print("Node-RED: not in this run (skipped, or not in CONTESTANTS)")
        print()
    if len(rounds) > 1:
        for me, key in (("wasmgate", "ratios"), ("wasmgate-store", "ratios_wasmgate_store")):
            for other in ("node-red", "floor"):
                values = [r[key][other]["req_per_s"] for r in rounds if other in r[key]]
                if values:
                    print(
                        f"{me} / {other} over {len(values)} rounds: median {statistics.median(values):.2f}x, "
                        f"range {min(values):.2f}-{max(values):.2f}x"
                    )

    answers = {
        name: r["contestants"][name]["answer"] for r in rounds[:1] for name in r["contestants"]
    }
    print("answers:", json.dumps(answers))
    result = {
        "stamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "built_from": args.built_from,
        "settings": args.settings,
        "wasmgate_binary": args.wasmgate,
        "node_red": args.node_red or None,
        "node": os.popen("node --version 2>/dev/null").read().strip() or None,
        "machine": {
            "cpus": os.cpu_count(),
            "arch": platform.machine(),
            "kernel": platform.release(),
        },
        "rounds": rounds,
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
