"""Shows how wasmi bills code that a branch skips. Each probe loops 1,000
times over 1,000 `local.set $j (i32.add ...)` operators placed one of three
ways, skipped (k = 0) or run (k = 1):

  block: after the `end` of a block that a `br_table` jumps to or past
         (what a C `switch` compiles to)
  loop:  the same code wrapped in a `loop` nothing branches back to
         (what `fuel-regions` does)
  if:    inside an `if` arm

  python3 bench/fuel_probe.py [path/to/wasmgate]   (needs wabt's wat2wasm)
"""
import json
import os
import subprocess
import sys
import tempfile

wasmgate = sys.argv[1] if len(sys.argv) > 1 else "/var/tmp/wasmgate-dev/debug/wasmgate"
body = "(local.set $j (i32.add (local.get $j) (i32.const 1)))\n" * 1000
shapes = {
    "block": "(block $done (block $c1 (block $c0 (br_table $c0 $c1 (local.get $k))) (br $done)) {body})",
    "loop": "(block $done (block $c1 (block $c0 (br_table $c0 $c1 (local.get $k))) (br $done)) (loop $w {body}))",
    "if": "(if (local.get $k) (then {body}))",
}
module = """(module
 (memory (export "memory") 1)
 (func (export "wasmgate_abi_version") (result i32) i32.const 1)
 (func (export "wasmgate_handle") (param $p i32) (result i32) (local $i i32) (local $j i32) (local $k i32)
  (local.set $k (i32.mul (local.get $p) (i32.const {k})))
  (loop $top
   {shape}
   (local.set $i (i32.add (local.get $i) (i32.const 1)))
   (br_if $top (i32.lt_u (local.get $i) (i32.const 1000))))
  i32.const 0))
"""
with tempfile.TemporaryDirectory() as tmp:
    event = os.path.join(tmp, "event.json")
    with open(event, "w") as f:
        f.write('{"mqtt": {"topic": "a/b", "payload": "x"}}')
    for name, shape in shapes.items():
        row = []
        for k in (0, 1):
            wat, wasm = os.path.join(tmp, "m.wat"), os.path.join(tmp, "m.wasm")
            with open(wat, "w") as f:
                f.write(module.format(k=k, shape=shape.format(body=body)))
            subprocess.run(["wat2wasm", wat, "-o", wasm], check=True)
            out = subprocess.run([wasmgate, "invoke", wasm, "--event", event, "--json"],
                                 capture_output=True, text=True, check=True).stdout
            cost = json.loads(out)["invocations"][0]["cost"]
            row.append(f"{['skipped', 'run'][k]} {cost['fuel']:>9,} fuel {cost['duration_us']:>5} µs")
        print(f"{name:6} " + "   ".join(row))
