//! Guest-memory access by host calls, with pointers and lengths the guest
//! controls. Each input becomes a tiny module whose handler makes a
//! sequence of host calls (every import that touches guest memory) with
//! arbitrary or edge-case pointers and lengths, against a memory of 0-2
//! pages that may grow mid-invocation; it runs through the real runtime
//! (`Runtime::deploy` + `Function::invoke`), so the bounds checks under test
//! are the ones the gateway runs.
//!
//! Must hold: no panic; an out-of-bounds report names a region that really
//! is out of bounds; accepted effects respect the limits.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;
use wasmgate::runtime::{
    AbiViolation, FunctionSpec, InvokeError, KvRead, Limits, MemoryKv, Runtime,
};
use wasmgate_abi::{Event, MqttMessage, Seq};

const PAGE: i64 = 65_536;

/// A pointer or length: near an edge of memory more often than not.
#[derive(Debug, Arbitrary)]
enum Arg {
    Raw(i32),
    /// One of the edges, plus a small offset.
    Edge(u8, i8),
}

impl Arg {
    fn value(&self) -> i32 {
        match *self {
            Arg::Raw(v) => v,
            Arg::Edge(which, offset) => {
                let base: i64 = match which % 10 {
                    0 => 0,
                    1 => 16, // the key "key"
                    2 => PAGE,
                    3 => 2 * PAGE,
                    4 => 3 * PAGE,
                    5 => i32::MAX as i64,
                    6 => i32::MIN as i64,
                    7 => u32::MAX as i64,
                    8 => 256, // MAX_KEY_BYTES
                    _ => 1024,
                };
                (base + offset as i64) as i32
            }
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Call {
    EventRead(Arg, Arg),
    Emit(Arg, Arg, Arg, Arg, u8),
    KvGet(Arg, Arg, Arg, Arg),
    KvPut(Arg, Arg, Arg, Arg),
    KvDelete(Arg, Arg),
    KvIncrement(Arg, Arg, i64, Arg),
    Log(i8, Arg, Arg),
    ConfigGet(Arg, Arg, Arg, Arg),
    Invoke(Arg, Arg, Arg, Arg),
    Respond(i16, Arg, Arg),
    Grow(u8),
}

#[derive(Debug, Arbitrary)]
struct Input {
    pages: u8,
    calls: Vec<Call>,
    payload: Vec<u8>,
}

fn module(input: &Input) -> String {
    let pages = input.pages % 3;
    let mut body = String::new();
    for call in input.calls.iter().take(64) {
        let a = |arg: &Arg| format!("(i32.const {})", arg.value());
        let line = match call {
            Call::EventRead(p, l) => format!("(drop (call $event_read {} {}))", a(p), a(l)),
            Call::Emit(t, tl, p, pl, flags) => format!(
                "(drop (call $emit {} {} {} {} (i32.const {})))",
                a(t),
                a(tl),
                a(p),
                a(pl),
                flags % 16
            ),
            Call::KvGet(k, kl, d, c) => {
                format!("(drop (call $kv_get {} {} {} {}))", a(k), a(kl), a(d), a(c))
            }
            Call::KvPut(k, kl, v, vl) => {
                format!(
                    "(drop (call $kv_put {} {} {} {}))",
                    a(k),
                    a(kl),
                    a(v),
                    a(vl)
                )
            }
            Call::KvDelete(k, kl) => format!("(drop (call $kv_delete {} {}))", a(k), a(kl)),
            Call::KvIncrement(k, kl, delta, d) => format!(
                "(drop (call $kv_increment {} {} (i64.const {delta}) {}))",
                a(k),
                a(kl),
                a(d)
            ),
            Call::Log(level, m, l) => format!("(call $log (i32.const {level}) {} {})", a(m), a(l)),
            Call::ConfigGet(k, kl, d, c) => {
                format!(
                    "(drop (call $config_get {} {} {} {}))",
                    a(k),
                    a(kl),
                    a(d),
                    a(c)
                )
            }
            Call::Invoke(f, fl, p, pl) => {
                format!(
                    "(drop (call $invoke {} {} {} {}))",
                    a(f),
                    a(fl),
                    a(p),
                    a(pl)
                )
            }
            Call::Respond(code, b, l) => {
                format!(
                    "(drop (call $respond (i32.const {code}) {} {}))",
                    a(b),
                    a(l)
                )
            }
            Call::Grow(n) => format!("(drop (memory.grow (i32.const {})))", n % 3),
        };
        let _ = writeln!(body, "{line}");
    }
    // Strings to point at, when there is memory to hold them.
    let data = if pages > 0 {
        r#"(data (i32.const 0) "out/topic") (data (i32.const 16) "key") (data (i32.const 32) "self")"#
    } else {
        ""
    };
    format!(
        r#"(module
  (import "wasmgate" "event_read" (func $event_read (param i32 i32) (result i32)))
  (import "wasmgate" "emit" (func $emit (param i32 i32 i32 i32 i32) (result i32)))
  (import "wasmgate" "kv_get" (func $kv_get (param i32 i32 i32 i32) (result i32)))
  (import "wasmgate" "kv_put" (func $kv_put (param i32 i32 i32 i32) (result i32)))
  (import "wasmgate" "kv_delete" (func $kv_delete (param i32 i32) (result i32)))
  (import "wasmgate" "kv_increment" (func $kv_increment (param i32 i32 i64 i32) (result i32)))
  (import "wasmgate" "log" (func $log (param i32 i32 i32)))
  (import "wasmgate" "config_get" (func $config_get (param i32 i32 i32 i32) (result i32)))
  (import "wasmgate" "invoke" (func $invoke (param i32 i32 i32 i32) (result i32)))
  (import "wasmgate" "respond" (func $respond (param i32 i32 i32) (result i32)))
  (memory (export "memory") {pages} 3)
  {data}
  (func (export "wasmgate_abi_version") (result i32) i32.const 1)
  (func (export "wasmgate_handle") (param i32) (result i32)
{body}    i32.const 0))"#
    )
}

fn limits() -> Limits {
    Limits {
        fuel: 1_000_000,
        memory_bytes: 3 * PAGE as usize,
        timeout: Duration::from_secs(5),
        max_emits: 4,
        max_emit_bytes: 1024,
        max_kv_value_bytes: 512,
        warm_instances: 1,
    }
}

fuzz_target!(|input: Input| {
    let wasm = wat::parse_str(module(&input)).expect("generated WAT is valid");
    // A runtime per input: its module cache would otherwise grow for the
    // whole fuzzing run.
    let runtime = Runtime::new();
    let mut spec = FunctionSpec::permissive("self");
    spec.limits = limits();
    spec.config.insert("key".into(), "a config value".into());
    let function = runtime
        .deploy(spec, &wasm)
        .expect("generated module deploys");
    let kv = Arc::new(MemoryKv::default());
    let event = Event::Mqtt(MqttMessage {
        topic: "in/topic",
        payload: &input.payload,
        qos: 1,
        retain: false,
        user_properties: Seq::empty(),
    });
    // Twice: the second run reads what the first committed, on a warm instance.
    for request in 0..2 {
        let report = function.invoke(request, 1, &event, Some(kv.clone() as Arc<dyn KvRead>));
        match report.outcome {
            Ok(effects) => {
                let limits = function.limits();
                assert!(effects.emits.len() <= limits.max_emits);
                assert!(effects.invokes.len() <= limits.max_emits);
                for emit in &effects.emits {
                    assert!(emit.payload.len() <= limits.max_emit_bytes);
                    assert!(wasmgate_abi::is_valid_publish_topic(&emit.topic));
                }
                for invoke in &effects.invokes {
                    assert!(invoke.payload.len() <= limits.max_emit_bytes);
                }
                for write in effects.kv.values() {
                    if let wasmgate::runtime::KvWrite::Put(value) = write {
                        assert!(value.len() <= limits.max_kv_value_bytes);
                    }
                }
                kv.apply("self", &effects);
            }
            Err(InvokeError::Abi {
                violation:
                    AbiViolation::OutOfBounds {
                        ptr,
                        len,
                        memory_len,
                        ..
                    },
                ..
            }) => {
                assert!(
                    ptr as u64 + len as u64 > memory_len as u64,
                    "in-bounds region {ptr}+{len} reported outside {memory_len} bytes"
                );
            }
            Err(_) => {}
        }
    }
});
