"""Reads RUNS `wasmgate invoke --repeat N --json` reports (separated by
<<END>> lines) on stdin and prints one Markdown table row of medians."""
import json
import os
import statistics
import sys

label, module = sys.argv[1], sys.argv[2]
runs = [json.loads(t) for t in sys.stdin.read().split("<<END>>") if t.strip()]
med = lambda xs: int(statistics.median(xs))
cold = [r["invocations"][0] for r in runs]
warm = [i for r in runs for i in r["invocations"][1:]]
every = cold + warm
ok = "yes" if all(i["outcome"]["ok"] for i in every) else "NO: " + next(
    json.dumps(i["outcome"].get("error") or i["outcome"])[:80] for i in every if not i["outcome"]["ok"])
cells = [
    label,
    f"{os.path.getsize(module):,}",
    f"{med([r['deploy_us'] for r in runs]):,}",
    f"{med([i['cost']['fuel'] for i in cold]):,}",
    f"{med([i['cost']['duration_us'] for i in cold]):,}",
    f"{max(i['cost']['memory_bytes'] for i in every) / 1048576:.2f}",
    f"{med([i['cost']['fuel'] for i in warm]):,}",
    f"{med([i['cost']['duration_us'] for i in warm]):,}",
    ok,
]
print("| " + " | ".join(cells) + " |")
