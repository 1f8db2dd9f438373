//! `wasmgate invoke` on hostile modules, through the real binary: each one
//! ends with a clear message and the documented exit code (1: the function
//! failed; 2: bad input, such as a module refused at deploy), never with
//! the process killed by a signal (a stack overflow aborts it).
//!
//! `WASMGATE_BIN=target/release/wasmgate cargo test -p wasmgate --test
//! invoke_hostile` runs them against another build, such as a release.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The binary: this build's, or WASMGATE_BIN (to check a release build).
fn wasmgate() -> std::ffi::OsString {
    std::env::var_os("WASMGATE_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_wasmgate").into())
}

#[track_caller]
fn wat(text: &str) -> Vec<u8> {
    wat::parse_str(text).unwrap_or_else(|e| panic!("fixture does not parse: {e}\n{text}"))
}

/// A module exporting the ABI whose handler is `body`, with `extra` beside it.
fn module(extra: &str, body: &str) -> Vec<u8> {
    wat(&format!(
        r#"(module
          (import "wasmgate" "event_read" (func $event_read (param i32 i32) (result i32)))
          (import "wasmgate" "log" (func $log (param i32 i32 i32)))
          (memory (export "memory") 1)
          (func (export "wasmgate_abi_version") (result i32) i32.const 1)
          {extra}
          (func (export "wasmgate_handle") (param i32) (result i32) {body}))"#
    ))
}

struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
    took: Duration,
}

#[track_caller]
fn invoke(dir: &Path, name: &str, wasm: &[u8], payload_bytes: usize) -> Outcome {
    let wasm_path = dir.join(format!("{name}.wasm"));
    std::fs::write(&wasm_path, wasm).expect("writes the module");
    let event_path = dir.join(format!("{name}.json"));
    let payload = "x".repeat(payload_bytes);
    std::fs::write(
        &event_path,
        format!(r#"{{"mqtt": {{"topic": "in/topic", "payload": "{payload}"}}}}"#),
    )
    .expect("writes the event");
    let started = Instant::now();
    let output = Command::new(wasmgate())
        .arg("invoke")
        .arg(&wasm_path)
        .arg("--event")
        .arg(&event_path)
        .output()
        .expect("runs wasmgate");
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let Some(code) = output.status.code() else {
        panic!(
            "{name}: wasmgate was killed by a signal ({:?})\nstdout: {stdout}\nstderr: {stderr}",
            output.status
        );
    };
    Outcome {
        code,
        stdout,
        stderr,
        took,
    }
}

#[track_caller]
fn assert_failed(outcome: &Outcome, name: &str, kinds: &[&str]) {
    assert_eq!(
        outcome.code, 1,
        "{name}: stdout {}\nstderr {}",
        outcome.stdout, outcome.stderr
    );
    assert!(
        kinds
            .iter()
            .any(|kind| outcome.stdout.contains(&format!("FAILED ({kind})"))),
        "{name}: expected one of {kinds:?}: {}",
        outcome.stdout
    );
}

#[track_caller]
fn assert_refused(outcome: &Outcome, name: &str, says: &str) {
    assert_eq!(
        outcome.code, 2,
        "{name}: stdout {}\nstderr {}",
        outcome.stdout, outcome.stderr
    );
    assert!(outcome.stderr.contains(says), "{name}: {}", outcome.stderr);
}

#[test]
fn endless_loops_of_failing_grows_and_indirect_calls_fail_cleanly() {
    let dir = tempfile::tempdir().expect("a temp dir");
    for (name, extra, op) in [
        (
            "table-grow-past-max",
            "(table 1 10 funcref)",
            "(drop (table.grow (ref.null func) (i32.const 100000)))",
        ),
        (
            "table-grow-past-cap",
            "(table 1 funcref)",
            "(drop (table.grow (ref.null func) (i32.const 100000)))",
        ),
        (
            "memory-grow-minus-one",
            "",
            "(drop (memory.grow (i32.const -1)))",
        ),
        (
            "call-indirect",
            "(type $unary (func (param i32) (result i32))) (table 1 funcref)
             (elem (i32.const 0) $inc)
             (func $inc (param i32) (result i32) (i32.add (local.get 0) (i32.const 1)))",
            "(drop (call_indirect (type $unary) (i32.const 1) (i32.const 0)))",
        ),
    ] {
        let wasm = module(extra, &format!("(loop {op} (br 0)) (i32.const 0)"));
        let outcome = invoke(dir.path(), name, &wasm, 2);
        // 50M units of failing grows take about a second: either budget.
        assert_failed(&outcome, name, &["out_of_fuel", "deadline"]);
    }
}

#[test]
fn an_event_read_loop_of_a_large_event_fails_by_its_budget_in_time() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let wasm = module(
        "",
        "(drop (memory.grow (i32.const 40)))
         (loop (drop (call $event_read (i32.const 65536) (i32.const 0x280000))) (br 0))
         (i32.const 0)",
    );
    let outcome = invoke(dir.path(), "event-read-loop", &wasm, 2 << 20);
    assert_failed(&outcome, "event-read-loop", &["deadline", "out_of_fuel"]);
    // The default deadline is 1 s; a generous bound, for loaded machines.
    assert!(outcome.took < Duration::from_secs(10), "{:?}", outcome.took);
}

#[test]
fn modules_refused_at_deploy_say_why() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut deep = String::from("i32.const 1");
    for _ in 0..250_000 {
        deep.push_str(" i32.const 1 i32.add");
    }
    let outcome = invoke(
        dir.path(),
        "deep-global",
        &module(&format!("(global i32 {deep})"), "(i32.const 0)"),
        2,
    );
    assert_refused(&outcome, "deep-global", "constant expression nested");

    let outcome = invoke(
        dir.path(),
        "start-calls-host",
        &module(
            "(func $start (call $log (i32.const 2) (i32.const 0) (i32.const 1))) (start $start)",
            "(i32.const 0)",
        ),
        2,
    );
    assert_refused(
        &outcome,
        "start-calls-host",
        "host calls are not allowed during the start function",
    );
}
