#!/usr/bin/env python3
"""bench/compare.sh's report: reads the runs in its work directory, prints a
table and the ratios, writes one JSON document and an SVG plot. Python
standard library only.

Files read from --work, for each QoS Q and contestant NAME (echo,
passthrough; wasmgate and node-red running the enrichment; wasmgate-vending
and node-red-vending running vending-telemetry):
  qQ-NAME-flat.json, qQ-NAME-rate.json   `wasmgate bench --json` reports
  qQ-NAME-idle.txt                       VmRSS (KiB) before the load, one per pid
  qQ-NAME-{flat,rate}.load               1-minute load average at the start
"""
import argparse
import html
import json
import math
import os
import platform
import time

CONTESTANTS = [
    ("echo", "broker echo"),
    ("passthrough", "pass-through (Rust)"),
    ("wasmgate", "wasmgate, enrich"),
    ("node-red", "Node-RED, enrich"),
    ("wasmgate-vending", "wasmgate, vending"),
    ("node-red-vending", "Node-RED, vending"),
]
COLOURS = {"echo": "#9e9e9e", "passthrough": "#4c78a8", "wasmgate": "#f58518", "node-red": "#b5182b",
           "wasmgate-vending": "#fdbf6f", "node-red-vending": "#e377c2"}
# Ratios printed: (wasmgate contestant, the one it is measured against).
PAIRS = [
    ("wasmgate", "passthrough"),
    ("wasmgate", "node-red"),
    ("wasmgate-vending", "passthrough"),
    ("wasmgate-vending", "node-red-vending"),
]


def read_json(path):
    with open(path) as f:
        return json.load(f)


def read_text(path, default=None):
    try:
        with open(path) as f:
            return f.read().strip()
    except FileNotFoundError:
        return default


def own(report, name):
    """The process under test: for the echo, the broker; otherwise the first pid."""
    procs = report.get("processes") or []
    return procs[0] if procs else None


def collect(work, qos_levels):
    out = {}
    for q in qos_levels:
        for name, _ in CONTESTANTS:
            base = os.path.join(work, f"q{q}-{name}")
            if not os.path.exists(base + "-flat.json"):
                continue
            flat, rate = read_json(base + "-flat.json"), read_json(base + "-rate.json")
            idle = [int(x) for x in (read_text(base + "-idle.txt", "") or "").split()]
            pf, pr = own(flat, name), own(rate, name)
            rss_load = max(p["rss_kib_max"] for p in (pf, pr) if p) if pf else None
            out[(q, name)] = {
                "qos": q,
                "contestant": name,
                "label": flat["label"],
                "throughput": flat["out_rate"],
                "in_rate_flat": flat["in_rate"],
                "p50_flat_ms": flat["latency"]["p50_us"] / 1000,
                "p99_flat_ms": flat["latency"]["p99_us"] / 1000,
                "p50_ms": rate["latency"]["p50_us"] / 1000,
                "p99_ms": rate["latency"]["p99_us"] / 1000,
                "max_ms": rate["latency"]["max_us"] / 1000,
                "rate_achieved": rate["out_rate"],
                "lost": flat["lost"] + rate["lost"],
                "duplicates": flat["duplicates"] + rate["duplicates"],
                "rss_idle_kib": idle[0] if idle else None,
                "rss_load_kib": rss_load,
                # CPU seconds of the process under test per 1,000 outputs, flat out.
                "cpu_ms_per_msg": (pf["cpu_s"] * 1000 / flat["outputs"]) if pf and flat["outputs"] else None,
                "cpu_pct_flat": pf["cpu_pct"] if pf else None,
                "load_avg": [float(read_text(base + f"-{m}.load", "nan")) for m in ("flat", "rate")],
                "runs": {"flat": flat, "rate": rate},
            }
    return out


def ratio(a, b):
    return a / b if a is not None and b else None


def fmt(x, spec=".2f"):
    return "-" if x is None else format(x, spec)


def print_table(rows, rate):
    print()
    head = (f"{'QoS':<4}{'contestant':<30}{'thru msg/s':>11}{'p50 ms':>8}{'p99 ms':>8}"
            f"{'flat p99':>9}{'lost':>6}{'dup':>5}{'cpu ms/msg':>11}{'RSS idle':>9}{'RSS load':>9}{'load':>6}")
    print(f"throughput flat out; p50/p99 at {rate:.0f} msg/s; RSS in MiB (echo: the broker's)")
    print(head)
    for (q, name), r in sorted(rows.items(), key=lambda kv: (kv[0][0], [c for c, _ in CONTESTANTS].index(kv[0][1]))):
        idle = r["rss_idle_kib"] / 1024 if r["rss_idle_kib"] else None
        load = r["rss_load_kib"] / 1024 if r["rss_load_kib"] else None
        print(f"{q:<4}{r['label'][:29]:<30}{r['throughput']:>11.0f}{r['p50_ms']:>8.2f}{r['p99_ms']:>8.2f}"
              f"{r['p99_flat_ms']:>9.0f}{r['lost']:>6}{r['duplicates']:>5}{fmt(r['cpu_ms_per_msg'], '.3f'):>11}"
              f"{fmt(idle, '.1f'):>9}{fmt(load, '.1f'):>9}{r['load_avg'][0]:>6.2f}")


