//! A function can never take the gateway down: every way a guest can fail is
//! a typed, per-invocation error, nothing it did leaks out, and a healthy
//! function invoked right after still works.
//!
//! Fixtures are inline WAT, one behaviour each, as in wasmi's own tests.

use std::sync::Arc;
use std::time::Duration;
use wasmgate::runtime::{
    AbiViolation, Effects, Function, FunctionSpec, InvokeError, KvRead, Limits, LoadError,
    MemoryKv, Report, Runtime, Start,
};
use wasmgate_abi::{Event, MqttMessage, Seq};

/// A module that imports every host function, exports the ABI, keeps the
/// string "out/topic" at offset 0 and "key" at offset 16, and runs `body` as
/// its handler (the event length is local 0).
fn guest(body: &str) -> Vec<u8> {
    guest_with("", body)
}

fn guest_with(extra: &str, body: &str) -> Vec<u8> {
    wat(&format!(
        r#"(module
          (import "wasmgate" "emit" (func $emit (param i32 i32 i32 i32 i32) (result i32)))
          (import "wasmgate" "event_read" (func $event_read (param i32 i32) (result i32)))
          (import "wasmgate" "kv_get" (func $kv_get (param i32 i32 i32 i32) (result i32)))
          (import "wasmgate" "kv_put" (func $kv_put (param i32 i32 i32 i32) (result i32)))
          (import "wasmgate" "kv_increment" (func $kv_increment (param i32 i32 i64 i32) (result i32)))
          (import "wasmgate" "log" (func $log (param i32 i32 i32)))
          (memory (export "memory") 1)
          (data (i32.const 0) "out/topic")
          (data (i32.const 16) "key")
          (data (i32.const 32) "hello")
          (func (export "wasmgate_abi_version") (result i32) i32.const 1)
          {extra}
          (func (export "wasmgate_handle") (param i32) (result i32) (local i32) {body}))"#
    ))
}

#[track_caller]
fn wat(text: &str) -> Vec<u8> {
    wat::parse_str(text).unwrap_or_else(|e| panic!("fixture does not parse: {e}\n{text}"))
}

/// Emits "hello" to "out/topic" and returns 0.
const EMIT_HELLO: &str =
    "(drop (call $emit (i32.const 0) (i32.const 9) (i32.const 32) (i32.const 5) (i32.const 1)))";

fn event() -> Event<'static> {
    Event::Mqtt(MqttMessage {
        topic: "in/topic",
        payload: b"{}",
        qos: 1,
        retain: false,
        user_properties: Seq::empty(),
    })
}

struct Gateway {
    runtime: Runtime,
    healthy: Function,
}

impl Gateway {
    fn new() -> Self {
        let runtime = Runtime::new();
        let healthy = runtime
            .deploy(
                FunctionSpec::permissive("healthy"),
                &guest(&format!("{EMIT_HELLO} (i32.const 0)")),
            )
            .expect("healthy guest deploys");
        Gateway { runtime, healthy }
    }

    #[track_caller]
    fn deploy(&self, wasm: &[u8]) -> Function {
        self.deploy_with(Limits::default(), wasm)
    }

    #[track_caller]
    fn deploy_with(&self, limits: Limits, wasm: &[u8]) -> Function {
        let mut spec = FunctionSpec::permissive("guest");
        spec.limits = limits;
        self.runtime.deploy(spec, wasm).expect("guest deploys")
    }

    /// The healthy function still runs and emits exactly what it should.
    #[track_caller]
    fn assert_still_serving(&self) {
        let report = self.healthy.invoke(1, 1, &event(), None);
        let effects = report.outcome.expect("healthy function still works");
        assert_eq!(effects.emits.len(), 1);
        assert_eq!(effects.emits[0].topic, "out/topic");
        assert_eq!(effects.emits[0].payload, b"hello");
    }
}

#[track_caller]
fn invoke(function: &Function) -> Report {
    function.invoke(7, 1, &event(), None)
}

#[track_caller]
fn expect_error(report: Report) -> InvokeError {
    match report.outcome {
        Ok(effects) => panic!("expected a failure, got effects {effects:?}"),
        Err(e) => e,
    }
}

#[test]
fn healthy_function_hands_back_its_effects() {
    let gw = Gateway::new();
    gw.assert_still_serving();
}

#[test]
fn trap_commits_nothing_but_keeps_the_logs() {
    let gw = Gateway::new();
    let f = gw.deploy(&guest(&format!(
        "{EMIT_HELLO}
         (drop (call $kv_put (i32.const 16) (i32.const 3) (i32.const 32) (i32.const 5)))
         (call $log (i32.const 0) (i32.const 32) (i32.const 5))
         unreachable"
    )));
    let report = invoke(&f);
    assert_eq!(
        report.logs.len(),
        1,
        "the log line written before the trap survives"
    );
    assert_eq!(report.logs[0].message, "hello");
    let error = expect_error(report);
    assert!(
        matches!(&error, InvokeError::Trap { function, .. } if function == "guest"),
        "{error}"
    );
    assert!(
        error.to_string().contains("guest"),
        "the error names the function: {error}"
    );
    gw.assert_still_serving();
}

#[test]
fn non_zero_return_discards_effects() {
    let gw = Gateway::new();
    let f = gw.deploy(&guest(&format!("{EMIT_HELLO} (i32.const 42)")));
    let error = expect_error(invoke(&f));
    assert!(
        matches!(error, InvokeError::Failed { code: 42, .. }),
        "{error}"
    );
    gw.assert_still_serving();
}

/// The default limits with this fuel and wall-clock budget.
fn budget(fuel: u64, timeout: Duration) -> Limits {
    Limits {
        fuel,
        timeout,
        ..Limits::default()
    }
}

