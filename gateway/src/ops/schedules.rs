//! `wasmgate schedules`: each schedule trigger, its last tick and when it
//! fires next. Reads the config and the database (safe while the gateway runs).

use crate::{load_config_for, Needs};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct SchedulesArgs {
    /// The gateway config (TOML).
    #[arg(long, short, default_value = "gateway.toml")]
    config: PathBuf,
}

pub fn schedules(args: SchedulesArgs) -> anyhow::Result<ExitCode> {
    let config = match load_config_for(&args.config, None, Needs::DATABASE) {
        Ok(config) => config,
        Err(code) => return Ok(code),
    };
    // Before the first run there is no database, and no schedule has started.
    let ticks = if config.data_dir.join("wasmgate.db").exists() {
        let store = super::open_store(&config)?;
        let ticks = store.schedule_ticks()?;
        store.close();
        ticks
    } else {
        Vec::new()
    };
    use wasmgate::triggers::schedule;
    let statuses = schedule::status(&config, &ticks, wasmgate::dlq::now_ms());
    if statuses.is_empty() {
        eprintln!("{}: no schedule triggers", args.config.display());
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", schedule::render(&statuses));
    Ok(ExitCode::SUCCESS)
}