def ratios(rows, qos_levels):
    out = {}
    for q in qos_levels:
        for mine, other in PAIRS:
            w, o = rows.get((q, mine)), rows.get((q, other))
            if not w or not o:
                continue
            out[f"q{q}_{mine}_over_{other}"] = {
                "throughput": ratio(w["throughput"], o["throughput"]),
                "p50": ratio(w["p50_ms"], o["p50_ms"]),
                "p99": ratio(w["p99_ms"], o["p99_ms"]),
                "cpu_per_msg": ratio(w["cpu_ms_per_msg"], o["cpu_ms_per_msg"]),
                "rss_idle": ratio(w["rss_idle_kib"], o["rss_idle_kib"]),
                "rss_load": ratio(w["rss_load_kib"], o["rss_load_kib"]),
            }
    return out


def print_ratios(rs):
    print()
    print("ratios (throughput: higher is better for wasmgate; the rest: lower is)")
    for key, r in rs.items():
        print(f"  {key:<45} throughput {fmt(r['throughput'])}x  p50 {fmt(r['p50'])}x  p99 {fmt(r['p99'])}x"
              f"  cpu/msg {fmt(r['cpu_per_msg'])}x  rss idle {fmt(r['rss_idle'])}x  rss load {fmt(r['rss_load'])}x")


# ---------------------------------------------------------------- SVG

def nice_max(v):
    """The smallest 1, 2, 2.5 or 5 times a power of ten that is at least v."""
    if v <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(v))
    for step in (1, 2, 2.5, 5, 10):
        if step * power >= v:
            return step * power
    return 10 * power