#[test]
fn infinite_loop_in_the_handler_runs_out_of_fuel() {
    let gw = Gateway::new();
    let limits = budget(3_000_000, Duration::from_secs(60));
    let f = gw.deploy_with(
        limits,
        &guest(&format!("{EMIT_HELLO} (loop (br 0)) (i32.const 0)")),
    );
    let report = invoke(&f);
    assert!(
        report.cost.fuel >= 3_000_000,
        "spent the whole budget: {:?}",
        report.cost
    );
    let error = expect_error(report);
    assert!(
        matches!(
            error,
            InvokeError::OutOfFuel {
                fuel: 3_000_000,
                ..
            }
        ),
        "{error}"
    );
    gw.assert_still_serving();
}

const SPIN_WAT: &str = include_str!("../../boards/testdata/spin.wat");
const SPIN_WASM: &[u8] = include_bytes!("../../boards/testdata/spin.wasm");

/// `boards/testdata/spin.wat` loops over many kinds of op until its fuel runs
/// out. wasmi's tail-call dispatch keeps the native stack flat only if every
/// op's handler jumps to the next (see the `wasmi` entry in Cargo.toml); one
/// that calls instead grows the stack each time it runs, so this loop would
/// overflow it and abort the process instead of ending in "out of fuel".
#[test]
fn spin_a_long_loop_over_many_kinds_of_op_runs_out_of_fuel_cleanly() {
    let gw = Gateway::new();
    let limits = budget(20_000_000, Duration::from_secs(120));
    let f = gw.deploy_with(limits, &wat(SPIN_WAT));
    let error = expect_error(invoke(&f));
    assert!(
        matches!(
            error,
            InvokeError::OutOfFuel {
                fuel: 20_000_000,
                ..
            }
        ),
        "{error}"
    );
    gw.assert_still_serving();
}

/// boards/qemu-smoke.sh runs the committed spin.wasm on ARM, where the wat
/// crate does not run; this keeps it the module spin.wat describes.
#[test]
fn spin_wasm_is_spin_wat_compiled() {
    let compiled = wat(SPIN_WAT);
    if std::env::var_os("WASMGATE_BLESS").is_some() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../boards/testdata/spin.wasm");
        std::fs::write(path, &compiled).expect("writes spin.wasm");
        return;
    }
    assert!(
        compiled == SPIN_WASM,
        "boards/testdata/spin.wasm is stale; regenerate it with \
         WASMGATE_BLESS=1 cargo test -p wasmgate --test sandbox -- spin"
    );
}

#[test]
fn infinite_loop_with_plenty_of_fuel_hits_the_deadline() {
    let gw = Gateway::new();
    let limits = budget(u64::MAX, Duration::from_millis(50));
    let f = gw.deploy_with(limits, &guest("(loop (br 0)) (i32.const 0)"));
    let error = expect_error(invoke(&f));
    assert!(matches!(error, InvokeError::Deadline { .. }), "{error}");
    gw.assert_still_serving();
}

#[test]
fn infinite_loop_in_a_start_function_fails_the_deploy() {
    let gw = Gateway::new();
    let wasm = guest_with(
        "(func $start (loop (br 0))) (start $start)",
        "(i32.const 0)",
    );
    let mut spec = FunctionSpec::permissive("looping-start");
    spec.limits.fuel = 1_000_000;
    let error = gw
        .runtime
        .deploy(spec, &wasm)
        .expect_err("deploy must fail");
    match &error {
        LoadError::Instantiate {
            source, function, ..
        } => {
            assert_eq!(function, "looping-start");
            assert!(
                matches!(**source, InvokeError::OutOfFuel { .. }),
                "{source}"
            );
        }
        other => panic!("unexpected {other}"),
    }
    gw.assert_still_serving();
}

#[test]
fn memory_grow_bomb_hits_the_memory_limit() {
    let gw = Gateway::new();
    let limits = Limits {
        memory_bytes: 4 << 20,
        ..Limits::default()
    };
    // Grows a page at a time and ignores failure, as a careless allocator would.
    let f = gw.deploy_with(
        limits,
        &guest("(loop (drop (memory.grow (i32.const 1))) (br 0)) (i32.const 0)"),
    );
    let report = invoke(&f);
    assert!(report.cost.memory_bytes <= 4 << 20, "{:?}", report.cost);
    let error = expect_error(report);
    assert!(
        matches!(error, InvokeError::MemoryLimit { limit_bytes, .. } if limit_bytes == 4 << 20),
        "{error}"
    );
    gw.assert_still_serving();
}

#[test]
fn initial_memory_over_the_limit_fails_the_deploy() {
    let gw = Gateway::new();
    let wasm = wat(r#"(module (memory (export "memory") 100)
        (func (export "wasmgate_abi_version") (result i32) i32.const 1)
        (func (export "wasmgate_handle") (param i32) (result i32) i32.const 0))"#);
    let mut spec = FunctionSpec::permissive("fat");
    spec.limits.memory_bytes = 1 << 20;
    let error = gw
        .runtime
        .deploy(spec, &wasm)
        .expect_err("deploy must fail");
    assert!(
        matches!(&error, LoadError::Instantiate { source, .. } if matches!(**source, InvokeError::MemoryLimit { .. })),
        "{error}"
    );
}

#[test]
fn deep_recursion_is_a_trap_not_a_crash() {
    let gw = Gateway::new();
    let f = gw.deploy(&guest_with(
        "(func $recurse (param i32) (result i32) (call $recurse (i32.add (local.get 0) (i32.const 1))))",
        "(call $recurse (i32.const 0))",
    ));
    let error = expect_error(invoke(&f));
    assert!(matches!(error, InvokeError::Trap { .. }), "{error}");
    gw.assert_still_serving();
}

#[test]
fn pointer_out_of_bounds_passed_to_emit_is_an_abi_violation() {
    let gw = Gateway::new();
    // The payload pointer is past the single 64 KiB page.
    let f = gw.deploy(&guest(
        "(drop (call $emit (i32.const 0) (i32.const 9) (i32.const 65530) (i32.const 100) (i32.const 1))) (i32.const 0)",
    ));
    let error = expect_error(invoke(&f));
    match error {
        InvokeError::Abi {
            violation:
                AbiViolation::OutOfBounds {
                    call,
                    ptr,
                    len,
                    memory_len,
                },
            ..
        } => {
            assert_eq!((call, ptr, len, memory_len), ("emit", 65530, 100, 65536));
        }
        other => panic!("unexpected {other}"),
    }
    gw.assert_still_serving();
}

