;; spin: a function that never returns, looping over many kinds of Wasm op
;; (calls, a tail call, an indirect call, loads and stores of every width,
;; bulk memory, globals, i64 and float arithmetic and conversions, select,
;; br_table, if, a host call, a memory.grow and a table.grow that fail)
;; until its fuel runs out.
;;
;; It checks that wasmi's tail-call dispatch compiled to jumps on this build
;; and target (see the `wasmi` entry in Cargo.toml): if one op's handler did
;; not, each run of it grows the native stack, and this loop overflows the
;; stack and aborts the process instead of ending in "out of fuel".
;;
;; Each op runs 100,000 times in a tight loop of its own. The gateway
;; leaves wasmi, and so unwinds the native stack, at the end of every fuel
;; slice (a million units): when every op ran once a pass (~150 units), a
;; leaking op ran only some 7,000 times a slice, about 1 MB of stack, and
;; spin did not catch memory.grow's and table.grow's leak in wasmi 2.0.0
;; (vendor/wasmi/UPSTREAM.md; now first, with a store and a load that
;; leaked on aarch64, as the leaks found so far). Even
;; split across two slices, 50,000 frames of 176 bytes are 8.8 MB, more than
;; a main thread's 8 MiB. boards/check-tail-calls.py is the thorough check.
;; gateway/tests/sandbox.rs runs it in every test build; boards/qemu-smoke.sh
;; runs the committed spin.wasm on each ARM binary.
;;
;; After editing, regenerate spin.wasm with:
;;   WASMGATE_BLESS=1 cargo test -p wasmgate --test sandbox -- spin
(module
  (import "wasmgate" "event_read" (func $event_read (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "wasmgate_abi_version") (result i32) i32.const 1)
  (type $unary (func (param i32) (result i32)))
  (table 2 funcref)
  (elem (i32.const 0) $inc $double)
  (global $acc (mut i64) (i64.const 1))
  (func $inc (param i32) (result i32) (i32.add (local.get 0) (i32.const 1)))
  (func $double (param i32) (result i32) (i32.shl (local.get 0) (i32.const 1)))
  (func $tail (param i32) (result i32) (return_call $inc (local.get 0)))
  (func $mixed (param i32 i64 f32 f64) (result i64)
    (i64.add
      (i64.extend_i32_s (i32.extend8_s (local.get 0)))
      (i64.add (local.get 1)
        (i64.trunc_sat_f64_s (f64.add (local.get 3) (f64.promote_f32 (local.get 2)))))))
  (func (export "wasmgate_handle") (param i32) (result i32) (local i32 i32)
    (local.set 1 (i32.const 0))
    (loop $again
      (local.set 2 (i32.const 100000))
      (loop $op
        (drop (memory.grow (i32.const -1)))
        (br_if $op (local.tee 2 (i32.sub (local.get 2) (i32.const 1)))))
      (local.set 2 (i32.const 100000))
      (loop $op
        (drop (table.grow (ref.null func) (i32.const 100000)))
        (br_if $op (local.tee 2 (i32.sub (local.get 2) (i32.const 1)))))
      ;; A store and a load at an address in a register: on aarch64 builds
      ;; without LTO these called the next handler (UPSTREAM.md).
      (local.set 2 (i32.const 100000))
      (loop $op
        (i32.store (i32.and (local.get 2) (i32.const 0xff00)) (local.get 2))
        (br_if $op (local.tee 2 (i32.sub (local.get 2) (i32.const 1)))))
      (local.set 2 (i32.const 100000))
      (loop $op
        (local.set 1 (i32.add (local.get 1)
          (i32.wrap_i64 (i64.load8_u (i32.and (local.get 2) (i32.const 0xff00))))))
        (br_if $op (local.tee 2 (i32.sub (local.get 2) (i32.const 1)))))
      (local.set 2 (i32.const 100000))
      (loop $op
        (local.set 1 (call $inc (local.get 1)))
        (br_if $op (local.tee 2 (i32.sub (local.get 2) (i32.const 1)))))
      (local.set 2 (i32.const 100000))
      (loop $op
        (local.set 1 (call $tail (local.get 1)))
        (br_if $op (local.tee 2 (i32.sub (local.get 2) (i32.const 1)))))
      (local.set 2 (i32.const 100000))
      (loop $op
        (local.set 1 (call_indirect (type $unary) (local.get 1)
          (i32.and (local.get 1) (i32.const 1))))
        (br_if $op (local.tee 2 (i32.sub (local.get 2) (i32.const 1)))))
      (local.set 2 (i32.const 100000))
      (loop $op
        (local.set 1 (i32.and (local.get 1) (i32.const 0xffff)))
        (br_if $op (local.tee 2 (i32.sub (local.get 2) (i32.const 1)))))
      (local.set 2 (i32.const 100000))
      (loop $op
        (i32.store (i32.const 64) (local.get 1))
        (br_if $op (local.tee 2 (i32.sub (local.get 2) (i32.const 1)))))
      (local.set 2 (i32.const 100000))
      (loop $op
        (i64.store (i32.const 72) (i64.extend_i32_u (i32.load (i32.const 64))))
        (br_if $op (local.tee 2 (i32.sub (local.get 2) (i32.const 1)))))
      (local.set 2 (i32.const 100000))
      (loop $op
        (i32.store8 (i32.const 80) (i32.load8_u (i32.const 64)))
        (br_if $op (local.tee 2 (i32.sub (local.get 2) (i32.const 1)))))
      (local.set 2 (i32.const 100000))
      (loop $op
        (i32.store16 (i32.const 82) (i32.load16_s (i32.const 72)))
        (br_if $op (local.tee 2 (i32.sub (local.get 2) (i32.const 1)))))
      (local.set 2 (i32.const 100000))
      (loop $op
        (memory.copy (i32.const 128) (i32.const 64) (i32.const 24))
        (br_if $op (local.tee 2 (i32.sub (local.get 2) (i32.const 1)))))
      (local.set 2 (i32.const 100000))
      (loop $op
        (memory.fill (i32.const 256) (local.get 1) (i32.const 32))
        (br_if $op (local.tee 2 (i32.sub (local.get 2) (i32.const 1)))))
      (local.set 2 (i32.const 100000))
      (loop $op
        (global.set $acc (i64.xor (global.get $acc)
          (call $mixed (local.get 1) (i64.load (i32.const 72))
            (f32.convert_i32_u (local.get 1)) (f64.sqrt (f64.convert_i32_s (local.get 1))))))
        (br_if $op (local.tee 2 (i32.sub (local.get 2) (i32.const 1)))))
      (local.set 2 (i32.const 100000))
      (loop $op
        (f64.store (i32.const 96) (f64.mul (f64.load (i32.const 96)) (f64.const 0.5)))
        (br_if $op (local.tee 2 (i32.sub (local.get 2) (i32.const 1)))))
      (local.set 2 (i32.const 100000))
      (loop $op
        (f32.store (i32.const 104) (f32.demote_f64 (f64.load (i32.const 96))))
        (br_if $op (local.tee 2 (i32.sub (local.get 2) (i32.const 1)))))
      (local.set 2 (i32.const 100000))
      (loop $op
        (local.set 1 (select (local.get 1) (i32.const 7)
          (i32.ne (i32.rem_u (local.get 1) (i32.const 5)) (i32.const 0))))
        (br_if $op (local.tee 2 (i32.sub (local.get 2) (i32.const 1)))))
      (local.set 2 (i32.const 100000))
      (loop $op
        (block $a (block $b (block $c
          (br_table $a $b $c (i32.rem_u (local.get 1) (i32.const 3))))
          (local.set 1 (i32.div_u (local.get 1) (i32.const 2))))
          (local.set 1 (i32.rotl (local.get 1) (i32.const 3))))
        (br_if $op (local.tee 2 (i32.sub (local.get 2) (i32.const 1)))))
      (local.set 2 (i32.const 100000))
      (loop $op
        (if (i32.eqz (i32.and (local.get 1) (i32.const 1)))
          (then (local.set 1 (i32.popcnt (local.get 1))))
          (else (local.set 1 (i32.clz (local.get 1)))))
        (br_if $op (local.tee 2 (i32.sub (local.get 2) (i32.const 1)))))
      (local.set 2 (i32.const 100000))
      (loop $op
        (drop (call $event_read (i32.const 512) (i32.const 64)))
        (br_if $op (local.tee 2 (i32.sub (local.get 2) (i32.const 1)))))
      (br_if $again (i32.const 1)))
    (i32.const 0)))
