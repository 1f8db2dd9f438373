//! `wasmgate logs`: functions' log lines from the ring in the gateway's
//! database, through the running gateway (its management socket) or, when
//! none runs, from the database itself.

use crate::{load_config_for, Needs};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use wasmgate::store::logs::{parse_level, LogEntry, LogQuery};

pub const LOGS_HELP: &str = "\
A function's `log` lines go to the gateway's own log (the journal) and to a
ring of the newest lines in its database ([logs] keep, 10,000 by default), at
most [logs] rate lines a second per function (100 by default; the rest are
dropped and counted in /metrics). Each line carries the request id that is
also in the function's dead letters and error lines.

Examples:
  wasmgate logs vending                    # the last 100 lines
  wasmgate logs vending --follow           # and the new ones as they come
  wasmgate logs --since 10m --level warn   # every function's warnings and errors
  wasmgate logs vending --request 1099511627781
  wasmgate logs vending --json | jq .message";

#[derive(Debug, Args)]
#[command(after_help = LOGS_HELP)]
pub struct LogsArgs {
    /// The function whose lines to show; every function's without it.
    pub function: Option<String>,
    /// The gateway config; its data_dir holds the database.
    #[arg(long, short, default_value = "gateway.toml")]
    pub config: PathBuf,
    /// Keep printing new lines as they come (Ctrl-C stops).
    #[arg(long, short)]
    pub follow: bool,
    /// Only lines this recent: `30s`, `10m`, `2h`, `1d`.
    #[arg(long, value_parser = parse_age)]
    pub since: Option<Duration>,
    /// Only one invocation's lines, by its request id.
    #[arg(long)]
    pub request: Option<u64>,
    /// Only this level and the more severe: error, warn, info, debug, trace.
    #[arg(long, value_parser = parse_level_arg)]
    pub level: Option<wasmgate_abi::LogLevel>,
    /// The newest this many lines (before following).
    #[arg(long, short = 'n', default_value_t = 100)]
    pub limit: u32,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

fn parse_level_arg(text: &str) -> Result<wasmgate_abi::LogLevel, String> {
    parse_level(text).ok_or_else(|| "expected error, warn, info, debug or trace".to_owned())
}

/// `30s`, `10m`, `2h`, `1d` (a bare number is seconds).
pub fn parse_age(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number and a unit, as in 30s, 10m, 2h, 1d"))?;
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit is s, m, h or d")),
    };
    n.checked_mul(seconds)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?}: too long"))
}

/// Where the lines come from: the running gateway, or its database.
enum Source {
    Daemon(PathBuf),
    Database(wasmgate::store::Store),
}

impl Source {
    fn read(
        &mut self,
        config: &wasmgate::config::Config,
        q: &LogQuery,
    ) -> anyhow::Result<Vec<LogEntry>> {
        if let Source::Daemon(dir) = self {
            use wasmgate::control::client::{request, ClientError};
            let path = format!("/v1/logs?{}", q.to_query_string());
            match request(dir, "GET", &path, &[], b"") {
                Ok(answer) if answer.status == 200 => {
                    return Ok(serde_json::from_value(answer.body["lines"].clone())?)
                }
                // A daemon older than this command (the package was
                // upgraded, the daemon not yet restarted) knows no `order`:
                // it reads newest first, as `--follow` did before.
                Ok(answer)
                    if answer.status == 400
                        && q.oldest_first
                        && answer.body["error"]
                            .as_str()
                            .is_some_and(|e| e.contains("\"order\"")) =>
                {
                    let older = LogQuery {
                        oldest_first: false,
                        ..q.clone()
                    };
                    return self.read(config, &older);
                }
                Ok(answer) => anyhow::bail!(
                    "the gateway refused ({}): {}",
                    answer.status,
                    answer.body["error"].as_str().unwrap_or("?")
                ),
                // It stopped while we followed: read on from the database.
                Err(ClientError::NotRunning(_)) => {
                    *self = Source::Database(super::open_store(config)?);
                }
                Err(e) => return Err(e.into()),
            }
        }
        match self {
            Source::Database(store) => Ok(store.logs(q)?),
            Source::Daemon(_) => unreachable!("replaced above"),
        }
    }
}

pub fn logs(args: LogsArgs) -> anyhow::Result<ExitCode> {
    let config = match load_config_for(&args.config, None, Needs::DATABASE) {
        Ok(config) => config,
        Err(code) => return Ok(code),
    };
    let mut source = if super::daemon_runs(&config.data_dir) {
        Source::Daemon(config.data_dir.clone())
    } else {
        Source::Database(super::open_store(&config)?)
    };
    let mut query = LogQuery {
        function: args.function.clone(),
        after: None,
        since_ms: args
            .since
            .map(|age| wasmgate::dlq::now_ms() - age.as_millis() as i64),
        request_id: args.request,
        level: args.level,
        limit: args.limit.max(1),
        oldest_first: false,
    };
    let result = (|| -> anyhow::Result<ExitCode> {
        loop {
            let lines = source.read(&config, &query)?;
            for line in &lines {
                print_line(line, args.json, args.function.is_none());
            }
            if let Some(last) = lines.last() {
                query.after = Some(last.id);
            }
            if !args.follow {
                return Ok(ExitCode::SUCCESS);
            }
            // Following: everything new in order, not the newest `limit`
            // of it; a full page means more are waiting, read at once.
            let full =
                query.oldest_first && lines.len() as u32 >= wasmgate::store::logs::MAX_QUERY_LINES;
            query.limit = wasmgate::store::logs::MAX_QUERY_LINES;
            // Oldest first even after an empty first read: nothing matched
            // then, so whatever matches now is new.
            query.oldest_first = true;
            if !full {
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    })();
    if let Source::Database(store) = &source {
        store.close();
    }
    result
}

fn print_line(line: &LogEntry, json: bool, with_function: bool) {
    use std::io::Write as _;
    let text = if json {
        serde_json::to_string(line).unwrap_or_default()
    } else {
        let function = if with_function {
            format!("{}@", line.function)
        } else {
            String::new()
        };
        format!(
            "{} {:<5} {function}{} request={} [{}] {}",
            wasmgate::dlq::utc(line.at_ms),
            line.level.to_uppercase(),
            line.version,
            line.request_id,
            line.trigger,
            line.message
        )
    };
    // A closed pipe (`| head`) ends the command, not with a panic.
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{text}").and_then(|()| out.flush()).is_err() {
        std::process::exit(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_as_the_help_says() {
        assert_eq!(parse_age("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_age("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_age("2h"), Ok(Duration::from_secs(7_200)));
        assert_eq!(parse_age("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_age("45"), Ok(Duration::from_secs(45)));
        assert!(parse_age("10 minutes").is_err());
        assert!(parse_age("m").is_err());
        assert!(parse_age("99999999999999999999d").is_err());
    }
}
