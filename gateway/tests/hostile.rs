//! Hostile modules, generated: whatever a module is, deploying and invoking
//! it ends in a typed error (or success), never a panic or a crash, and a
//! healthy function still works after.
//!
//! Two generators share a time budget (WASMGATE_HOSTILE_SECS, 20 s by
//! default), each seeded from WASMGATE_HOSTILE_SEED (by default the clock);
//! the seed is printed first, so that a failure reproduces with
//! `WASMGATE_HOSTILE_SEED=<seed> cargo test -p wasmgate --test hostile`.
//!
//! - wasm-smith modules that import the host functions and export the ABI,
//!   with `wasmgate_abi_version` made to return 1 so that they get past the
//!   deploy and run;
//! - loops of millions of ops whose failure a guest can ignore (grows past
//!   every kind of limit, host calls with bad arguments, indirect calls and
//!   indirect tail calls), where one op that leaves a frame on the native
//!   stack overflows it (as `memory.grow` and `table.grow` did in wasmi
//!   2.0.0, and `call_indirect` and `return_call_indirect` in its release
//!   builds).

use arbitrary::Unstructured;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use wasmgate::runtime::{Function, FunctionSpec, Limits, LoadError, Report, Runtime};
use wasmgate_abi::{Event, MqttMessage, Seq};

/// A small, fast pseudo-random generator (xorshift64*), so that a seed
/// reproduces a run without another dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

const HOST_IMPORTS: &str = r#"(module
  (import "wasmgate" "event_read" (func (param i32 i32) (result i32)))
  (import "wasmgate" "emit" (func (param i32 i32 i32 i32 i32) (result i32)))
  (import "wasmgate" "kv_get" (func (param i32 i32 i32 i32) (result i32)))
  (import "wasmgate" "kv_put" (func (param i32 i32 i32 i32) (result i32)))
  (import "wasmgate" "kv_delete" (func (param i32 i32) (result i32)))
  (import "wasmgate" "kv_increment" (func (param i32 i32 i64 i32) (result i32)))
  (import "wasmgate" "log" (func (param i32 i32 i32)))
  (import "wasmgate" "now_ms" (func (result i64)))
  (import "wasmgate" "config_get" (func (param i32 i32 i32 i32) (result i32)))
  (import "wasmgate" "invoke" (func (param i32 i32 i32 i32) (result i32)))
  (import "wasmgate" "respond" (func (param i32 i32 i32) (result i32))))"#;

const ABI_EXPORTS: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "wasmgate_abi_version") (result i32) unreachable)
  (func (export "wasmgate_handle") (param i32) (result i32) unreachable))"#;

fn event() -> Event<'static> {
    Event::Mqtt(MqttMessage {
        topic: "in/topic",
        payload: b"{\"t\": 21.5}",
        qos: 1,
        retain: false,
        user_properties: Seq::empty(),
    })
}

/// Small budgets, so that a looping guest ends quickly.
fn limits() -> Limits {
    Limits {
        fuel: 2_000_000,
        memory_bytes: 2 << 20,
        timeout: Duration::from_millis(200),
        ..Limits::default()
    }
}

fn healthy() -> Vec<u8> {
    wat::parse_str(
        r#"(module (memory (export "memory") 1)
          (func (export "wasmgate_abi_version") (result i32) i32.const 1)
          (func (export "wasmgate_handle") (param i32) (result i32) i32.const 0))"#,
    )
    .expect("parses")
}

/// What became of one module.
#[derive(Debug, Default)]
struct Tally {
    modules: u64,
    refused: u64,
    ran: u64,
    succeeded: u64,
    /// How deploys and invocations failed, by kind.
    failures: std::collections::BTreeMap<String, u64>,
}

impl Tally {
    /// Deploys and invokes `wasm` twice (a cold and a warm start). Any
    /// `LoadError` or `Report` is fine: what matters is that one comes back.
    fn run(&mut self, runtime: &Runtime, wasm: &[u8]) {
        self.modules += 1;
        let mut spec = FunctionSpec::permissive("hostile");
        spec.limits = limits();
        let function: Result<Function, LoadError> = runtime.deploy(spec, wasm);
        let function = match function {
            Ok(function) => function,
            Err(error) => {
                self.refused += 1;
                let kind = format!("{error:?}");
                let kind = kind.split([' ', '{', '(']).next().unwrap_or("?");
                *self.failures.entry(format!("deploy: {kind}")).or_default() += 1;
                return;
            }
        };
        for request in 0..2 {
            let report: Report = function.invoke(request, 1, &event(), None);
            self.ran += 1;
            match report.outcome {
                Ok(_) => self.succeeded += 1,
                Err(error) => *self.failures.entry(error.kind().to_owned()).or_default() += 1,
            }
        }
    }
}

