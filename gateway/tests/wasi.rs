//! The WASI preview 1 subset: a module built by a standard toolchain
//! (clang and Debian's wasi-libc, `tests/guests/wasi_libc.c`) runs as a
//! function under the same limits and typed errors as any other, with
//! stdout and stderr as its log lines, its `config` as its environment,
//! and no way to the host's files. One-behaviour cases are inline WAT.

use std::path::Path;
use std::time::Duration;
use wasmgate::runtime::{
    Function, FunctionSpec, InvokeError, Limits, LoadError, Report, Runtime, Start,
};
use wasmgate_abi::{Event, LogLevel, MqttMessage, Seq};

fn libc_guest() -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/guests/wasi_libc.wasm");
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (tests/guests/build.sh)", path.display()))
}

fn deploy(runtime: &Runtime, wasm: &[u8], limits: Limits) -> Function {
    let mut spec = FunctionSpec::permissive("stamp");
    spec.limits = limits;
    spec.config.insert("site".into(), "depot-3".into());
    runtime.deploy(spec, wasm).expect("deploys")
}

fn run(f: &Function, payload: &str) -> Report {
    let event = Event::Mqtt(MqttMessage {
        topic: "in/1",
        payload: payload.as_bytes(),
        qos: 1,
        retain: false,
        user_properties: Seq::empty(),
    });
    f.invoke(1, 1, &event, None)
}

fn lines(report: &Report) -> Vec<(LogLevel, &str)> {
    report
        .logs
        .iter()
        .map(|l| (l.level, l.message.as_str()))
        .collect()
}

#[test]
fn a_wasi_libc_program_logs_reads_its_config_and_the_clock_and_emits() {
    let runtime = Runtime::new();
    let f = deploy(&runtime, &libc_guest(), Limits::default());
    for round in 0..2 {
        let report = run(&f, "hello");
        assert_eq!(
            lines(&report),
            [
                (LogLevel::Info, "handled 42 bytes at site depot-3"),
                (LogLevel::Warn, "this goes to stderr"),
            ],
            "round {round}"
        );
        let effects = report.outcome.expect("succeeds");
        assert_eq!(effects.emits.len(), 1);
        assert_eq!(effects.emits[0].topic, "wasi/out");
        assert_eq!(
            String::from_utf8_lossy(&effects.emits[0].payload),
            r#"{"site":"depot-3","year_ok":true,"entropy":true}"#
        );
        // The second round runs on the instance the first left warm:
        // libc's constructors (`_initialize`) ran once, at the cold start.
        let expected = if round == 0 { Start::Cold } else { Start::Warm };
        assert_eq!(report.cost.start, expected);
    }
}

#[test]
fn exit_zero_is_a_success_and_any_other_code_a_failure_that_keeps_nothing() {
    let runtime = Runtime::new();
    let f = deploy(&runtime, &libc_guest(), Limits::default());
    let report = run(&f, "exit:0");
    // The unterminated printf before exit() is a line too.
    assert_eq!(lines(&report), [(LogLevel::Info, "exiting with 0")]);
    let effects = report.outcome.expect("exit(0) is a success");
    assert_eq!(effects.emits[0].payload, br#"{"before_exit":true}"#);
    // libc ran its exit handlers: that instance is not used again.
    assert_eq!(run(&f, "hello").cost.start, Start::Cold);

    let report = run(&f, "exit:3");
    match report.outcome {
        Err(InvokeError::Exited { code: 3, .. }) => {}
        other => panic!("expected exit code 3, got {other:?}"),
    }
    assert_eq!(report.logs[0].message, "exiting with 3");
    // And the function goes on serving.
    assert!(run(&f, "hello").outcome.is_ok());
}

#[test]
fn files_and_directories_do_not_exist_for_a_function() {
    let runtime = Runtime::new();
    let f = deploy(&runtime, &libc_guest(), Limits::default());
    let report = run(&f, "files");
    let effects = report.outcome.expect("succeeds");
    assert_eq!(
        effects.emits[0].payload,
        br#"{"fopen":false,"opendir":false}"#
    );
}

#[test]
fn a_wasi_program_is_held_to_the_same_fuel_and_deadline() {
    let runtime = Runtime::new();
    let limits = Limits {
        fuel: 2_000_000,
        ..Limits::default()
    };
    let f = deploy(&runtime, &libc_guest(), limits);
    assert!(matches!(
        run(&f, "spin").outcome,
        Err(InvokeError::OutOfFuel { .. })
    ));
    let limits = Limits {
        fuel: u64::MAX / 2,
        timeout: Duration::from_millis(50),
        ..Limits::default()
    };
    let f = deploy(&runtime, &libc_guest(), limits);
    assert!(matches!(
        run(&f, "spin").outcome,
        Err(InvokeError::Deadline { .. })
    ));
}

#[track_caller]
fn wat(text: &str) -> Vec<u8> {
    wat::parse_str(text).unwrap_or_else(|e| panic!("fixture does not parse: {e}\n{text}"))
}

/// A reactor that imports `imports`, keeps "wasi/out" at 0, and runs `body`
/// as its handler; it emits the i32 at 100 as 4 bytes before returning 0.
fn reactor(imports: &str, extra: &str, body: &str) -> Vec<u8> {
    wat(&format!(
        r#"(module
          (import "wasmgate" "emit" (func $emit (param i32 i32 i32 i32 i32) (result i32)))
          {imports}
          (memory (export "memory") 1)
          (data (i32.const 0) "wasi/out")
          (data (i32.const 200) "/etc/passwd")
          (func (export "wasmgate_abi_version") (result i32) i32.const 1)
          {extra}
          (func (export "wasmgate_handle") (param i32) (result i32)
            {body}
            (drop (call $emit (i32.const 0) (i32.const 8) (i32.const 100) (i32.const 16) (i32.const 1)))
            (i32.const 0)))"#
    ))
}

