//! `wasmgate schedules`: each schedule trigger, its last tick and when it
//! fires next. Reads the config and the database (safe while the gateway runs).

use crate::{load_config_for, Needs};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use wasmgate::triggers::expression::{plan, Expression, Missed};

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
    let statuses = status(&config, &ticks, wasmgate::dlq::now_ms());
    if statuses.is_empty() {
        eprintln!("{}: no schedule triggers", args.config.display());
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", render(&statuses));
    Ok(ExitCode::SUCCESS)
}

/// One schedule as `wasmgate schedules` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Status {
    pub function: String,
    pub schedule: String,
    pub missed: Missed,
    /// The last settled tick (or when the schedule first started).
    pub last_ms: Option<i64>,
    /// When it fires next, if the gateway runs; `None`: never again.
    pub next_ms: Option<i64>,
    /// Ticks it would run late at a start now (missed while down).
    pub due_now: usize,
}

/// Every schedule trigger of `config`, from the store's last ticks.
fn status(
    config: &wasmgate::config::Config,
    ticks: &[(String, String, i64)],
    now: i64,
) -> Vec<Status> {
    let mut out = Vec::new();
    for f in &config.functions {
        for t in &f.triggers {
            let Some(name) = &t.schedule else { continue };
            let Ok(expression) = Expression::parse_in(name, t.timezone.as_deref()) else {
                continue;
            };
            let missed = t.missed.unwrap_or_default();
            let last_ms = ticks
                .iter()
                .find(|(function, schedule, _)| *function == f.name && schedule == name)
                .map(|(_, _, last)| *last);
            let plan = plan(&expression, last_ms, now, missed);
            out.push(Status {
                function: f.name.clone(),
                schedule: match &t.timezone {
                    Some(zone) => format!("{name} {zone}"),
                    None => name.clone(),
                },
                missed,
                last_ms,
                next_ms: plan.catch_up.first().copied().or(plan.next),
                due_now: plan.catch_up.len(),
            });
        }
    }
    out
}

/// `wasmgate schedules` as text: one line per schedule.
fn render(statuses: &[Status]) -> String {
    use std::fmt::Write as _;
    let time = |ms: Option<i64>, none: &str| ms.map_or_else(|| none.to_owned(), wasmgate::dlq::utc);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20} {:<28} {:<6} {:<24} NEXT",
        "FUNCTION", "SCHEDULE", "MISSED", "LAST"
    );
    for s in statuses {
        let mut next = time(s.next_ms, "never");
        if s.due_now > 0 {
            let _ = write!(
                next,
                " (late: {} missed tick(s) run at the next start)",
                s.due_now
            );
        }
        let _ = writeln!(
            out,
            "{:<20} {:<28} {:<6} {:<24} {next}",
            wasmgate::text::escape(&s.function),
            wasmgate::text::escape(&s.schedule),
            s.missed,
            time(s.last_ms, "not started"),
        );
    }
    out
}