def svg_panel(x0, y0, w, h, title, unit, groups, series, values, notes=None):
    """A grouped bar chart: one group per entry of `groups`, one bar per
    series; `notes` puts a red line of text over a bar (lost messages)."""
    notes = notes or {}
    parts = []
    e = html.escape
    parts.append(f'<text x="{x0 + w / 2}" y="{y0 + 16}" text-anchor="middle" font-weight="bold">{e(title)}</text>')
    left, top, bottom = x0 + 52, y0 + 28, y0 + h - 34
    right = x0 + w - 8
    vals = [v for v in values.values() if v is not None]
    vmax = nice_max((max(vals) if vals else 1.0) * 1.12)
    # Axis and grid: 4 ticks.
    parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="#333"/>')
    parts.append(f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#333"/>')
    for i in range(5):
        v = vmax * i / 4
        y = bottom - (bottom - top) * i / 4
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="#ddd"/>')
        label = f"{v:,.0f}" if vmax >= 20 else f"{v:.3f}".rstrip("0").rstrip(".")
        parts.append(f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" font-size="10">{label}</text>')
    parts.append(f'<text x="{x0 + 10}" y="{(top + bottom) / 2}" font-size="10" '
                 f'transform="rotate(-90 {x0 + 10} {(top + bottom) / 2})" text-anchor="middle">{e(unit)}</text>')
    gw = (right - left) / max(len(groups), 1)
    bw = (gw - 20) / max(len(series), 1)
    for gi, g in enumerate(groups):
        gx = left + gi * gw + 10
        parts.append(f'<text x="{gx + (gw - 20) / 2:.1f}" y="{bottom + 14}" text-anchor="middle" font-size="11">{e(g)}</text>')
        for si, s in enumerate(series):
            v = values.get((g, s))
            x = gx + si * bw
            if v is None:
                parts.append(f'<text x="{x + bw / 2:.1f}" y="{bottom - 4}" text-anchor="middle" font-size="9">n/a</text>')
                continue
            bh = (bottom - top) * v / vmax
            parts.append(f'<rect x="{x + 1:.1f}" y="{bottom - bh:.1f}" width="{bw - 2:.1f}" height="{bh:.1f}" '
                         f'fill="{COLOURS[s]}"><title>{e(s)} {e(g)}: {v:,.2f} {e(unit)}</title></rect>')
            label = f"{v:,.0f}" if v >= 100 else f"{v:.1f}" if v >= 1 else f"{v:.2f}"
            parts.append(f'<text x="{x + bw / 2:.1f}" y="{bottom - bh - 3:.1f}" text-anchor="middle" font-size="9">{label}</text>')
            if (g, s) in notes:
                parts.append(f'<text x="{x + bw / 2:.1f}" y="{bottom - bh - 14:.1f}" text-anchor="middle" '
                             f'font-size="9" fill="#c00">{e(notes[(g, s)])}</text>')
    return parts


def write_svg(path, rows, qos_levels, rate, subtitle):
    names = [c for c, _ in CONTESTANTS if any((q, c) in rows for q in qos_levels)]
    procs = [c for c in names if c != "echo"]
    groups = [f"QoS {q}" for q in qos_levels]

    def vals(key, scale=1.0, series=names):
        return {(f"QoS {q}", c): (rows[(q, c)][key] * scale if (q, c) in rows and rows[(q, c)][key] is not None else None)
                for q in qos_levels for c in series}

    lost = {(f"QoS {q}", c): f"lost {rows[(q, c)]['runs']['flat']['lost']:,}"
            for q in qos_levels for c in names
            if (q, c) in rows and rows[(q, c)]["runs"]["flat"]["lost"]}
    pw, ph = 460, 250
    panels = [
        ("Throughput, flat out (higher is better)", "msg/s", names, vals("throughput"), lost),
        (f"p50 latency at {rate:.0f} msg/s", "ms", names, vals("p50_ms"), None),
        (f"p99 latency at {rate:.0f} msg/s", "ms", names, vals("p99_ms"), None),
        ("CPU per message, flat out", "ms CPU / msg", procs, vals("cpu_ms_per_msg", series=procs), None),
        ("RSS idle", "MiB", procs, vals("rss_idle_kib", 1 / 1024, procs), None),
        ("RSS under load (max)", "MiB", procs, vals("rss_load_kib", 1 / 1024, procs), None),
    ]
    cols = 2
    rows_n = (len(panels) + cols - 1) // cols
    width, height = cols * pw + 20, rows_n * ph + 90
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="15" font-weight="bold">'
           f'wasmgate vs pass-through vs Node-RED on one mosquitto</text>',
           f'<text x="{width / 2}" y="38" text-anchor="middle" font-size="11">{html.escape(subtitle)}</text>']
    # Legend.
    lx = 20
    for c in names:
        label = dict(CONTESTANTS)[c]
        out.append(f'<rect x="{lx}" y="50" width="12" height="12" fill="{COLOURS[c]}"/>')
        out.append(f'<text x="{lx + 16}" y="60" font-size="11">{html.escape(label)}</text>')
        lx += 30 + 7 * len(label)
    for i, (title, unit, series, values, notes) in enumerate(panels):
        x0 = 10 + (i % cols) * pw
        y0 = 75 + (i // cols) * ph
        out += svg_panel(x0, y0, pw, ph, title, unit, groups, series, values, notes)
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--svg", required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--rate", type=float, required=True)
    ap.add_argument("--qos", type=int, nargs="+", required=True)
    ap.add_argument("--wasmgate", default="")
    ap.add_argument("--node-red", default="")
    ap.add_argument("--mosquitto", default="")
    a = ap.parse_args()

    rows = collect(a.work, a.qos)
    print_table(rows, a.rate)
    rs = ratios(rows, a.qos)
    print_ratios(rs)

    when = os.path.basename(a.out)[len("compare-"):-len(".json")]
    loads = [x for r in rows.values() for x in r["load_avg"]]
    machine = {
        "cpus": os.cpu_count(),
        "arch": platform.machine(),
        "kernel": platform.release(),
        "note": "shared VM: other builds and tests may run at the same time; compare ratios within one run",
        "load_avg_1m_min": min(loads) if loads else None,
        "load_avg_1m_max": max(loads) if loads else None,
    }
    doc = {
        "when": when,
        "machine": machine,
        "settings": {"count": a.count, "rate": a.rate, "qos": a.qos},
        "versions": {"node_red": a.node_red or None, "mosquitto": a.mosquitto,
                     "wasmgate_binary_bytes": os.path.getsize(a.wasmgate) if a.wasmgate and os.path.exists(a.wasmgate) else None},
        "summary": [{k: v for k, v in r.items() if k != "runs"} for r in rows.values()],
        "ratios": rs,
        "runs": {f"q{q}-{n}": r["runs"] for (q, n), r in rows.items()},
    }
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=2)
    subtitle = (f"{when}; {a.count:,} msgs per run; {machine['cpus']}-core shared VM ({machine['arch']}, "
                f"load avg {fmt(machine['load_avg_1m_min'])}-{fmt(machine['load_avg_1m_max'])}); "
                f"Node-RED {a.node_red or 'skipped'}")
    write_svg(a.svg, rows, a.qos, a.rate, subtitle)
    print(f"\nwrote {a.out}\nwrote {a.svg}")


if __name__ == "__main__":
    main()
