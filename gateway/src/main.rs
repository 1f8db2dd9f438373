//! The `wasmgate` command. Parsing and printing only; the work is in the library.

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use wasmgate::event::{OwnedEvent, EVENT_JSON_HELP};
use wasmgate::runtime::{FunctionSpec, Limits};

/// Serverless functions for edge gateways: MQTT in, WebAssembly functions,
/// SQLite state, durable sync upstream.
#[derive(Debug, Parser)]
#[command(name = "wasmgate", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a function once on an event file, with no broker, and print what it
    /// did (emits, KV writes, logs) and what it cost (fuel, memory, time).
    #[command(after_help = EVENT_JSON_HELP)]
    Invoke(InvokeArgs),
}

#[derive(Debug, Args)]
struct InvokeArgs {
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
struct LimitArgs {
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

/// Exit codes: 0 success, 1 the function failed, 2 bad input (files, flags).
const EXIT_FAILED: u8 = 1;
const EXIT_BAD_INPUT: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Invoke(args) => invoke(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(EXIT_BAD_INPUT)
        }
    }
}

fn invoke(args: InvokeArgs) -> anyhow::Result<ExitCode> {
    let wasm = std::fs::read(&args.wasm)
        .with_context(|| format!("cannot read the module {}", args.wasm.display()))?;
    let text = std::fs::read_to_string(&args.event)
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
