//! Schedules as a source, in EventBridge Scheduler's forms: `rate(5
//! minutes)`, `cron(0 2 * * ? *)`, one-time `at(2026-12-24T18:00:00)`.
//!
//! Each tick is an event like any other, and its time is the schedule's
//! cursor: written (`schedules.last_ms`) in the transaction that commits the
//! tick's invocation or its dead letter ([`Settle::Advance`]). So across a
//! kill -9 a tick either committed, and is never run again, or did not, and
//! is due again at the next start: exactly once. A schedule runs one tick at
//! a time, the next only once the last is settled; what it missed while the
//! gateway was down (or while a tick ran long) follows [`Missed`].
//!
//! Times are UTC: `at(...)` and `cron(...)` fields are read in UTC.
//!
//! [`Settle::Advance`]: super::Settle::Advance

pub use super::expression::{plan, Expression, Missed, Plan};
use super::{Advance, Intake, Job, Settle};
use crate::event::OwnedEvent;
use crate::runtime::Effects;
use crate::store::{Commit, Cursor, Store};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One schedule of one function.
#[derive(Debug, Clone)]
pub struct ScheduleSpec {
    pub function: String,
    /// The expression as written: the schedule's name in events, logs and
    /// the store.
    pub name: String,
    pub expression: Expression,
    pub missed: Missed,
}

/// Unix milliseconds now.
fn now_ms() -> i64 {
    crate::dlq::now_ms()
}

/// Runs one schedule until it is done, the workers are gone, or the
/// gateway drains; `last` is its last settled tick from the store.
pub async fn run(
    spec: ScheduleSpec,
    last: Option<i64>,
    store: Store,
    intake: Intake,
    draining: Arc<AtomicBool>,
) {
    let mut last = last;
    if last.is_none() {
        // A new schedule: record when it started, so that a gateway down
        // from before its first tick knows that tick was missed.
        let now = now_ms();
        store.submit(Commit {
            function: spec.function.clone(),
            effects: Effects::default(),
            dedup: Vec::new(),
            cursors: vec![Cursor::Schedule {
                function: spec.function.clone(),
                schedule: spec.name.clone(),
                scheduled_ms: now,
            }],
            trace: None,
            done: Box::new(|_| {}),
        });
        last = Some(now);
    }
    loop {
        let now = now_ms();
        let plan = plan(&spec.expression, last, now, spec.missed);
        if plan.skipped > 0 {
            tracing::warn!(
                function = %spec.function,
                schedule = %spec.name,
                skipped = plan.skipped,
                missed = ?spec.missed,
                "missed ticks not run"
            );
        }
        for scheduled in plan.catch_up {
            tracing::info!(function = %spec.function, schedule = %spec.name, late_ms = now_ms() - scheduled, "running a missed tick");
            if !fire(&spec, scheduled, true, &intake, &draining).await {
                return;
            }
        }
        let Some(due) = plan.next else {
            tracing::info!(function = %spec.function, schedule = %spec.name, "schedule done: it fires no more");
            return;
        };
        // Sleeps in steps, against the wall clock: a clock set forward (NTP
        // after boot on a board without a battery) is noticed within a minute.
        loop {
            let wait = due - now_ms();
            if wait <= 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(wait.min(60_000) as u64)).await;
        }
        if draining.load(Ordering::SeqCst) {
            return;
        }
        // Late by more than a second (a clock jump, a long tick): the plan
        // at the loop's top decides about the rest.
        if !fire(&spec, due, false, &intake, &draining).await {
            return;
        }
        last = Some(due);
    }
}

/// Runs the tick scheduled at `scheduled` until it is settled; `false` when
/// the schedule is to stop (shutting down, the workers gone).
async fn fire(
    spec: &ScheduleSpec,
    scheduled: i64,
    catch_up: bool,
    intake: &Intake,
    draining: &AtomicBool,
) -> bool {
    let make = || {
        let (advance, heard) = Advance::new(Cursor::Schedule {
            function: spec.function.clone(),
            schedule: spec.name.clone(),
            scheduled_ms: scheduled,
        });
        let job = Job {
            event: OwnedEvent::Schedule {
                schedule: spec.name.clone(),
                scheduled_ms: scheduled.max(0) as u64,
                fired_ms: now_ms().max(0) as u64,
                catch_up,
            },
            arrived: Instant::now(),
            settle: Settle::Advance(advance),
            dedup: None,
            trace: None,
        };
        (job, heard)
    };
    let what = format!(
        "function {} schedule {} tick {scheduled}",
        spec.function, spec.name
    );
    super::deliver_settled(make, intake, draining, &what).await
}