/// Makes the function `wasmgate_abi_version` exports return 1, replacing
/// its body; `None` if it is not a function of the module's own.
fn with_abi_version_one(wasm: &[u8]) -> Option<Vec<u8>> {
    use wasmparser::{ExternalKind, Parser, Payload, TypeRef};
    let mut imported_funcs = 0;
    let mut abi_func = None;
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.ok()? {
            Payload::ImportSection(imports) => {
                for import in imports {
                    if matches!(import.ok()?.ty, TypeRef::Func(_)) {
                        imported_funcs += 1;
                    }
                }
            }
            Payload::ExportSection(exports) => {
                for export in exports {
                    let export = export.ok()?;
                    if export.name == "wasmgate_abi_version" && export.kind == ExternalKind::Func {
                        abi_func = Some(export.index);
                    }
                }
            }
            _ => {}
        }
    }
    let abi_body = abi_func?.checked_sub(imported_funcs)?;

    let mut module = wasm_encoder::Module::new();
    let mut code: Option<(wasm_encoder::CodeSection, u32, u32)> = None;
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload.ok()?;
        match &payload {
            Payload::CodeSectionStart { count, .. } => {
                code = Some((wasm_encoder::CodeSection::new(), *count, 0));
                if *count == 0 {
                    module.section(&code.take()?.0);
                }
            }
            Payload::CodeSectionEntry(body) => {
                let (section, count, seen) = code.as_mut()?;
                if *seen == abi_body {
                    let mut one = wasm_encoder::Function::new([]);
                    one.instruction(&wasm_encoder::Instruction::I32Const(1))
                        .instruction(&wasm_encoder::Instruction::End);
                    section.function(&one);
                } else {
                    section.raw(&wasm[body.range()]);
                }
                *seen += 1;
                if seen == count {
                    module.section(&code.take()?.0);
                }
            }
            Payload::Version { .. } | Payload::End(_) => {}
            other => {
                let (id, range) = other.as_section()?;
                module.section(&wasm_encoder::RawSection {
                    id,
                    data: &wasm[range],
                });
            }
        }
    }
    Some(module.finish())
}

fn smith_config() -> wasm_smith::Config {
    let mut config = wasm_smith::Config {
        available_imports: Some(wat::parse_str(HOST_IMPORTS).expect("parses")),
        exports: Some(wat::parse_str(ABI_EXPORTS).expect("parses")),
        ..wasm_smith::Config::default()
    };
    // What wasmi 2.0 with wasmgate's features accepts (no SIMD, no memory64).
    config.gc_enabled = false;
    config.exceptions_enabled = false;
    config.simd_enabled = false;
    config.relaxed_simd_enabled = false;
    config.threads_enabled = false;
    config.memory64_enabled = false;
    config.custom_page_sizes_enabled = false;
    config.wide_arithmetic_enabled = false;
    config.max_memory32_bytes = 4 << 20;
    config.max_instructions = 2_000;
    config.max_funcs = 20;
    config
}

/// A wasm-smith module from `seed`'s bytes.
fn smith_module(rng: &mut Rng) -> Option<Vec<u8>> {
    let bytes = rng.bytes(16 << 10);
    let mut u = Unstructured::new(&bytes);
    let module = wasm_smith::Module::new(smith_config(), &mut u).ok()?;
    with_abi_version_one(&module.to_bytes())
}

/// Ops whose failure a guest can ignore, each leaving the stack as it was.
fn ignorable_op(rng: &mut Rng) -> String {
    let number = |rng: &mut Rng| {
        let n = *rng.pick(&["-1", "0", "1", "5", "9", "100000", "0x7fffffff"]);
        format!("(i32.const {n})")
    };
    let any = |rng: &mut Rng| match rng.below(3) {
        0 => "(global.get $zero)".to_owned(),
        1 => "(local.get 1)".to_owned(),
        _ => number(rng),
    };
    let (a, b) = (any(rng), any(rng));
    match rng.below(11) {
        9 => "(drop (call_indirect $bounded (type $unary) (local.get 1) (i32.const 0)))".to_owned(),
        10 => "(drop (call $chain (i32.const 100)))".to_owned(),
        0 => format!("(drop (memory.grow {a}))"),
        1 => format!("(drop (table.grow $bounded (ref.null func) {a}))"),
        2 => format!("(drop (table.grow $open (ref.null func) {a}))"),
        3 => format!("(drop (call $event_read {a} {b}))"),
        4 => format!("(drop (call $kv_get (i32.const 16) (i32.const 3) {a} {b}))"),
        5 => format!("(call $log (i32.const 2) {a} (i32.and {b} (i32.const 7)))"),
        6 => "(drop (call $now_ms))".to_owned(),
        7 => "(drop (memory.size))".to_owned(),
        _ => "(drop (table.size $open))".to_owned(),
    }
}

