//! `wasmgate invoke`: run a function once on an event file, with no broker.

use crate::EXIT_FAILED;
use anyhow::Context as _;
use clap::Args;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use wasmgate::event::OwnedEvent;
use wasmgate::runtime::{FunctionSpec, Limits};

#[derive(Debug, Args)]
pub struct InvokeArgs {
    /// The function: a .wasm module built against the wasmgate ABI.
    wasm: PathBuf,
    /// The event, as JSON (see below).
    #[arg(long, short)]
    event: PathBuf,
    /// The function's name, as it would be deployed (its KV namespace).
    #[arg(long, default_value = "local")]
    name: String,
    /// A config value the function reads with config_get; repeatable.
    #[arg(long = "config", short = 'c', value_name = "KEY=VALUE", value_parser = parse_key_value)]
    config: Vec<(String, String)>,
    /// Invoke this many times, committing KV between runs (shows warm starts and running totals).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    repeat: u32,
    /// Print a JSON report instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    limits: LimitArgs,
}

/// Per-invocation limits; the defaults are the gateway's.
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Fuel budget, roughly Wasm instructions.
    #[arg(long, default_value_t = Limits::DEFAULT_FUEL)]
    fuel: u64,
    /// Linear memory limit in MiB.
    #[arg(long, default_value_t = (Limits::DEFAULT_MEMORY_BYTES >> 20) as u64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    memory_mb: u64,
    /// Wall-clock limit per invocation, in milliseconds.
    #[arg(long, default_value_t = Limits::DEFAULT_TIMEOUT.as_millis() as u64, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: u64,
    /// Emits (and invokes) allowed per invocation.
    #[arg(long, default_value_t = Limits::DEFAULT_MAX_EMITS)]
    max_emits: usize,
    /// Bytes per emitted payload.
    #[arg(long, default_value_t = Limits::DEFAULT_MAX_EMIT_BYTES)]
    max_emit_bytes: usize,
    /// Bytes per KV value.
    #[arg(long, default_value_t = Limits::DEFAULT_MAX_KV_VALUE_BYTES)]
    max_kv_value_bytes: usize,
}

impl LimitArgs {
    fn limits(&self) -> Limits {
        Limits {
            fuel: self.fuel,
            memory_bytes: (self.memory_mb as usize) << 20,
            timeout: Duration::from_millis(self.timeout_ms),
            max_emits: self.max_emits,
            max_emit_bytes: self.max_emit_bytes,
            max_kv_value_bytes: self.max_kv_value_bytes,
            ..Limits::default()
        }
    }
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

pub fn invoke(args: InvokeArgs) -> anyhow::Result<ExitCode> {
    use wasmgate::files::{read_limited, read_text, MAX_EVENT_FILE_BYTES, MAX_MODULE_BYTES};
    let wasm = read_limited(&args.wasm, MAX_MODULE_BYTES, "module")
        .with_context(|| format!("cannot read the module {}", args.wasm.display()))?;
    let text = read_text(&args.event, MAX_EVENT_FILE_BYTES, "event file")
        .with_context(|| format!("cannot read the event file {}", args.event.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", args.event.display()))?;
    let event = OwnedEvent::from_json(&json)
        .with_context(|| format!("{} is not a valid event", args.event.display()))?;
    let spec = FunctionSpec {
        config: args.config.iter().cloned().collect::<BTreeMap<_, _>>(),
        limits: args.limits.limits(),
        ..FunctionSpec::permissive(args.name)
    };
    let run = wasmgate::local::invoke(spec, &wasm, &event, args.repeat)?;
    if args.json {
        println!("{:#}", wasmgate::local::to_json(&run));
    } else {
        print!("{}", wasmgate::local::render(&run));
    }
    Ok(if run.all_succeeded() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    })
}
