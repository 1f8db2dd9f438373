//! `wasmgate invoke`: run a function once on an event file, with no broker and
//! no database, and show everything it did. The local test loop, like
//! `sam local invoke`.

use crate::event::OwnedEvent;
use crate::runtime::{
    Effects, FunctionSpec, Grants, KvRead, KvWrite, LoadError, MemoryKv, Report, Runtime, Start,
};
use crate::text::escape;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmgate_abi::Destination;

/// The outcome of a local run: the deploy, then one report per invocation.
#[derive(Debug)]
pub struct LocalRun {
    pub function: String,
    pub version: String,
    pub module_bytes: usize,
    /// Validation, compilation and the first (cold) instantiation.
    pub deploy: Duration,
    pub reports: Vec<Report>,
    /// KV state after every successful invocation was applied in turn.
    pub kv: Arc<MemoryKv>,
    /// The keys of `kv` an increment wrote last.
    pub counters: BTreeSet<String>,
    /// What the function was allowed to reach.
    pub grants: Grants,
    /// The gateway config the function's grants, limits and config came
    /// from; `None` when they were assumed (every grant).
    pub configured: Option<String>,
}

impl LocalRun {
    pub fn all_succeeded(&self) -> bool {
        self.reports.iter().all(|r| r.outcome.is_ok())
    }
}

/// Deploys `wasm` and invokes it `repeat` times on `event`, committing each
/// successful invocation's KV writes before the next, as the gateway would.
pub fn invoke(
    spec: FunctionSpec,
    wasm: &[u8],
    event: &OwnedEvent,
    repeat: u32,
) -> Result<LocalRun, LoadError> {
    let runtime = Runtime::new();
    let started = Instant::now();
    let grants = spec.grants.clone();
    let function = runtime.deploy(spec, wasm)?;
    let deploy = started.elapsed();
    let kv = Arc::new(MemoryKv::default());
    let mut counters = BTreeSet::new();
    let reports = (1..=u64::from(repeat.max(1)))
        .map(|request_id| {
            let report = function.invoke(
                request_id,
                1,
                &event.as_event(),
                Some(kv.clone() as Arc<dyn KvRead>),
            );
            if let Ok(effects) = &report.outcome {
                kv.apply(function.name(), effects);
                for (key, write) in &effects.kv {
                    match write {
                        KvWrite::Add(_) => counters.insert(key.clone()),
                        _ => counters.remove(key),
                    };
                }
            }
            report
        })
        .collect();
    Ok(LocalRun {
        function: function.name().to_owned(),
        version: function.version().to_owned(),
        module_bytes: wasm.len(),
        deploy,
        reports,
        kv,
        counters,
        grants,
        configured: None,
    })
}

/// The human-readable report.
pub fn render(run: &LocalRun) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "function {} (version {}, {} bytes), deployed in {}",
        run.function,
        run.version,
        run.module_bytes,
        micros(run.deploy)
    );
    let _ = writeln!(out, "{}", grants_line(run));
    for (i, report) in run.reports.iter().enumerate() {
        if run.reports.len() > 1 {
            let _ = writeln!(out, "\ninvocation {}", i + 1);
        }
        match &report.outcome {
            Ok(effects) => render_effects(&mut out, effects),
            Err(error) => {
                // "failed" is the guest's own error code: its message says so.
                let _ = match error.kind() {
                    "failed" => writeln!(out, "FAILED: {error}"),
                    kind => writeln!(out, "FAILED ({kind}): {error}"),
                };
                let _ = writeln!(out, "  nothing it did is kept");
            }
        }
        if !report.logs.is_empty() {
            let _ = writeln!(out, "logs");
            for line in &report.logs {
                let _ = writeln!(
                    out,
                    "  {:<5} {}",
                    format!("{:?}", line.level).to_lowercase(),
                    line.message
                );
            }
        }
        if report.logs_dropped > 0 {
            let _ = writeln!(out, "  ({} more log lines dropped)", report.logs_dropped);
        }
        // What a gateway would add to its /metrics, were this a success there.
        if !report.metrics.is_empty() {
            let _ = writeln!(out, "metrics  {}", report.metrics.len());
            for m in &report.metrics {
                let labels: Vec<String> = m
                    .labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{v}\""))
                    .collect();
                let labels = if labels.is_empty() {
                    String::new()
                } else {
                    format!("{{{}}}", labels.join(","))
                };
                let _ = writeln!(
                    out,
                    "  {:<9} {}{labels} {}",
                    format!("{:?}", m.kind).to_lowercase(),
                    m.name,
                    m.value
                );
            }
        }
        if report.refused_count > 0 {
            let _ = writeln!(out, "refused");
            for reason in &report.refused {
                let _ = writeln!(out, "  {reason}");
            }
            let more = report.refused_count - report.refused.len();
            if more > 0 {
                let _ = writeln!(out, "  ({more} more)");
            }
        }
        let cost = &report.cost;
        let _ = writeln!(
            out,
            "cost     fuel {}  memory {}  time {}  {} start",
            cost.fuel,
            bytes(cost.memory_bytes),
            micros(cost.duration),
            match cost.start {
                Start::Cold => "cold",
                Start::Warm => "warm",
            }
        );
    }
    let entries = run.kv.entries();
    if !entries.is_empty() {
        let _ = writeln!(out, "\nkv after the run");
        for ((_, key), value) in entries {
            let counter = run.counters.contains(&key);
            let _ = writeln!(
                out,
                "  {} = {}",
                escape(&key),
                show_kv(&value, Some(counter))
            );
        }
    }
    out
}