/// A handler that runs a few ignorable ops in a loop, `times` times.
fn grow_loop_module(rng: &mut Rng, times: u32) -> Vec<u8> {
    let ops: Vec<String> = (0..1 + rng.below(3)).map(|_| ignorable_op(rng)).collect();
    let memory_max = *rng.pick(&["", "2", "100"]);
    let text = format!(
        r#"(module
          (import "wasmgate" "event_read" (func $event_read (param i32 i32) (result i32)))
          (import "wasmgate" "kv_get" (func $kv_get (param i32 i32 i32 i32) (result i32)))
          (import "wasmgate" "log" (func $log (param i32 i32 i32)))
          (import "wasmgate" "now_ms" (func $now_ms (result i64)))
          (memory (export "memory") 1 {memory_max})
          (table $bounded 1 10 funcref)
          (table $open 1 funcref)
          (global $zero (mut i32) (i32.const 0))
          (data (i32.const 16) "key")
          (type $unary (func (param i32) (result i32)))
          (elem (table $bounded) (i32.const 0) func $inc)
          (elem (table $open) (i32.const 0) func $chain)
          (func $inc (param i32) (result i32) (i32.add (local.get 0) (i32.const 1)))
          ;; Tail-calls itself through the table, n times.
          (func $chain (param i32) (result i32)
            (if (i32.eqz (local.get 0)) (then (return (i32.const 0))))
            (return_call_indirect $open (type $unary)
              (i32.sub (local.get 0) (i32.const 1)) (i32.const 0)))
          (func (export "wasmgate_abi_version") (result i32) i32.const 1)
          (func (export "wasmgate_handle") (param i32) (result i32) (local i32)
            (local.set 1 (i32.const {times}))
            (loop $again
              {ops}
              (local.set 1 (i32.sub (local.get 1) (i32.const 1)))
              (br_if $again (local.get 1)))
            (i32.const 0)))"#,
        ops = ops.join("\n              ")
    );
    wat::parse_str(&text).unwrap_or_else(|e| panic!("generated WAT does not parse: {e}\n{text}"))
}

fn budget() -> Duration {
    let secs = std::env::var("WASMGATE_HOSTILE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    Duration::from_secs(secs)
}

fn seed() -> u64 {
    std::env::var("WASMGATE_HOSTILE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
        | 1
}

#[track_caller]
fn assert_healthy_still_serves(runtime: &Runtime) {
    let f = runtime
        .deploy(FunctionSpec::permissive("healthy"), &healthy())
        .expect("healthy guest deploys");
    let report = f.invoke(1, 1, &event(), None);
    assert!(report.outcome.is_ok(), "{:?}", report.outcome.err());
}

#[test]
fn generated_hostile_modules_end_in_a_typed_error_never_a_crash() {
    let seed = seed();
    println!("hostile modules: WASMGATE_HOSTILE_SEED={seed}");
    let mut rng = Rng(seed);
    let runtime = Runtime::new();
    let started = Instant::now();
    let (mut smith, mut loops) = (Tally::default(), Tally::default());
    // Half the time for each generator.
    while started.elapsed() < budget() {
        if started.elapsed() < budget() / 2 {
            if let Some(wasm) = smith_module(&mut rng) {
                smith.run(&runtime, &wasm);
            }
        } else {
            // Fuel runs out well before a million iterations of most ops;
            // loops that end first still ran long enough to overflow a stack.
            let wasm = grow_loop_module(&mut rng, 1_000_000);
            loops.run(&runtime, &wasm);
        }
    }
    println!("wasm-smith: {smith:?}\nignorable-op loops: {loops:?}");
    assert!(
        smith.modules > 0 && loops.modules > 0,
        "both generators ran"
    );
    assert!(smith.ran > 0, "some wasm-smith modules got past the deploy");
    assert_healthy_still_serves(&runtime);
}
