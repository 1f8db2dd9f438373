#!/usr/bin/env python3
"""Module size, warm call time and fuel of the C, Zig and AssemblyScript
examples against the Rust examples they port, with the project's own tool:
`wasmgate invoke MODULE --event EVENT --repeat N --json` (one instance kept
warm, KV committed between calls, each call's fuel and duration reported).

    functions/examples/measure-languages.py [WASMGATE] [--repeat N] [--rounds R]

WASMGATE defaults to `wasmgate` on PATH. For each pair the two modules run
alternately, R rounds of N calls each; the time is the median over rounds of
each round's median warm call (the first call of a round is cold and left
out), the fuel the median warm call's (fuel is deterministic: the same in
every round). Prints a Markdown table.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

# (function, event, extra invoke args, [(language, module), ...]); Rust first.
PAIRS = [
    ("vending alert, hot (alert + summary)", "c-vending-alert/event-hot.json", [],
     [("Rust", "vending_telemetry"), ("C", "c_vending_alert")]),
    ("vending alert, normal with a sale (summary)", "c-vending-alert/event.json", [],
     [("Rust", "vending_telemetry"), ("C", "c_vending_alert")]),
    ("robot downsampler, parked (9 of 10 dropped)", "zig-downsampler/event.json", [],
     [("Rust", "robot_telemetry"), ("Zig", "zig_downsampler")]),
    ("robot downsampler, every_n=1 (each position sent)", "zig-downsampler/event.json",
     ["--set", "every_n=1"],
     [("Rust", "robot_telemetry"), ("Zig", "zig_downsampler")]),
    ("telemetry enrich", "as-enrich/event.json", [],
     [("Rust", "telemetry_enrich"), ("AssemblyScript", "as_enrich")]),
]


def run(wasmgate, module, event, extra, repeat):
    out = subprocess.run(
        [wasmgate, "invoke", module, "--event", event, "--json", "--repeat", str(repeat), *extra],
        check=False, capture_output=True, text=True,
        env={**os.environ, "NO_COLOR": "1"},
    )
    report = json.loads(out.stdout)
    calls = report["invocations"]
    assert all(c["outcome"]["ok"] for c in calls), f"{module}: a call failed"
    warm = [c["cost"] for c in calls if c["cost"]["start"] == "warm"]
    return (
        report["module_bytes"],
        statistics.median(c["duration_us"] for c in warm),
        statistics.median(c["fuel"] for c in warm),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("wasmgate", nargs="?", default="wasmgate")
    parser.add_argument("--repeat", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    print("| function | language | module | bytes | warm call (median µs) | fuel per warm call | against Rust (time, fuel, bytes) |")
    print("|---|---|---|---|---|---|---|")
    for function, event, extra, modules in PAIRS:
        results = {}
        for _ in range(args.rounds):
            for language, name in modules:
                path = os.path.join(HERE, "wasm", name + ".wasm")
                size, us, fuel = run(args.wasmgate, path, os.path.join(HERE, event), extra, args.repeat)
                entry = results.setdefault(name, {"language": language, "size": size, "us": [], "fuel": fuel})
                entry["us"].append(us)
        rust = results[modules[0][1]]
        rust_us = statistics.median(rust["us"])
        for language, name in modules:
            r = results[name]
            us = statistics.median(r["us"])
            ratio = "" if r is rust else (
                f"{us / rust_us:.2f}x, {r['fuel'] / rust['fuel']:.2f}x, {r['size'] / rust['size']:.2f}x")
            print(f"| {function} | {language} | `{name}.wasm` | {r['size']:,} | {us:g} "
                  f"| {r['fuel']:,.0f} | {ratio} |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
