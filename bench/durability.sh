#!/usr/bin/env bash
# What durability costs, in one run on one mosquitto: `wasmgate run` with the
# vending example under the same QoS 1 load, three ways:
#   full    data_dir on disk, store.synchronous = "full" (the default: fsync
#           before a message is acknowledged)
#   normal  data_dir on disk, synchronous = "normal" (fsync at checkpoints)
#   memory  data_dir on tmpfs (/dev/shm): the same code with storage in RAM,
#           the non-durable baseline
# For each: throughput and latency from `wasmgate bench`, and the fsync and
# fdatasync calls the gateway made, counted by strace (seccomp filter: only
# those calls stop the process), per 1,000 messages. Prints a table and the
# ratios against `memory`; writes JSON to bench/results/.
#
#   bench/durability.sh                   10,000 messages, flat out, 3 rounds
#   COUNT=5000 ROUNDS=1 bench/durability.sh
#
# The modes take turns (full, normal, memory, full, ...) for ROUNDS rounds, so
# that a shared machine's load swings hit all of them; the table shows each
# mode's median round.
#
# Needs: cargo, mosquitto, strace, python3.
# Settings (environment): COUNT (10000), ROUNDS (3), DEVICES (100), SETTLE (60 s),
# CARGO_TARGET_DIR (/var/tmp/wasmgate-target), MOSQUITTO, WASMGATE (a built
# binary to use instead of building one), MODES ("full normal memory").
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
COUNT=${COUNT:-10000}
DEVICES=${DEVICES:-100}
SETTLE=${SETTLE:-60}
MODES=${MODES:-full normal memory}
ROUNDS=${ROUNDS:-3}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/wasmgate-target}
WASM="$ROOT/functions/examples/wasm/vending_telemetry.wasm"

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

command -v strace >/dev/null || { echo "strace is needed: apt-get install strace" >&2; exit 2; }
wasmgate_binary
scratch WORK /var/tmp/wasmgate-durability.XXXXXX
scratch SHM /dev/shm/wasmgate-durability.XXXXXX
start_mosquitto "$WORK" "max_queued_messages 0
max_inflight_messages 1000"

for round in $(seq "$ROUNDS"); do
for mode in $MODES; do
    run="$mode-$round"
    case $mode in
        full) data="$WORK/data-full" sync=full ;;
        normal) data="$WORK/data-normal" sync=normal ;;
        memory) data="$SHM/data" sync=normal ;;
        *) echo "unknown mode $mode (full, normal, memory)" >&2; exit 2 ;;
    esac
    rm -rf "$data"
    mkdir -p "$data"
    cat > "$WORK/$mode.toml" <<TOML
gateway_id = "bench-$mode-$round"
data_dir = "$data"

[broker]
mode = "external"
host = "127.0.0.1"
port = $PORT

[store]
synchronous = "$sync"

$(vending_function 1)
TOML
    "$WG" config check "$WORK/$mode.toml" >&2
    say "round $round, $mode: $data, synchronous = $sync"
    NO_COLOR=1 strace -f --seccomp-bpf -e trace=fsync,fdatasync -c -o "$WORK/$run.strace" \
        "$WG" run --config "$WORK/$mode.toml" 2> "$WORK/$run.log" &
    GW=$!
    PIDS+=("$GW")
    wait_for "$WORK/$run.log" "gateway running"
    GWPID=$(pgrep -P "$GW" | head -1)
    [ -n "$GWPID" ] || { echo "the gateway under strace is gone:" >&2; cat "$WORK/$run.log" >&2; exit 1; }
    "$WG" bench --broker "$BROKER" --count "$COUNT" --rate 0 --qos 1 \
        --devices "$DEVICES" --settle "$SETTLE" --label "$mode" --json \
        --results 'telemetry/#' --pid "$GWPID" > "$WORK/$run.json"
    kill -TERM "$GWPID"
    wait "$GW" || true
    grep "store totals" "$WORK/$run.log" | tail -1 > "$WORK/$run.totals" || true
done
done

mkdir -p "$RESULTS"
OUT="$RESULTS/durability-$STAMP.json"
python3 - "$WORK" "$OUT" "$COUNT" "$ROUNDS" $MODES <<'PY'
import json, os, platform, re, sys
work, out, count, rounds, modes = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5:]

def load(run):
    with open(os.path.join(work, f"{run}.json")) as f:
        r = json.load(f)
    calls = 0
    with open(os.path.join(work, f"{run}.strace")) as f:
        for line in f:
            parts = line.split()
            if parts and parts[-1] in ("fsync", "fdatasync"):
                calls += int(parts[3])
    totals = {}
    with open(os.path.join(work, f"{run}.totals")) as f:
        for k, v in re.findall(r"(\w+)=(\d+)", f.read()):
            totals[k] = int(v)
    return {"bench": r, "fsyncs": calls, "store": totals}

all_runs = {mode: [load(f"{mode}-{i}") for i in range(1, rounds + 1)] for mode in modes}
rows = {}
for mode, runs in all_runs.items():
    ranked = sorted(runs, key=lambda r: r["bench"]["out_rate"])
    rows[mode] = ranked[len(ranked) // 2]
    rows[mode]["rounds_out_rate"] = [r["bench"]["out_rate"] for r in runs]

print()
print(f"{'mode':<8}{'out/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'lost':>6}{'dup':>5}"
      f"{'fsyncs':>8}{'/1000 msg':>10}{'txns':>8}{'msgs/txn':>9}{'cpu %':>7}{'rss MiB':>9}")
for mode, row in rows.items():
    r, l = row["bench"], row["bench"]["latency"]
    p = r["processes"][0] if r["processes"] else {}
    txns = row["store"].get("transactions", 0)
    commits = row["store"].get("commits", 0)
    print(f"{mode:<8}{r['out_rate']:>9.0f}{l['p50_us']/1000:>9.2f}{l['p99_us']/1000:>9.2f}"
          f"{r['lost']:>6}{r['duplicates']:>5}{row['fsyncs']:>8}{1000*row['fsyncs']/count:>10.1f}"
          f"{txns:>8}{(commits/txns if txns else 0):>9.1f}{p.get('cpu_pct', 0):>7.0f}{p.get('rss_kib_max', 0)/1024:>9.1f}")
ratios = {}
if "memory" in rows and rows["memory"]["bench"]["out_rate"]:
    base = rows["memory"]["bench"]["out_rate"]
    print()
    for mode in modes:
        if mode != "memory":
            ratios[mode] = rows[mode]["bench"]["out_rate"] / base
            print(f"{mode} / memory throughput: {ratios[mode]:.2f}   "
                  f"(rounds: {', '.join(f'{x:.0f}' for x in rows[mode]['rounds_out_rate'])} vs "
                  f"{', '.join(f'{x:.0f}' for x in rows['memory']['rounds_out_rate'])} msg/s)")
doc = {
    "when": os.path.basename(out)[len("durability-"):-len(".json")],
    "machine": {"cpus": os.cpu_count(), "arch": platform.machine(), "kernel": platform.release(),
                "load": os.getloadavg()},
    "settings": {"count": count, "qos": 1, "rounds": rounds},
    "median_runs": rows,
    "all_runs": all_runs,
    "throughput_over_memory": ratios,
}
with open(out, "w") as f:
    json.dump(doc, f, indent=2)
print(f"\nwrote {out}")
PY
