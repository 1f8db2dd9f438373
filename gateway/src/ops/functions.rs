//! `wasmgate functions`: the configured functions, their versions, triggers,
//! grants and effective limits.

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
