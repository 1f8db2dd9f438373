//! Runtime micro-benchmarks: what one invocation costs, by part.
//!
//! `cargo bench -p wasmgate --bench runtime`. Cold start is measured with
//! `warm_instances = 0` (instantiate + call) beside the same no-op warm, so
//! the difference is the instantiation.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::hint::black_box;
use std::sync::Arc;
use wasmgate::event::OwnedEvent;
use wasmgate::runtime::{Function, FunctionSpec, KvRead, Limits, MemoryKv, Runtime};

const PRELUDE: &str = r#"
  (import "wasmgate" "emit" (func $emit (param i32 i32 i32 i32 i32) (result i32)))
  (import "wasmgate" "kv_get" (func $kv_get (param i32 i32 i32 i32) (result i32)))
  (import "wasmgate" "kv_put" (func $kv_put (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 17)
  (data (i32.const 0) "out/topic")
  (data (i32.const 16) "key")
  (data (i32.const 32) "hello")
  (func (export "wasmgate_abi_version") (result i32) i32.const 1)
"#;

fn module(extra: &str, body: &str) -> Vec<u8> {
    wat::parse_str(format!(
        "(module {PRELUDE} {extra} (func (export \"wasmgate_handle\") (param i32) (result i32) {body}))"
    ))
    .expect("fixture parses")
}

/// A no-op handler in a module padded to about 100 KB with code and data, the
/// size of a small Rust function with serde-json-core.
fn module_100k() -> Vec<u8> {
    let mut extra = String::new();
    for i in 0..400 {
        extra.push_str(&format!(
            "(func $f{i} (param i32) (result i32) {})",
            "(i32.add (local.get 0) (i32.const 7)) ".repeat(10) + &"(drop) ".repeat(9)
        ));
    }
    extra.push_str(&format!(
        "(data (i32.const 4096) \"{}\")",
        "x".repeat(72_000)
    ));
    let wasm = module(&extra, "(i32.const 0)");
    assert!(
        (90_000..=120_000).contains(&wasm.len()),
        "module is {} bytes",
        wasm.len()
    );
    wasm
}

fn deploy(runtime: &Runtime, wasm: &[u8], warm: usize) -> Function {
    let mut spec = FunctionSpec::permissive("bench");
    spec.limits = Limits {
        warm_instances: warm,
        ..Limits::default()
    };
    runtime.deploy(spec, wasm).expect("deploys")
}

fn event() -> OwnedEvent {
    OwnedEvent::mqtt(
        "vending/vm-17/telemetry",
        br#"{"machine":"vm-17","ts":1764160000000,"temp_c":6.8,"door_open":false,"stock":[{"slot":"A1","count":2},{"slot":"A2","count":7},{"slot":"B1","count":0}],"sale":{"slot":"A1","price_cents":150}}"#.to_vec(),
        1,
        false,
    )
}

fn bench(c: &mut Criterion) {
    let runtime = Runtime::new();
    let event = event();
    let event = event.as_event();

    let mut group = c.benchmark_group("invoke");
    group.throughput(Throughput::Elements(1));

    let noop = module("", "(i32.const 0)");
    let warm = deploy(&runtime, &noop, 1);
    group.bench_function("noop_warm", |b| {
        b.iter(|| black_box(warm.invoke(1, 1, &event, None)).outcome.is_ok())
    });
    let cold = deploy(&runtime, &noop, 0);
    group.bench_function("noop_cold", |b| {
        b.iter(|| black_box(cold.invoke(1, 1, &event, None)).outcome.is_ok())
    });
    let big = module_100k();
    let big_warm = deploy(&runtime, &big, 1);
    group.bench_function("noop_100k_warm", |b| {
        b.iter(|| {
            black_box(big_warm.invoke(1, 1, &event, None))
                .outcome
                .is_ok()
        })
    });
    let big_cold = deploy(&runtime, &big, 0);
    group.bench_function("noop_100k_cold", |b| {
        b.iter(|| {
            black_box(big_cold.invoke(1, 1, &event, None))
                .outcome
                .is_ok()
        })
    });

    let emit = deploy(
        &runtime,
        &module(
            "",
            "(drop (call $emit (i32.const 0) (i32.const 9) (i32.const 32) (i32.const 5) (i32.const 1))) (i32.const 0)",
        ),
        1,
    );
    group.bench_function("emit_one", |b| {
        b.iter(|| black_box(emit.invoke(1, 1, &event, None)).outcome.is_ok())
    });

    let kv: Arc<dyn KvRead> = Arc::new(MemoryKv::default());
    let kv_fn = deploy(
        &runtime,
        &module(
            "",
            "(drop (call $kv_put (i32.const 16) (i32.const 3) (i32.const 32) (i32.const 5)))
             (drop (call $kv_get (i32.const 16) (i32.const 3) (i32.const 100) (i32.const 64)))
             (i32.const 0)",
        ),
        1,
    );
    group.bench_function("kv_put_get", |b| {
        b.iter(|| {
            black_box(kv_fn.invoke(1, 1, &event, Some(kv.clone())))
                .outcome
                .is_ok()
        })
    });

    let vending_path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../functions/examples/wasm/vending_telemetry.wasm"
    );
    if let Ok(vending) = std::fs::read(vending_path) {
        let f = deploy(&runtime, &vending, 1);
        let kv = Arc::new(MemoryKv::default());
        group.bench_function("vending_telemetry", |b| {
            b.iter_batched(
                || kv.clone() as Arc<dyn KvRead>,
                |kv| {
                    let report = f.invoke(1, 1, &event, Some(kv));
                    assert!(report.outcome.is_ok(), "{:?}", report.outcome);
                },
                BatchSize::SmallInput,
            )
        });
    } else {
        eprintln!(
            "skipping vending_telemetry: {vending_path} not built (functions/examples/build.sh)"
        );
    }

    group.finish();

    c.bench_function("deploy_100k", |b| {
        b.iter(|| {
            // A fresh runtime each time, so compilation is not cached away.
            let runtime = Runtime::new();
            black_box(deploy(&runtime, &big, 1));
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