fn emitted(report: Report) -> Vec<i32> {
    let effects = report.outcome.expect("succeeds");
    effects.emits[0]
        .payload
        .chunks(4)
        .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn calls_outside_the_subset_answer_ebadf_or_enosys() {
    let wasm = reactor(
        r#"(import "wasi_snapshot_preview1" "path_open" (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
           (import "wasi_snapshot_preview1" "sock_send" (func $sock_send (param i32 i32 i32 i32 i32) (result i32)))
           (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
           (import "wasi_snapshot_preview1" "fd_prestat_get" (func $prestat (param i32 i32) (result i32)))"#,
        "",
        "(i32.store (i32.const 100) (call $path_open (i32.const 3) (i32.const 0) (i32.const 200) (i32.const 11) (i32.const 0) (i64.const 0) (i64.const 0) (i32.const 0) (i32.const 300)))
         (i32.store (i32.const 104) (call $sock_send (i32.const 3) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 300)))
         (i32.store (i32.const 108) (call $poll (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 300)))
         (i32.store (i32.const 112) (call $prestat (i32.const 3) (i32.const 300)))",
    );
    let runtime = Runtime::new();
    let f = deploy(&runtime, &wasm, Limits::default());
    // EBADF 8 (no such descriptor), ENOSYS 52.
    assert_eq!(emitted(run(&f, "")), [8, 8, 52, 8]);
}

#[test]
fn a_bad_pointer_given_to_wasi_is_a_contract_violation() {
    let wasm = reactor(
        r#"(import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))"#,
        "",
        // One iovec at 300 pointing past the end of memory.
        "(i32.store (i32.const 300) (i32.const 65530))
         (i32.store (i32.const 304) (i32.const 100))
         (drop (call $fd_write (i32.const 1) (i32.const 300) (i32.const 1) (i32.const 400)))",
    );
    let runtime = Runtime::new();
    let f = deploy(&runtime, &wasm, Limits::default());
    let error = run(&f, "").outcome.expect_err("fails");
    assert!(matches!(error, InvokeError::Abi { .. }), "{error}");
    assert!(error.to_string().contains("fd_write"), "{error}");
}

#[test]
fn initialize_may_use_wasi_but_not_the_gateway() {
    // WASI in `_initialize` (libc's constructors): fine.
    let wasm = reactor(
        r#"(import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))"#,
        r#"(func (export "_initialize") (drop (call $random (i32.const 500) (i32.const 16))))"#,
        "",
    );
    let runtime = Runtime::new();
    let f = deploy(&runtime, &wasm, Limits::default());
    assert_eq!(emitted(run(&f, "")), [0, 0, 0, 0]);
    // A host call of the gateway's there: refused, saying why.
    let wasm = reactor(
        "",
        r#"(func (export "_initialize") (drop (call $emit (i32.const 0) (i32.const 8) (i32.const 0) (i32.const 1) (i32.const 1))))"#,
        "",
    );
    let mut spec = FunctionSpec::permissive("early");
    spec.limits = Limits::default();
    match runtime.deploy(spec, &wasm) {
        Err(e) => assert!(e.to_string().contains("start function"), "{e}"),
        Ok(_) => panic!("a gateway call in _initialize deployed"),
    }
}

#[test]
fn a_wasi_command_is_refused_with_what_to_build_instead() {
    let wasm = wat(r#"(module
          (memory (export "memory") 1)
          (func (export "wasmgate_abi_version") (result i32) i32.const 1)
          (func (export "_start")))"#);
    let error = Runtime::new()
        .deploy(FunctionSpec::permissive("cmd"), &wasm)
        .map(|_| ())
        .expect_err("refused");
    assert!(matches!(error, LoadError::MissingExport { .. }), "{error}");
    assert!(
        error.to_string().contains("-mexec-model=reactor"),
        "{error}"
    );
}

#[test]
fn an_unknown_wasi_function_is_refused_at_deploy() {
    let wasm = reactor(
        r#"(import "wasi_snapshot_preview1" "thread_spawn" (func (param i32) (result i32)))"#,
        "",
        "",
    );
    let error = Runtime::new()
        .deploy(FunctionSpec::permissive("t"), &wasm)
        .map(|_| ())
        .expect_err("refused");
    assert!(matches!(error, LoadError::UnknownImport { .. }), "{error}");
}
