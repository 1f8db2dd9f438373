//! `wasmgate cost`: each function's use over a window, what it would cost
//! on AWS Lambda and IoT Core, and right-sizing advice (`wasmgate::cost`).

use crate::{load_config_for, Needs};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

pub const COST_HELP: &str = "\
The gateway keeps what each function version's invocations used, per hour, in
its database (written every 10 s and at shutdown; asked through a running
gateway, up to now). This adds it up over the window: invocations, total and
p99 run time, GB-seconds (the memory limit x the time run, as Lambda bills),
fuel, and the peak memory an invocation reached; then what the same month
would cost on AWS Lambda (at least 128 MB, 1 ms rounding) plus one IoT Core
message per invocation, and advice where a limit is far above what is used
or close to it.

Examples:
  wasmgate cost                 # the last 24 hours
  wasmgate cost --since 7d
  wasmgate cost --json | jq '.versions[] | {function, aws_month_usd}'";

#[derive(Debug, Args)]
#[command(after_help = COST_HELP)]
pub struct CostArgs {
    /// The gateway config; its data_dir holds the database.
    #[arg(long, short, default_value = "gateway.toml")]
    pub config: PathBuf,
    /// The window: `30m`, `24h`, `7d`.
    #[arg(long, default_value = "24h", value_parser = super::logs::parse_age)]
    pub since: Duration,
    /// The report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn cost(args: CostArgs) -> anyhow::Result<ExitCode> {
    let config = match load_config_for(&args.config, None, Needs::DATABASE) {
        Ok(config) => config,
        Err(code) => return Ok(code),
    };
    let now = wasmgate::dlq::now_ms();
    let since_ms = now - args.since.as_millis() as i64;
    let report: wasmgate::cost::Report = if super::daemon_runs(&config.data_dir) {
        let answer = wasmgate::control::client::request(
            &config.data_dir,
            "GET",
            &format!("/v1/cost?since_ms={since_ms}"),
            &[],
            b"",
        )?;
        if answer.status != 200 {
            anyhow::bail!(
                "the gateway refused ({}): {}",
                answer.status,
                answer.body["error"].as_str().unwrap_or("?")
            );
        }
        if args.json {
            println!("{}", serde_json::to_string_pretty(&answer.body)?);
            return Ok(ExitCode::SUCCESS);
        }
        serde_json::from_value(answer.body)?
    } else {
        let store = super::open_store(&config)?;
        let rows = store.usage(since_ms);
        store.close();
        wasmgate::cost::report(&rows?, since_ms, now, wasmgate::cost::AWS_PRICES)
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", wasmgate::cost::render(&report));
    }
    Ok(ExitCode::SUCCESS)
}