/// Where the function's grants came from, and what they are.
fn grants_line(run: &LocalRun) -> String {
    let Some(config) = &run.configured else {
        return "grants   assumed: every topic, every function, every secret (none set); \
                `--gateway-config FILE --function NAME` runs it with its own"
            .to_owned();
    };
    let list = |items: &[String]| crate::text::or_none(items, " ");
    let g = &run.grants;
    format!(
        "grants   from {config}: local {}; upstream {}; invoke {}; secrets {}",
        list(&g.local),
        list(&g.upstream),
        list(&g.invoke),
        list(&g.secrets)
    )
}

fn render_effects(out: &mut String, effects: &Effects) {
    let _ = writeln!(out, "ok");
    if let Some(response) = &effects.response {
        let _ = writeln!(
            out,
            "response {} {}",
            response.status,
            show_bytes(&response.body)
        );
        for (name, value) in &response.headers {
            let _ = writeln!(out, "  {name}: {}", crate::text::escape(value));
        }
    }
    if !effects.failed_items.is_empty() {
        let items: Vec<String> = effects.failed_items.iter().map(u32::to_string).collect();
        let _ = writeln!(
            out,
            "failed   items {} of the batch (retried alone; the rest commit)",
            items.join(", ")
        );
    }
    if !effects.posts.is_empty() {
        let _ = writeln!(out, "posts    {}", effects.posts.len());
        for post in &effects.posts {
            let _ = writeln!(
                out,
                "  {} {}",
                crate::text::escape(&post.connection),
                show_bytes(&post.data)
            );
        }
    }
    let _ = writeln!(out, "emits    {}", effects.emits.len());
    for emit in &effects.emits {
        let _ = writeln!(
            out,
            "  {:<8} qos{} {}{} {}",
            destination(emit.options.destination),
            emit.options.qos,
            escape(&emit.topic),
            if emit.options.retain {
                " (retained)"
            } else {
                ""
            },
            show_bytes(&emit.payload)
        );
    }
    let _ = writeln!(out, "kv       {}", effects.kv.len());
    for (key, write) in &effects.kv {
        let _ = match write {
            KvWrite::Put(value) => {
                writeln!(out, "  {} = {}", escape(key), show_kv(value, Some(false)))
            }
            KvWrite::Delete => writeln!(out, "  {} deleted", escape(key)),
            KvWrite::Add(delta) => writeln!(out, "  {} += {delta}", escape(key)),
        };
    }
    if !effects.invokes.is_empty() {
        let _ = writeln!(out, "invokes  {} (not run locally)", effects.invokes.len());
        for invoke in &effects.invokes {
            let _ = writeln!(
                out,
                "  {} {}",
                escape(&invoke.function),
                show_bytes(&invoke.payload)
            );
        }
    }
}

/// One invocation's outcome, logs and cost as JSON: `--json`'s, and the
/// management API's for an invocation on the running gateway.
pub fn report_json(report: &Report) -> Value {
    let outcome = match &report.outcome {
        Ok(effects) => json!({
            "ok": true,
            "emits": effects.emits.iter().map(|e| json!({
                "topic": e.topic,
                "payload": String::from_utf8_lossy(&e.payload),
                "qos": e.options.qos,
                "retain": e.options.retain,
                "destination": destination(e.options.destination),
            })).collect::<Vec<_>>(),
            "kv": effects.kv.iter().map(|(k, w)| (k.clone(), match w {
                KvWrite::Put(v) => json!({"put": String::from_utf8_lossy(v)}),
                KvWrite::Delete => json!("delete"),
                KvWrite::Add(d) => json!({"add": d}),
            })).collect::<serde_json::Map<_, _>>(),
            "invokes": effects.invokes.iter().map(|i| json!({
                "function": i.function,
                "payload": String::from_utf8_lossy(&i.payload),
            })).collect::<Vec<_>>(),
            "response": effects.response.as_ref().map(|r| json!({
                "status": r.status,
                "headers": r.headers,
                "body": String::from_utf8_lossy(&r.body),
            })),
            "failed_items": effects.failed_items,
            "posts": effects.posts.iter().map(|p| json!({
                "connection": p.connection,
                "data": String::from_utf8_lossy(&p.data),
            })).collect::<Vec<_>>(),
        }),
        Err(error) => json!({"ok": false, "error": error.kind(), "message": error.to_string()}),
    };
    json!({
        "outcome": outcome,
        "logs": report.logs.iter().map(|l| json!({
            "level": format!("{:?}", l.level).to_lowercase(),
            "message": l.message,
        })).collect::<Vec<_>>(),
        "logs_dropped": report.logs_dropped,
        "metrics": report.metrics.iter().map(|m| json!({
            "name": m.name,
            "labels": m.labels.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
            "kind": format!("{:?}", m.kind).to_lowercase(),
            "value": m.value,
        })).collect::<Vec<_>>(),
        "refused": report.refused,
        "refused_count": report.refused_count,
        "cost": {
            "fuel": report.cost.fuel,
            "memory_bytes": report.cost.memory_bytes,
            "duration_us": report.cost.duration.as_micros() as u64,
            "start": match report.cost.start { Start::Cold => "cold", Start::Warm => "warm" },
        },
    })
}