#[test]
fn negative_length_is_out_of_bounds_not_a_panic() {
    let gw = Gateway::new();
    let f = gw.deploy(&guest(
        "(drop (call $emit (i32.const 0) (i32.const -1) (i32.const 32) (i32.const 5) (i32.const 1))) (i32.const 0)",
    ));
    let error = expect_error(invoke(&f));
    assert!(
        matches!(
            error,
            InvokeError::Abi {
                violation: AbiViolation::OutOfBounds { .. },
                ..
            }
        ),
        "{error}"
    );
    gw.assert_still_serving();
}

#[test]
fn oversized_emit_is_refused_whole() {
    let gw = Gateway::new();
    let limits = Limits {
        max_emit_bytes: 1024,
        ..Limits::default()
    };
    let f = gw.deploy_with(
        limits,
        &guest(&format!(
            "{EMIT_HELLO} (drop (call $emit (i32.const 0) (i32.const 9) (i32.const 0) (i32.const 2048) (i32.const 1))) (i32.const 0)"
        )),
    );
    let error = expect_error(invoke(&f));
    assert!(
        matches!(
            error,
            InvokeError::Abi {
                violation: AbiViolation::TooLarge {
                    call: "emit",
                    len: 2048,
                    limit: 1024,
                    ..
                },
                ..
            }
        ),
        "{error}"
    );
    gw.assert_still_serving();
}

#[test]
fn emit_storm_stops_at_the_emit_limit() {
    let gw = Gateway::new();
    let limits = Limits {
        max_emits: 10,
        ..Limits::default()
    };
    let f = gw.deploy_with(
        limits,
        &guest(&format!("(loop {EMIT_HELLO} (br 0)) (i32.const 0)")),
    );
    let error = expect_error(invoke(&f));
    assert!(
        matches!(
            error,
            InvokeError::Abi {
                violation: AbiViolation::TooMany {
                    call: "emit",
                    limit: 10
                },
                ..
            }
        ),
        "{error}"
    );
    gw.assert_still_serving();
}

#[test]
fn wildcard_and_system_topics_are_refused_with_a_status() {
    let gw = Gateway::new();
    // Returns what emit returned, so the status is visible as the failure code.
    for topic in ["a/#", "a/+/b", "$SYS/x"] {
        let data = format!("(data (i32.const 100) \"{topic}\")");
        let body = format!(
            "(call $emit (i32.const 100) (i32.const {}) (i32.const 32) (i32.const 5) (i32.const 1))",
            topic.len()
        );
        let f = gw.deploy(&guest_with(&data, &body));
        let error = expect_error(invoke(&f));
        assert!(
            matches!(error, InvokeError::Failed { code: -2, .. }),
            "{topic}: {error}"
        );
    }
    gw.assert_still_serving();
}

/// A guest may ignore the status; the refusal is in the report anyway (the
/// daemon logs it and counts it), described, and a storm of them is counted.
#[test]
fn refused_emits_and_invokes_are_reported_even_when_the_guest_ignores_them() {
    let gw = Gateway::new();
    let mut spec = FunctionSpec::permissive("careless");
    spec.grants.local = vec!["out/#".into()];
    let data = r#"(data (i32.const 100) "$SYS/x") (data (i32.const 120) "elsewhere")"#;
    let storm = "(block (loop (drop (call $emit (i32.const 120) (i32.const 9) (i32.const 32) (i32.const 5) (i32.const 1))) (local.set 1 (i32.add (local.get 1) (i32.const 1))) (br_if 0 (i32.lt_u (local.get 1) (i32.const 20)))))";
    let body = format!(
        "(drop (call $emit (i32.const 100) (i32.const 6) (i32.const 32) (i32.const 5) (i32.const 1))) {storm} {EMIT_HELLO} i32.const 0"
    );
    let f = gw
        .runtime
        .deploy(spec, &guest_with(data, &body))
        .expect("deploys");
    let report = invoke(&f);
    assert_eq!(report.refused_count, 21);
    assert_eq!(report.refused.len(), 8, "the first few are described");
    assert!(
        report.refused[0].contains("\"$SYS/x\" refused"),
        "{:?}",
        report.refused
    );
    assert!(
        report.refused[1].contains("\"elsewhere\" denied"),
        "{:?}",
        report.refused
    );
    let effects = report.outcome.expect("the guest ignored the statuses");
    assert_eq!(effects.emits.len(), 1, "only the granted emit is kept");
    gw.assert_still_serving();
}

#[test]
fn emit_outside_the_grants_is_denied() {
    let gw = Gateway::new();
    let mut spec = FunctionSpec::permissive("confined");
    spec.grants.local = vec!["allowed/#".into()];
    let f = gw
        .runtime
        .deploy(
            spec,
            &guest("(call $emit (i32.const 0) (i32.const 9) (i32.const 32) (i32.const 5) (i32.const 1))"),
        )
        .expect("deploys");
    let error = expect_error(invoke(&f));
    assert!(
        matches!(error, InvokeError::Failed { code: -3, .. }),
        "DENIED: {error}"
    );
    gw.assert_still_serving();
}

#[test]
fn missing_export_is_refused_at_deploy() {
    let gw = Gateway::new();
    let wasm = wat(r#"(module (memory (export "memory") 1)
        (func (export "wasmgate_abi_version") (result i32) i32.const 1))"#);
    let error = gw
        .runtime
        .deploy(FunctionSpec::permissive("no-handler"), &wasm)
        .expect_err("refused");
    assert!(
        matches!(&error, LoadError::MissingExport { export: "wasmgate_handle", function, .. } if function == "no-handler"),
        "{error}"
    );
    let wasm = wat(r#"(module
        (func (export "wasmgate_abi_version") (result i32) i32.const 1)
        (func (export "wasmgate_handle") (param i32) (result i32) i32.const 0))"#);
    let error = gw
        .runtime
        .deploy(FunctionSpec::permissive("no-memory"), &wasm)
        .expect_err("refused");
    assert!(
        matches!(
            error,
            LoadError::MissingExport {
                export: "memory",
                ..
            }
        ),
        "{error}"
    );
    gw.assert_still_serving();
}

