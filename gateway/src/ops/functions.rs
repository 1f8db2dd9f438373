//! `wasmgate functions`: the functions, their versions, triggers, grants and
//! effective limits: as the running gateway runs them (with their live
//! version and counters) when one answers on the config's data_dir, else
//! as the config file says.

use crate::{load_config_for, Needs};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct FunctionsArgs {
    /// The gateway config (TOML).
    #[arg(long, short, default_value = "gateway.toml")]
    config: PathBuf,
    /// A board profile, as `wasmgate run --board` applies it: the limits
    /// shown are the ones the function would run under.
    #[arg(long)]
    board: Option<String>,
    /// Print a JSON array instead of text.
    #[arg(long)]
    json: bool,
}

pub fn functions(args: FunctionsArgs) -> anyhow::Result<ExitCode> {
    // A module that is missing is shown as missing, not refused: this is
    // how one finds out which.
    let config = match load_config_for(&args.config, args.board.as_deref(), Needs::DATABASE) {
        Ok(config) => config,
        Err(code) => return Ok(code),
    };
    match wasmgate::control::client::request(&config.data_dir, "GET", "/v1/functions", &[], b"") {
        Ok(answer) if answer.status == 200 => {
            if args.json {
                println!("{:#}", answer.body);
            } else {
                print!("{}", running(&answer.body));
            }
            return Ok(ExitCode::SUCCESS);
        }
        Ok(answer) => eprintln!(
            "the running gateway answered {}: {}; showing the config file",
            answer.status, answer.body["error"]
        ),
        Err(wasmgate::control::client::ClientError::NotRunning(_)) => {
            if !args.json {
                eprintln!("(no gateway runs on this data_dir: showing the config file)");
            }
        }
        Err(e) => eprintln!("{e}; showing the config file"),
    }
    let modules: Vec<_> = config
        .functions
        .iter()
        .map(|f| wasmgate::functions::module_info(&f.wasm))
        .collect();
    if args.json {
        println!("{:#}", wasmgate::functions::to_json(&config, &modules));
    } else {
        print!("{}", wasmgate::functions::render(&config, &modules));
        if config.functions.is_empty() {
            eprintln!("{}: no functions", args.config.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The running gateway's functions, one block each.
fn running(body: &serde_json::Value) -> String {
    let mut out = String::new();
    for f in body.as_array().into_iter().flatten() {
        let c = &f["counters"];
        let n = |k: &str| c[k].as_u64().unwrap_or(0);
        let canary = match (f["alias"]["other"].as_str(), f["alias"]["weight"].as_f64()) {
            (Some(other), Some(weight)) => format!(" ({weight} of the events to {other})"),
            _ => String::new(),
        };
        out += &format!(
            "{}\n  live       {}{canary}\n  module     {}\n  triggers   {}\n  counters   {} received, {} ok, {} failed, {} retries, {} dead letters, {} throttled, {} in flight\n",
            f["name"].as_str().unwrap_or("?"),
            f["live"].as_str().unwrap_or("?"),
            f["wasm"].as_str().unwrap_or("?"),
            f["triggers"].as_array().map_or(0, Vec::len),
            n("received"),
            n("succeeded"),
            n("failed"),
            n("retries"),
            n("dead_letters"),
            n("throttled"),
            f["in_flight"].as_u64().unwrap_or(0),
        );
    }
    out
}