/// The machine-readable report (`--json`).
pub fn to_json(run: &LocalRun) -> Value {
    let invocations: Vec<Value> = run.reports.iter().map(report_json).collect();
    json!({
        "function": run.function,
        "version": run.version,
        "module_bytes": run.module_bytes,
        "grants": {
            "assumed": run.configured.is_none(),
            "config": run.configured,
            "local": run.grants.local,
            "upstream": run.grants.upstream,
            "invoke": run.grants.invoke,
            "secrets": run.grants.secrets,
        },
        "deploy_us": run.deploy.as_micros() as u64,
        "invocations": invocations,
    })
}

fn destination(d: Destination) -> &'static str {
    match d {
        Destination::Local => "local",
        Destination::Upstream => "upstream",
    }
}

/// A KV value for people, when it is not known whether an increment wrote
/// it: see [`show_kv`].
pub fn show_value(value: &[u8]) -> String {
    show_kv(value, None)
}

/// A KV value for people. A counter (`counter`: an increment wrote it last)
/// as its number, then its bytes: `200 (counter; bytes c800000000000000)`.
/// Text as text. Anything else as bytes: `0x0000c03f000000c0 (8 bytes)`.
/// When it is not known how it was written (`None`), 8 bytes of binary
/// show as bytes, with the number they would be as a counter as a hint.
pub fn show_kv(value: &[u8], counter: Option<bool>) -> String {
    let hex: String = value.iter().take(64).map(|b| format!("{b:02x}")).collect();
    let number = <[u8; 8]>::try_from(value).ok().map(i64::from_le_bytes);
    if let (Some(true), Some(n)) = (counter, number) {
        return format!("{n} (counter; bytes {hex})");
    }
    let printable = std::str::from_utf8(value).is_ok_and(|t| !t.chars().any(char::is_control));
    if printable {
        return show_bytes(value);
    }
    match (counter, number) {
        (None, Some(n)) => format!("0x{hex} (8 bytes; {n} if it is a counter)"),
        _ => format!(
            "0x{hex}{} ({} bytes)",
            if value.len() > 64 { "…" } else { "" },
            value.len()
        ),
    }
}

/// A payload as text (escaped: it is the guest's), cut if long.
fn show_bytes(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) if text.len() <= 400 => escape(text).into_owned(),
        Ok(text) => {
            let cut: String = text.chars().take(200).collect();
            format!("{}… ({} bytes)", escape(&cut), bytes.len())
        }
        Err(_) => format!("<{} bytes of binary>", bytes.len()),
    }
}

fn micros(d: Duration) -> String {
    if d < Duration::from_millis(10) {
        format!("{} µs", d.as_micros())
    } else {
        format!("{} ms", d.as_millis())
    }
}

fn bytes(n: usize) -> String {
    if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / f64::from(1 << 20))
    } else {
        format!("{} KiB", n >> 10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counter_shows_as_its_number_and_its_bytes() {
        assert_eq!(
            show_kv(&200i64.to_le_bytes(), Some(true)),
            "200 (counter; bytes c800000000000000)"
        );
    }

    #[test]
    fn eight_bytes_a_put_wrote_show_as_bytes() {
        // A robot's position: two f32.
        let pos = [2.0f32.to_le_bytes(), 2.5f32.to_le_bytes()].concat();
        assert_eq!(show_kv(&pos, Some(false)), "0x0000004000002040 (8 bytes)");
        assert_eq!(
            show_kv(&pos, None),
            "0x0000004000002040 (8 bytes; 4620693218755870720 if it is a counter)"
        );
    }

    #[test]
    fn text_shows_as_text_unless_an_increment_wrote_it() {
        assert_eq!(show_kv(b"9.4", Some(false)), "9.4");
        assert_eq!(show_kv(b"AAAAAAAA", None), "AAAAAAAA");
        assert!(show_kv(b"AAAAAAAA", Some(true)).contains("(counter;"));
    }
}