#[test]
fn wrong_abi_version_is_refused_at_deploy_naming_both_versions() {
    let gw = Gateway::new();
    let wasm = wat(r#"(module (memory (export "memory") 1)
        (func (export "wasmgate_abi_version") (result i32) i32.const 2)
        (func (export "wasmgate_handle") (param i32) (result i32) i32.const 0))"#);
    let error = gw
        .runtime
        .deploy(FunctionSpec::permissive("future"), &wasm)
        .expect_err("refused");
    assert!(
        matches!(
            error,
            LoadError::AbiVersionMismatch {
                found: 2,
                expected: 1,
                ..
            }
        ),
        "{error}"
    );
    let message = error.to_string();
    assert!(
        message.contains("version 2") && message.contains("version 1"),
        "{message}"
    );
    gw.assert_still_serving();
}

#[test]
fn unknown_import_is_refused_at_deploy_by_name() {
    let gw = Gateway::new();
    let wasm = wat(r#"(module
        (import "env" "abort" (func (param i32 i32 i32 i32)))
        (memory (export "memory") 1)
        (func (export "wasmgate_abi_version") (result i32) i32.const 1)
        (func (export "wasmgate_handle") (param i32) (result i32) i32.const 0))"#);
    let error = gw
        .runtime
        .deploy(FunctionSpec::permissive("env"), &wasm)
        .expect_err("refused");
    assert!(
        matches!(&error, LoadError::UnknownImport { module, name, .. } if module == "env" && name == "abort"),
        "{error}"
    );
}

#[test]
fn import_with_the_wrong_signature_is_refused_at_deploy() {
    let gw = Gateway::new();
    let wasm = wat(r#"(module
        (import "wasmgate" "emit" (func (param i32) (result i32)))
        (memory (export "memory") 1)
        (func (export "wasmgate_abi_version") (result i32) i32.const 1)
        (func (export "wasmgate_handle") (param i32) (result i32) i32.const 0))"#);
    let error = gw
        .runtime
        .deploy(FunctionSpec::permissive("bad-sig"), &wasm)
        .expect_err("refused");
    assert!(matches!(error, LoadError::Instantiate { .. }), "{error}");
}

#[test]
fn bytes_that_are_not_wasm_are_refused_at_deploy() {
    let gw = Gateway::new();
    for bytes in [&b""[..], b"not wasm at all", b"\0asm\x01\0\0\0\xff\xff"] {
        let error = gw
            .runtime
            .deploy(FunctionSpec::permissive("junk"), bytes)
            .expect_err("refused");
        assert!(
            matches!(&error, LoadError::InvalidModule { function, .. } if function == "junk"),
            "{error}"
        );
    }
    gw.assert_still_serving();
}

#[test]
fn the_first_event_starts_cold_then_its_instance_serves_the_next_and_a_failed_one_is_discarded() {
    let gw = Gateway::new();
    // Fails when a global counter is odd: state survives only in warm instances.
    let f = gw.deploy(&guest_with(
        "(global $n (mut i32) (i32.const 0))",
        "(global.set $n (i32.add (global.get $n) (i32.const 1)))
         (if (i32.eq (global.get $n) (i32.const 2)) (then unreachable))
         (i32.const 0)",
    ));
    assert_eq!(f.cold_starts(), 0, "deploy keeps no instance");
    assert_eq!(
        f.warm_instances(),
        0,
        "idle functions hold no instance memory"
    );
    let first = invoke(&f);
    assert_eq!(
        first.cost.start,
        Start::Cold,
        "the first event instantiates"
    );
    assert!(first.outcome.is_ok());
    assert_eq!(f.warm_instances(), 1, "and keeps that instance warm");
    let second = invoke(&f);
    assert_eq!(second.cost.start, Start::Warm, "the first event's instance");
    assert!(
        second.outcome.is_err(),
        "the same instance, now with n = 2, traps"
    );
    let third = invoke(&f);
    assert_eq!(
        third.cost.start,
        Start::Cold,
        "the trapped instance was thrown away"
    );
    assert!(third.outcome.is_ok(), "a fresh instance starts from n = 0");
    assert_eq!(f.cold_starts(), 2);
}

#[test]
fn without_warm_instances_every_start_is_cold() {
    let gw = Gateway::new();
    let limits = Limits {
        warm_instances: 0,
        ..Limits::default()
    };
    let f = gw.deploy_with(limits, &guest("(i32.const 0)"));
    for _ in 0..3 {
        assert_eq!(invoke(&f).cost.start, Start::Cold);
    }
}

#[test]
fn identical_modules_are_compiled_once() {
    let gw = Gateway::new();
    let wasm = guest("(i32.const 0)");
    let a = gw.deploy(&wasm);
    let b = gw.deploy(&wasm);
    assert_eq!(a.version(), b.version());
    assert_eq!(gw.runtime.compiled_modules(), 2, "healthy + this one");
}

#[test]
fn event_read_follows_the_copy_out_rule() {
    let gw = Gateway::new();
    // First a 1-byte buffer (too small: copies nothing, returns the length),
    // then a full one; returns 0 only if both lengths agree with the event.
    let f = gw.deploy(&guest(
        "(local.set 1 (call $event_read (i32.const 1000) (i32.const 1)))
         (if (i32.ne (local.get 1) (local.get 0)) (then (return (i32.const 1))))
         (if (i32.ne (i32.load8_u (i32.const 1000)) (i32.const 0)) (then (return (i32.const 2))))
         (if (i32.ne (call $event_read (i32.const 1000) (i32.const 4096)) (local.get 0)) (then (return (i32.const 3))))
         (i32.const 0)",
    ));
    let report = invoke(&f);
    assert!(report.outcome.is_ok(), "{:?}", report.outcome);
}

#[test]
fn kv_reads_see_own_writes_and_increments_add_at_commit() {
    let gw = Gateway::new();
    let kv = Arc::new(MemoryKv::default());
    // Increments "key" by 5 twice and returns the low byte of the value kv_get sees.
    let f = gw.deploy(&guest(
        "(drop (call $kv_increment (i32.const 16) (i32.const 3) (i64.const 5) (i32.const 200)))
         (drop (call $kv_increment (i32.const 16) (i32.const 3) (i64.const 5) (i32.const 200)))
         (drop (call $kv_get (i32.const 16) (i32.const 3) (i32.const 300) (i32.const 8)))
         (if (i64.ne (i64.load (i32.const 300)) (i64.load (i32.const 200))) (then (return (i32.const 99))))
         (i32.const 0)",
    ));
    for expected in [10i64, 20, 30] {
        let report = f.invoke(1, 1, &event(), Some(kv.clone() as Arc<dyn KvRead>));
        let effects: Effects = report.outcome.expect("succeeds");
        kv.apply(f.name(), &effects);
        assert_eq!(
            kv.get("guest", "key").unwrap(),
            Some(expected.to_le_bytes().to_vec())
        );
    }
}

#[test]
fn increment_of_text_is_not_a_number() {
    let gw = Gateway::new();
    let f = gw.deploy(&guest(
        "(drop (call $kv_put (i32.const 16) (i32.const 3) (i32.const 32) (i32.const 5)))
         (call $kv_increment (i32.const 16) (i32.const 3) (i64.const 1) (i32.const 200))",
    ));
    let error = expect_error(invoke(&f));
    assert!(
        matches!(error, InvokeError::Failed { code: -4, .. }),
        "NOT_A_NUMBER: {error}"
    );
}

#[test]
fn oversized_kv_value_is_refused() {
    let gw = Gateway::new();
    let limits = Limits {
        max_kv_value_bytes: 16,
        ..Limits::default()
    };
    let f = gw.deploy_with(
        limits,
        &guest("(drop (call $kv_put (i32.const 16) (i32.const 3) (i32.const 0) (i32.const 17))) (i32.const 0)"),
    );
    let error = expect_error(invoke(&f));
    assert!(
        matches!(
            error,
            InvokeError::Abi {
                violation: AbiViolation::TooLarge { call: "kv_put", .. },
                ..
            }
        ),
        "{error}"
    );
    gw.assert_still_serving();
}

#[test]
fn log_flood_is_capped_and_counted() {
    let gw = Gateway::new();
    let f = gw.deploy(&guest(
        "(local.set 1 (i32.const 250))
         (loop (call $log (i32.const 2) (i32.const 32) (i32.const 5))
               (local.set 1 (i32.sub (local.get 1) (i32.const 1)))
               (br_if 0 (local.get 1)))
         (i32.const 0)",
    ));
    let report = invoke(&f);
    assert!(report.outcome.is_ok());
    assert_eq!(report.logs.len(), wasmgate::runtime::MAX_LOG_LINES);
    assert_eq!(report.logs_dropped, 250 - wasmgate::runtime::MAX_LOG_LINES);
}

/// A module that invokes "other" with "hello" and replies 201 "made".
fn invoking_guest() -> Vec<u8> {
    wat(r#"(module
      (import "wasmgate" "invoke" (func $invoke (param i32 i32 i32 i32) (result i32)))
      (import "wasmgate" "respond" (func $respond (param i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (data (i32.const 0) "other")
      (data (i32.const 16) "hello")
      (data (i32.const 32) "made")
      (func (export "wasmgate_abi_version") (result i32) i32.const 1)
      (func (export "wasmgate_handle") (param i32) (result i32) (local i32)
        (local.set 1 (call $invoke (i32.const 0) (i32.const 5) (i32.const 16) (i32.const 5)))
        (if (i32.ne (local.get 1) (i32.const 0)) (then (return (local.get 1))))
        (call $respond (i32.const 201) (i32.const 32) (i32.const 4))))"#)
}

#[test]
fn invoke_and_respond_are_effects_held_until_success() {
    let gw = Gateway::new();
    let mut spec = FunctionSpec::permissive("caller");
    spec.grants.invoke = vec!["other".into()];
    let f = gw.runtime.deploy(spec, &invoking_guest()).expect("deploys");
    let effects = invoke(&f).outcome.expect("succeeds");
    assert_eq!(effects.invokes.len(), 1);
    assert_eq!(
        (
            effects.invokes[0].function.as_str(),
            effects.invokes[0].payload.as_slice()
        ),
        ("other", &b"hello"[..])
    );
    let response = effects.response.expect("a response");
    assert_eq!(
        (response.status, response.body.as_slice()),
        (201, &b"made"[..])
    );
}

#[test]
fn invoke_of_a_function_not_granted_is_denied() {
    let gw = Gateway::new();
    let mut spec = FunctionSpec::permissive("caller");
    spec.grants.invoke = vec!["someone-else".into()];
    let f = gw.runtime.deploy(spec, &invoking_guest()).expect("deploys");
    let error = expect_error(invoke(&f));
    assert!(
        matches!(error, InvokeError::Failed { code: -3, .. }),
        "DENIED: {error}"
    );
    gw.assert_still_serving();
}

/// A handler that runs `op` (which leaves nothing on the stack) `times`
/// times in a loop, then returns 0; `extra` declares what `op` needs.
fn looping(extra: &str, op: &str, times: u32) -> Vec<u8> {
    guest_with(
        extra,
        &format!(
            "(local.set 1 (i32.const {times}))
             (loop $again
               {op}
               (local.set 1 (i32.sub (local.get 1) (i32.const 1)))
               (br_if $again (local.get 1)))
             (i32.const 0)"
        ),
    )
}

/// Five million runs of an op whose failure the guest ignores: each must
/// leave the native stack as it found it (see `spin`), or this aborts the
/// process with a stack overflow instead of returning.
#[track_caller]
fn assert_a_long_loop_of_completes(extra: &str, op: &str) {
    let gw = Gateway::new();
    let limits = budget(1_000_000_000, Duration::from_secs(120));
    let f = gw.deploy_with(limits, &looping(extra, op, 5_000_000));
    let report = invoke(&f);
    assert!(report.outcome.is_ok(), "{:?}", report.outcome.err());
    gw.assert_still_serving();
}

#[test]
fn a_long_loop_of_failing_table_grows_past_the_tables_maximum_completes() {
    assert_a_long_loop_of_completes(
        "(table 1 10 funcref)",
        "(drop (table.grow (ref.null func) (i32.const 100000)))",
    );
}

#[test]
fn a_long_loop_of_table_grows_past_the_gateways_table_cap_completes() {
    assert_a_long_loop_of_completes(
        "(table 1 funcref)",
        "(drop (table.grow (ref.null func) (i32.const 100000)))",
    );
}

#[test]
fn a_long_loop_of_memory_grows_by_minus_one_completes() {
    assert_a_long_loop_of_completes("", "(drop (memory.grow (i32.const -1)))");
}

#[test]
fn a_long_loop_of_memory_grows_past_the_declared_maximum_completes() {
    // `guest` declares an unbounded memory; this one has a maximum of 2 pages.
    let gw = Gateway::new();
    let limits = budget(1_000_000_000, Duration::from_secs(120));
    let wasm = wat(r#"(module
      (memory (export "memory") 1 2)
      (func (export "wasmgate_abi_version") (result i32) i32.const 1)
      (func (export "wasmgate_handle") (param i32) (result i32) (local i32)
        (local.set 1 (i32.const 5000000))
        (loop $again
          (drop (memory.grow (i32.const 5)))
          (local.set 1 (i32.sub (local.get 1) (i32.const 1)))
          (br_if $again (local.get 1)))
        (i32.const 0)))"#);
    let f = gw.deploy_with(limits, &wasm);
    let report = invoke(&f);
    assert!(report.outcome.is_ok(), "{:?}", report.outcome.err());
    gw.assert_still_serving();
}

#[test]
fn a_long_loop_of_memory_grows_by_zero_completes() {
    // A constant 0 would be translated to `memory.size`.
    assert_a_long_loop_of_completes(
        "(global $zero (mut i32) (i32.const 0))",
        "(drop (memory.grow (global.get $zero)))",
    );
}

#[test]
fn a_start_function_that_calls_the_host_is_refused_saying_so() {
    let gw = Gateway::new();
    let wasm = guest_with(
        "(func $start (call $log (i32.const 2) (i32.const 32) (i32.const 5))) (start $start)",
        "(i32.const 0)",
    );
    let error = gw
        .runtime
        .deploy(FunctionSpec::permissive("chatty-start"), &wasm)
        .expect_err("deploy must fail");
    match &error {
        LoadError::Instantiate { source, .. } => assert!(
            matches!(
                **source,
                InvokeError::Abi {
                    violation: AbiViolation::HostCallInStart { call: "log" },
                    ..
                }
            ),
            "{source}"
        ),
        other => panic!("unexpected {other}"),
    }
    let message = error.to_string();
    assert!(
        message.contains("host calls are not allowed during the start function"),
        "{message}"
    );
    assert!(!message.contains("exports no memory"), "{message}");
    gw.assert_still_serving();
}

/// An MQTT event whose payload is `bytes` long.
fn event_of(payload: &[u8]) -> Event<'_> {
    Event::Mqtt(MqttMessage {
        topic: "in/topic",
        payload,
        qos: 1,
        retain: false,
        user_properties: Seq::empty(),
    })
}

/// Grows memory to hold a 4 MiB event at 64 KiB, then runs `body`.
fn reading_guest(body: &str) -> Vec<u8> {
    guest(&format!(
        "(drop (memory.grow (i32.const 80))) {body} (i32.const 0)"
    ))
}

const READ_EVENT: &str = "(drop (call $event_read (i32.const 65536) (i32.const 0x480000)))";

/// Copying a 2 MiB event over and over used to cost a few units of fuel a
/// time, so the deadline, checked between fuel slices, came ten times late.
#[test]
fn reading_a_large_event_in_a_loop_stops_at_the_deadline() {
    let gw = Gateway::new();
    let payload = vec![7u8; 2 << 20];
    for fuel in [Limits::DEFAULT_FUEL, u64::MAX] {
        let timeout = Duration::from_secs(1);
        let f = gw.deploy_with(
            budget(fuel, timeout),
            &reading_guest(&format!("(loop {READ_EVENT} (br 0))")),
        );
        let report = f.invoke(1, 1, &event_of(&payload), None);
        let took = report.cost.duration;
        let error = expect_error(report);
        assert!(
            matches!(
                error,
                InvokeError::Deadline { .. } | InvokeError::OutOfFuel { .. }
            ),
            "{error}"
        );
        if fuel == u64::MAX {
            assert!(matches!(error, InvokeError::Deadline { .. }), "{error}");
        }
        assert!(
            took < timeout * 5,
            "ran {took:?} under a {timeout:?} deadline"
        );
    }
    gw.assert_still_serving();
}

/// A 4 MiB read costs more than a fuel slice holds; what the slice cannot
/// cover is taken from the next, so three reads cost three reads.
#[test]
fn host_charges_larger_than_a_fuel_slice_count_in_full() {
    let gw = Gateway::new();
    let payload = vec![7u8; 4 << 20];
    let body = format!("{READ_EVENT} {READ_EVENT} {READ_EVENT}");
    let one_read = (4 << 20) / wasmgate::runtime::HOST_BYTES_PER_FUEL;
    let f = gw.deploy_with(
        budget(50_000_000, Duration::from_secs(60)),
        &reading_guest(&body),
    );
    let report = f.invoke(1, 1, &event_of(&payload), None);
    assert!(report.cost.fuel >= 3 * one_read, "{:?}", report.cost);
    assert!(report.outcome.is_ok(), "{:?}", report.outcome.err());

    // The same three reads on a budget that covers two.
    let f = gw.deploy_with(
        budget(2 * one_read + 100_000, Duration::from_secs(60)),
        &reading_guest(&body),
    );
    let report = f.invoke(1, 1, &event_of(&payload), None);
    assert!(
        report.cost.fuel <= 2 * one_read + 100_000,
        "never more than the budget: {:?}",
        report.cost
    );
    let error = expect_error(report);
    assert!(matches!(error, InvokeError::OutOfFuel { .. }), "{error}");
    gw.assert_still_serving();
}

/// A module of `functions` functions of about `bytes` bytes of code each,
/// all called by a handler that is itself about `bytes` long; every function
/// adds 7 to local 1 over and over and returns it.
fn large_module(functions: u32, bytes: usize) -> Vec<u8> {
    use wasm_encoder::{
        CodeSection, ExportKind, ExportSection, Function as Body, FunctionSection, Instruction,
        MemorySection, MemoryType, Module, TypeSection, ValType,
    };
    fn add_sevens(body: &mut Body, bytes: usize) {
        // Seven bytes a time.
        for _ in 0..bytes / 7 {
            body.instruction(&Instruction::LocalGet(1))
                .instruction(&Instruction::I32Const(7))
                .instruction(&Instruction::I32Add)
                .instruction(&Instruction::LocalSet(1));
        }
    }
    let mut types = TypeSection::new();
    types.ty().function([], [ValType::I32]); // 0: abi version, and the callees
    types.ty().function([ValType::I32], [ValType::I32]); // 1: the handler
    let mut funcs = FunctionSection::new();
    let mut code = CodeSection::new();
    let mut abi = Body::new([]);
    abi.instruction(&Instruction::I32Const(1))
        .instruction(&Instruction::End);
    funcs.function(0);
    code.function(&abi);
    for _ in 0..functions {
        let mut callee = Body::new([(2, ValType::I32)]);
        add_sevens(&mut callee, bytes);
        callee
            .instruction(&Instruction::LocalGet(1))
            .instruction(&Instruction::End);
        funcs.function(0);
        code.function(&callee);
    }
    let mut handler = Body::new([(1, ValType::I32)]);
    add_sevens(&mut handler, bytes);
    for callee in 1..=functions {
        handler
            .instruction(&Instruction::Call(callee))
            .instruction(&Instruction::Drop);
    }
    handler
        .instruction(&Instruction::I32Const(0))
        .instruction(&Instruction::End);
    funcs.function(1);
    code.function(&handler);
    let mut memory = MemorySection::new();
    memory.memory(MemoryType {
        minimum: 1,
        maximum: None,
        memory64: false,
        shared: false,
        page_size_log2: None,
    });
    let mut exports = ExportSection::new();
    exports.export("memory", ExportKind::Memory, 0);
    exports.export("wasmgate_abi_version", ExportKind::Func, 0);
    exports.export("wasmgate_handle", ExportKind::Func, functions + 1);
    let mut module = Module::new();
    module
        .section(&types)
        .section(&funcs)
        .section(&memory)
        .section(&exports)
        .section(&code);
    module.finish()
}

/// wasmi translates a function on its first call and used to bill that to
/// the call's first fuel slice (a million units, 7 a byte): a handler over
/// about 140 KB ran out of fuel before its first instruction, whatever its
/// budget.
#[test]
fn a_module_of_several_megabytes_runs_under_the_default_limits() {
    let gw = Gateway::new();
    let wasm = large_module(16, 256 << 10);
    assert!(wasm.len() > 4 << 20, "{} bytes", wasm.len());
    let f = gw.deploy(&wasm);
    let report = invoke(&f);
    assert!(report.outcome.is_ok(), "{:?}", report.outcome.err());
    let again = invoke(&f);
    assert!(again.outcome.is_ok(), "{:?}", again.outcome.err());
    assert_eq!(
        report.cost.fuel, again.cost.fuel,
        "translating the code costs the guest nothing"
    );
    gw.assert_still_serving();
}

#[test]
fn a_module_over_the_size_limit_is_refused_at_deploy() {
    let gw = Gateway::new();
    let wasm = large_module(1, wasmgate::runtime::MAX_MODULE_BYTES);
    let error = gw
        .runtime
        .deploy(FunctionSpec::permissive("huge"), &wasm)
        .expect_err("refused");
    assert!(matches!(error, LoadError::OverLimit { .. }), "{error}");
    assert!(error.to_string().contains("bytes"), "{error}");
}

/// `depth` operators of `i32.const 1 i32.add` after an `i32.const 1`, flat
/// (the wat parser recurses on folded expressions).
fn deep_const_expr(depth: usize) -> String {
    let mut expr = String::from("i32.const 1");
    for _ in 0..depth {
        expr.push_str(" i32.const 1 i32.add");
    }
    expr
}

/// wasmi builds and evaluates extended-const expressions as nested closures,
/// one native stack frame a level: a global initialiser 250,000 levels deep
/// overflowed the stack and aborted the deploy.
#[test]
fn a_deeply_nested_constant_expression_is_refused_at_deploy_by_name() {
    let gw = Gateway::new();
    let deep = deep_const_expr(250_000);
    let cases = [
        ("global 0", format!("(global i32 {deep})")),
        ("data segment 3", format!("(data (offset {deep}) \"x\")")),
        (
            "element segment 0",
            format!("(table 4 funcref) (elem (offset {deep}) func $f) (func $f)"),
        ),
    ];
    for (what, extra) in cases {
        let error = gw
            .runtime
            .deploy(
                FunctionSpec::permissive("deep"),
                &guest_with(&extra, "(i32.const 0)"),
            )
            .expect_err("refused");
        assert!(
            matches!(&error, LoadError::OverLimit { function, .. } if function == "deep"),
            "{what}: {error}"
        );
        let message = error.to_string();
        assert!(message.contains(what), "{message}");
        assert!(message.contains("constant expression"), "{message}");
    }
    gw.assert_still_serving();
}

#[test]
fn a_constant_expression_as_deep_as_the_limit_deploys() {
    let gw = Gateway::new();
    let depth = wasmgate::runtime::MAX_CONST_EXPR_DEPTH - 1;
    let f = gw.deploy(&guest_with(
        &format!("(global $g i32 {})", deep_const_expr(depth)),
        &format!("(i32.sub (global.get $g) (i32.const {}))", depth + 1),
    ));
    let report = invoke(&f);
    assert!(report.outcome.is_ok(), "{:?}", report.outcome.err());
}

/// Other shapes a compiler handles by recursing: they must deploy and run,
/// or be refused, and never take the process down.
#[test]
fn deeply_nested_blocks_and_huge_frames_deploy_and_run_or_are_refused() {
    let gw = Gateway::new();
    let nested =
        |open: &str, close: &str, n: usize| format!("{} {}", open.repeat(n), close.repeat(n));
    let cases = [
        ("100,000 nested blocks", nested("block ", "end ", 100_000)),
        ("100,000 nested loops", nested("loop ", "end ", 100_000)),
        (
            "50,000 nested ifs",
            nested("(i32.const 1) if ", "end ", 50_000),
        ),
    ];
    for (what, body) in cases {
        let wasm = guest(&format!("{body} (i32.const 0)"));
        match gw.runtime.deploy(FunctionSpec::permissive("nested"), &wasm) {
            Ok(f) => {
                let report = invoke(&f);
                assert!(report.outcome.is_ok(), "{what}: {:?}", report.outcome.err());
            }
            Err(error) => assert!(
                matches!(error, LoadError::InvalidModule { .. }),
                "{what}: {error}"
            ),
        }
    }
    let params = "(param i32) ".repeat(1_000);
    let many_params = format!(
        "(func $wide {params} (result i32) (local.get 999)) (func $call (result i32) (call $wide {}))",
        "(i32.const 0) ".repeat(1_000)
    );
    let many_locals = "(func $locals (local i64) (local i64) (local i32) )"
        .replace("(local i32)", &"(local i32) ".repeat(49_990));
    // wasmi translates a function on its first call, and refuses one with
    // too many locals then: a trap, like any other failure of that call.
    for (what, extra, body) in [
        ("1,000 parameters", many_params.as_str(), "(call $call)"),
        (
            "50,000 locals",
            many_locals.as_str(),
            "(call $locals) (i32.const 0)",
        ),
    ] {
        let wasm = guest_with(extra, body);
        match gw.runtime.deploy(FunctionSpec::permissive("wide"), &wasm) {
            Ok(f) => {
                let report = invoke(&f);
                assert!(
                    matches!(report.outcome, Ok(_) | Err(InvokeError::Trap { .. })),
                    "{what}: {:?}",
                    report.outcome.err()
                );
            }
            Err(error) => assert!(
                matches!(error, LoadError::InvalidModule { .. }),
                "{what}: {error}"
            ),
        }
    }
    gw.assert_still_serving();
}

/// In the release build (opt-level `s`, fat LTO) wasmi 2.0.0's
/// `call_indirect` and `return_call_indirect` handlers called the next op's
/// handler too (vendor/wasmi/UPSTREAM.md). Test builds did not show it;
/// `WASMGATE_BIN=target/release/wasmgate cargo test --test invoke_hostile`
/// and boards/check-tail-calls.py on a release binary do.
#[test]
fn a_long_loop_of_indirect_calls_completes() {
    assert_a_long_loop_of_completes(
        "(type $unary (func (param i32) (result i32)))
         (table 1 funcref) (elem (i32.const 0) $inc)
         (func $inc (param i32) (result i32) (i32.add (local.get 0) (i32.const 1)))",
        "(drop (call_indirect (type $unary) (local.get 1) (i32.const 0)))",
    );
}

#[test]
fn a_long_chain_of_indirect_tail_calls_completes() {
    let gw = Gateway::new();
    let limits = budget(1_000_000_000, Duration::from_secs(120));
    let f = gw.deploy_with(
        limits,
        &guest_with(
            "(type $unary (func (param i32) (result i32)))
             (table 1 funcref) (elem (i32.const 0) $count)
             (func $count (param i32) (result i32)
               (if (i32.eqz (local.get 0)) (then (return (i32.const 0))))
               (return_call_indirect (type $unary)
                 (i32.sub (local.get 0) (i32.const 1)) (i32.const 0)))",
            "(call $count (i32.const 5000000))",
        ),
    );
    let report = invoke(&f);
    assert!(report.outcome.is_ok(), "{:?}", report.outcome.err());
    gw.assert_still_serving();
}

/// A guest is charged for the code it runs, not for code a branch skips:
/// the cases of a C `switch` (code after the `end` of a block a `br_table`
/// jumps past) and the rest of a frame after a taken `br_if`. wasmi charged
/// both up front; the vendored copy starts a fuel region at each such
/// branch target (docs/upstream-wasmi-fuel.md).
#[test]
fn fuel_is_charged_for_the_code_run_not_the_code_skipped() {
    let gw = Gateway::new();
    let work = "(local.set $j (i32.add (local.get $j) (i32.const 1)))\n".repeat(1_000);
    // `$k` is 0 or 1, from the event's length: 0 skips the work, 1 runs it.
    let shapes = [
        format!(
            "(block $done (block $c1 (block $c0 (br_table $c0 $c1 (local.get $k))) (br $done)) {work})"
        ),
        format!("(block $done (br_if $done (i32.eqz (local.get $k))) {work})"),
    ];
    for shape in &shapes {
        let wasm = wat(&format!(
            r#"(module
              (memory (export "memory") 1)
              (func (export "wasmgate_abi_version") (result i32) i32.const 1)
              (func (export "wasmgate_handle") (param $len i32) (result i32) (local $j i32) (local $k i32)
                (local.set $k (i32.gt_u (local.get $len) (i32.const 100)))
                {shape}
                (i32.const 0)))"#
        ));
        let f = gw.deploy(&wasm);
        let fuel = |payload: &[u8]| {
            let report = f.invoke(1, 1, &event_of(payload), None);
            assert!(report.outcome.is_ok(), "{:?}", report.outcome.err());
            report.cost.fuel
        };
        let (skipped, run) = (fuel(b"{}"), fuel(&[b' '; 200]));
        assert!(run >= 1_000, "the work costs its instructions: {run}");
        assert!(
            skipped * 10 < run,
            "skipped {skipped} fuel against {run} run, in {shape:.60}"
        );
    }
}
