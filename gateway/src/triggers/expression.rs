//! The forms a schedule is written in (EventBridge Scheduler's `rate(...)`,
//! `cron(...)` and `at(...)`, in UTC or in a `timezone`) and what a schedule
//! does about ticks it missed: pure (but for reading a zone's rules from the
//! system's tz database), for `config check` and for the schedules that run
//! them.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What a schedule does about the ticks it missed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Missed {
    /// None of them runs.
    Skip,
    /// The latest one runs, late.
    #[default]
    Once,
    /// Each runs, oldest first, up to 1,000.
    All,
}

impl std::fmt::Display for Missed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Missed::Skip => "skip",
            Missed::Once => "once",
            Missed::All => "all",
        })
    }
}

/// The most missed ticks `missed = "all"` runs after downtime; older ones
/// are skipped with a warning (a rate of a second, down for a week, would
/// otherwise be 600,000 invocations).
pub const MAX_CATCH_UP: usize = 1_000;

/// The shortest rate: a schedule that fires faster is an MQTT or HTTP
/// trigger's job, and a rate of 0 would never end.
pub const MIN_RATE: Duration = Duration::from_secs(1);

/// The longest rate, ten years and some.
pub const MAX_RATE: Duration = Duration::from_secs(3_660 * 86_400);

/// A schedule's time zone, from the system's tz database (Debian's tzdata).
/// Cron and at times are local wall times in it. A wall time skipped when
/// the clocks go forward runs as far after the change as it would have been
/// (02:30 on a day that goes from 02:00 to 03:00 runs at 03:30); a wall time
/// that happens twice when they go back runs once, the first time.
#[derive(Debug, Clone)]
pub struct Zone(jiff::tz::TimeZone);

impl Zone {
    /// The zone of an IANA name (`"Europe/Berlin"`); the error says why not.
    pub fn named(name: &str) -> Result<Zone, String> {
        jiff::tz::db().get(name).map(Zone).map_err(|e| {
            format!(
                "unknown time zone {name:?} ({e}); names are the tz database's (Europe/Berlin, America/New_York), read from /usr/share/zoneinfo (the tzdata package)"
            )
        })
    }

    /// The wall time at `t` (Unix ms), as chrono's naive time.
    fn wall(&self, t: i64) -> Option<chrono::NaiveDateTime> {
        let dt = self
            .0
            .to_datetime(jiff::Timestamp::from_millisecond(t).ok()?);
        chrono::NaiveDate::from_ymd_opt(dt.year().into(), dt.month() as u32, dt.day() as u32)?
            .and_hms_milli_opt(
                dt.hour() as u32,
                dt.minute() as u32,
                dt.second() as u32,
                dt.millisecond() as u32,
            )
    }

    /// The instant (Unix ms) of a wall time, as [`Zone`] says for gaps and folds.
    fn instant(&self, wall: chrono::NaiveDateTime) -> Option<i64> {
        use chrono::{Datelike, Timelike};
        let dt = jiff::civil::DateTime::new(
            i16::try_from(wall.year()).ok()?,
            wall.month() as i8,
            wall.day() as i8,
            wall.hour() as i8,
            wall.minute() as i8,
            wall.second() as i8,
            (wall.nanosecond() % 1_000_000_000) as i32,
        )
        .ok()?;
        let ts = self.0.to_ambiguous_timestamp(dt).compatible().ok()?;
        Some(ts.as_millisecond())
    }
}

/// When a schedule fires.
#[derive(Debug, Clone)]
pub enum Expression {
    /// Every period, counted from the last tick (or from the first start).
    Rate(Duration),
    /// At these times, in UTC, or as wall times in a zone.
    Cron(Box<croner::Cron>, Option<Zone>),
    /// Once, at this Unix time in milliseconds.
    At(i64),
}

impl Expression {
    /// Parses EventBridge Scheduler's `rate(...)`, `cron(...)` and `at(...)`,
    /// in UTC. The error says what was expected, for `config check`.
    pub fn parse(text: &str) -> Result<Expression, String> {
        Self::parse_in(text, None)
    }

    /// The same, with cron and at times as wall times in `zone` (an IANA
    /// name, `"Europe/Berlin"`); `None` is UTC. A rate has no zone.
    pub fn parse_in(text: &str, zone: Option<&str>) -> Result<Expression, String> {
        let zone = zone.map(Zone::named).transpose()?;
        let text = text.trim();
        let inner = |prefix: &str| {
            text.strip_prefix(prefix)
                .and_then(|rest| rest.strip_suffix(')'))
                .map(str::trim)
        };
        if let Some(rate) = inner("rate(") {
            return parse_rate(rate).map(Expression::Rate);
        }
        if let Some(cron) = inner("cron(") {
            let cron = parse_cron(cron)?;
            return Ok(Expression::Cron(Box::new(cron), zone));
        }
        if let Some(at) = inner("at(") {
            return parse_at(at, zone.as_ref()).map(Expression::At);
        }
        Err("expected rate(5 minutes), cron(0 2 * * ? *) or at(2026-12-24T18:00:00)".into())
    }

    /// The first time this fires strictly after `t` (Unix ms); a rate counts
    /// its periods from `anchor`. `None`: never again.
    pub fn next_after(&self, anchor: i64, t: i64) -> Option<i64> {
        match self {
            Expression::Rate(period) => {
                let period = period.as_millis() as i64;
                if t < anchor {
                    return Some(anchor);
                }
                Some(anchor + ((t - anchor) / period + 1) * period)
            }
            Expression::At(at) => (*at > t).then_some(*at),
            Expression::Cron(cron, None) => {
                let after = chrono::DateTime::from_timestamp_millis(t)?;
                let next = cron.find_next_occurrence(&after, false).ok()?;
                Some(next.timestamp_millis())
            }
            Expression::Cron(cron, Some(zone)) => {
                // Cron over wall times: the next matching wall time after
                // t's, as an instant. A wall time of a fold's first pass
                // may lie before t (t is in the second pass): look past it.
                let mut wall = zone.wall(t)?.and_utc();
                for _ in 0..8 {
                    wall = cron.find_next_occurrence(&wall, false).ok()?;
                    let at = zone.instant(wall.naive_utc())?;
                    if at > t {
                        return Some(at);
                    }
                }
                None
            }
        }
    }
}

fn parse_rate(text: &str) -> Result<Duration, String> {
    let expected = || {
        format!("invalid rate({text}): expected a number and a unit, as in rate(10 seconds) or rate(5 minutes)")
    };
    let mut words = text.split_whitespace();
    let (Some(n), Some(unit), None) = (words.next(), words.next(), words.next()) else {
        return Err(expected());
    };
    let n: u64 = n.parse().map_err(|_| expected())?;
    let seconds = match unit {
        "second" | "seconds" => 1,
        "minute" | "minutes" => 60,
        "hour" | "hours" => 3_600,
        "day" | "days" => 86_400,
        _ => return Err(expected()),
    };
    let period = n
        .checked_mul(seconds)
        .map(Duration::from_secs)
        .ok_or_else(expected)?;
    if period < MIN_RATE {
        return Err(format!("invalid rate({text}): at least rate(1 second)"));
    }
    // Periods are counted in milliseconds as i64: a rate past a few
    // centuries would wrap (and a wrapped 0 divides by zero).
    if period > MAX_RATE {
        return Err(format!("invalid rate({text}): at most rate(3660 days)"));
    }
    Ok(period)
}

/// EventBridge's six fields: minutes, hours, day of month, month, day of
/// week (1-7 = SUN-SAT, or SUN-SAT), year; `?` in one of the day fields.
fn parse_cron(text: &str) -> Result<croner::Cron, String> {
    use croner::parser::{CronParser, Seconds, Year};
    let fields = text.split_whitespace().count();
    if fields != 6 {
        return Err(format!(
            "invalid cron({text}): expected 6 fields (minutes hours day-of-month month day-of-week year), as in cron(0 2 * * ? *); found {fields}"
        ));
    }
    let cron = CronParser::builder()
        .seconds(Seconds::Required)
        .year(Year::Required)
        .alternative_weekdays(true)
        .build()
        .parse(&format!("0 {text}"))
        .map_err(|e| format!("invalid cron({text}): {e}"))?;
    // A pattern that matches no time at all (31 February, a year gone).
    let now = chrono::Utc::now();
    if cron.find_next_occurrence(&now, false).is_err() {
        return Err(format!("cron({text}) never fires after today"));
    }
    Ok(cron)
}

fn parse_at(text: &str, zone: Option<&Zone>) -> Result<i64, String> {
    let time = chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S").map_err(|e| {
        format!("invalid at({text}): {e}; expected a date and time as in at(2026-12-24T18:00:00)")
    })?;
    match zone {
        None => Ok(time.and_utc().timestamp_millis()),
        Some(zone) => zone
            .instant(time)
            .ok_or_else(|| format!("invalid at({text}): not a time in its zone")),
    }
}

/// What a schedule does about ticks it missed (the gateway was down, or a
/// tick ran past the next one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Missed ticks to run now, oldest first, each told it is late.
    pub catch_up: Vec<i64>,
    /// Missed ticks not run.
    pub skipped: u64,
    /// The next tick on time; `None`: the schedule is done.
    pub next: Option<i64>,
}

/// From the last settled tick (`None`: a schedule never run) and the time
/// now. A schedule never run starts from now, without catching up (the
/// gateway records that start, so downtime after it counts as missed).
pub fn plan(expression: &Expression, last: Option<i64>, now: i64, missed: Missed) -> Plan {
    let Some(last) = last else {
        return Plan {
            catch_up: Vec::new(),
            skipped: 0,
            next: expression.next_after(now, now),
        };
    };
    // The missed ticks, the latest MAX_CATCH_UP of them kept.
    let mut due = std::collections::VecDeque::new();
    let mut skipped = 0u64;
    match expression {
        Expression::Rate(period) => {
            let period = period.as_millis() as i64;
            let missed_count = (now - last).max(0) / period;
            let kept = missed_count.min(MAX_CATCH_UP as i64);
            skipped = (missed_count - kept) as u64;
            due.extend((missed_count - kept + 1..=missed_count).map(|k| last + k * period));
        }
        _ => {
            let mut t = last;
            while let Some(at) = expression.next_after(last, t).filter(|at| *at <= now) {
                due.push_back(at);
                if due.len() > MAX_CATCH_UP {
                    due.pop_front();
                    skipped += 1;
                }
                t = at;
            }
        }
    }
    let next = expression.next_after(last, now.max(last));
    let catch_up: Vec<i64> = match missed {
        Missed::Skip => {
            skipped += due.len() as u64;
            Vec::new()
        }
        Missed::Once => {
            skipped += due.len().saturating_sub(1) as u64;
            due.back().copied().into_iter().collect()
        }
        Missed::All => due.into(),
    };
    Plan {
        catch_up,
        skipped,
        next,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;
    /// 2026-12-02T00:00:00Z.
    const DAY: i64 = 1_796_169_600_000;

    #[track_caller]
    fn expr(text: &str) -> Expression {
        Expression::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    /// Unix ms of a UTC time.
    fn utc(text: &str) -> i64 {
        chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M")
            .unwrap()
            .and_utc()
            .timestamp_millis()
    }

    #[test]
    fn cron_in_a_zone_follows_its_wall_clock_through_both_dst_changes() {
        // Berlin: CET (+1) in winter, CEST (+2) from 2026-03-29 02:00 to
        // 2026-10-25 03:00.
        let cron = Expression::parse_in("cron(30 2 * * ? *)", Some("Europe/Berlin")).unwrap();
        let next = |t: &str| {
            cron.next_after(0, utc(t)).map(|ms| {
                chrono::DateTime::from_timestamp_millis(ms)
                    .unwrap()
                    .format("%Y-%m-%dT%H:%M")
                    .to_string()
            })
        };
        // 02:30 CET is 01:30 UTC.
        assert_eq!(
            next("2026-03-27T12:00").as_deref(),
            Some("2026-03-28T01:30")
        );
        // The day the clocks skip 02:00-03:00: 02:30 runs an hour late in
        // wall time, at 03:30 CEST (01:30 UTC), once.
        assert_eq!(
            next("2026-03-28T12:00").as_deref(),
            Some("2026-03-29T01:30")
        );
        // Then 02:30 CEST is 00:30 UTC.
        assert_eq!(
            next("2026-03-29T12:00").as_deref(),
            Some("2026-03-30T00:30")
        );
        // The day 02:00-03:00 happens twice: once, the first time (CEST)...
        assert_eq!(
            next("2026-10-24T12:00").as_deref(),
            Some("2026-10-25T00:30")
        );
        // ...and not again in the second pass: the next is the next day's.
        assert_eq!(
            next("2026-10-25T00:30").as_deref(),
            Some("2026-10-26T01:30")
        );
        assert_eq!(
            next("2026-10-25T01:15").as_deref(),
            Some("2026-10-26T01:30")
        );
        // Without a zone, UTC.
        let plain = expr("cron(30 2 * * ? *)");
        assert_eq!(
            plain.next_after(0, utc("2026-03-28T12:00")),
            Some(utc("2026-03-29T02:30"))
        );
    }

    #[test]
    fn at_in_a_zone_is_its_wall_time_and_unknown_zones_say_where_names_come_from() {
        let at = Expression::parse_in("at(2026-12-24T18:00:00)", Some("America/New_York")).unwrap();
        assert!(matches!(at, Expression::At(ms) if ms == utc("2026-12-24T23:00")));
        let error =
            Expression::parse_in("cron(0 2 * * ? *)", Some("Mars/Olympus_Mons")).unwrap_err();
        assert!(
            error.contains("unknown time zone") && error.contains("tzdata"),
            "{error}"
        );
    }

    #[test]
    fn eventbridge_forms_parse_and_others_say_what_was_expected() {
        assert!(
            matches!(expr("rate(5 minutes)"), Expression::Rate(d) if d == Duration::from_secs(300))
        );
        assert!(
            matches!(expr("rate(1 second)"), Expression::Rate(d) if d == Duration::from_secs(1))
        );
        assert!(matches!(expr(" rate(10 seconds) "), Expression::Rate(_)));
        assert!(matches!(
            expr("cron(0 2 * * ? *)"),
            Expression::Cron(_, None)
        ));
        assert!(matches!(expr("at(2026-12-24T18:00:00)"), Expression::At(_)));
        for (bad, says) in [
            ("every 5 minutes", "expected rate(5 minutes)"),
            ("rate(5 fortnights)", "invalid rate(5 fortnights)"),
            ("rate(0 seconds)", "at least rate(1 second)"),
            ("rate(five minutes)", "a number and a unit"),
            ("rate(213503982334601 days)", "at most rate(3660 days)"),
            ("cron(0 2 * * *)", "expected 6 fields"),
            ("cron(0 25 * * ? *)", "invalid cron"),
            ("cron(0 0 31 2 ? *)", "never fires"),
            ("at(24.12.2026 18:00)", "invalid at"),
        ] {
            let error = Expression::parse(bad).unwrap_err();
            assert!(error.contains(says), "{bad}: {error}");
        }
    }

    #[test]
    fn a_rate_counts_from_its_anchor() {
        let every_5 = expr("rate(5 minutes)");
        assert_eq!(every_5.next_after(DAY, DAY), Some(DAY + 5 * MIN));
        assert_eq!(every_5.next_after(DAY, DAY + 7 * MIN), Some(DAY + 10 * MIN));
    }

    #[test]
    fn cron_fields_are_eventbridges_in_utc() {
        // 02:00 every day.
        let nightly = expr("cron(0 2 * * ? *)");
        assert_eq!(nightly.next_after(0, DAY), Some(DAY + 120 * MIN));
        // 1-7 is SUN-SAT: 2026-12-02 is a Wednesday (4); the next Monday (2)
        // is 2026-12-07.
        let mondays = expr("cron(30 9 ? * 2 *)");
        assert_eq!(
            mondays.next_after(0, DAY),
            Some(DAY + 5 * 24 * 60 * MIN + (9 * 60 + 30) * MIN)
        );
        assert_eq!(
            expr("cron(30 9 ? * MON *)").next_after(0, DAY),
            mondays.next_after(0, DAY)
        );
    }

    #[test]
    fn at_fires_once() {
        let at = expr("at(2026-12-02T18:00:00)");
        assert_eq!(at.next_after(0, DAY), Some(DAY + 18 * 60 * MIN));
        assert_eq!(at.next_after(0, DAY + 18 * 60 * MIN), None);
    }

    #[test]
    fn a_new_schedule_starts_from_now_without_catching_up() {
        let p = plan(&expr("rate(1 minute)"), None, DAY, Missed::All);
        assert_eq!(
            p,
            Plan {
                catch_up: vec![],
                skipped: 0,
                next: Some(DAY + MIN)
            }
        );
    }

    #[test]
    fn after_downtime_once_runs_the_latest_missed_tick_skip_none_all_each() {
        let every_minute = expr("rate(1 minute)");
        // Last tick at DAY, down until DAY + 3.5 minutes: 3 missed.
        let now = DAY + 3 * MIN + MIN / 2;
        let once = plan(&every_minute, Some(DAY), now, Missed::Once);
        assert_eq!(once.catch_up, vec![DAY + 3 * MIN]);
        assert_eq!(once.skipped, 2);
        assert_eq!(once.next, Some(DAY + 4 * MIN));
        let skip = plan(&every_minute, Some(DAY), now, Missed::Skip);
        assert_eq!((skip.catch_up.len(), skip.skipped), (0, 3));
        let all = plan(&every_minute, Some(DAY), now, Missed::All);
        assert_eq!(all.catch_up, vec![DAY + MIN, DAY + 2 * MIN, DAY + 3 * MIN]);
        assert_eq!(all.skipped, 0);
        // Nothing missed: nothing to catch up.
        let on_time = plan(&every_minute, Some(DAY), DAY + MIN / 2, Missed::All);
        assert_eq!((on_time.catch_up.len(), on_time.next), (0, Some(DAY + MIN)));
    }

    #[test]
    fn catching_up_is_bounded() {
        let every_second = expr("rate(1 second)");
        let week = 7 * 24 * 60 * MIN;
        let all = plan(&every_second, Some(DAY), DAY + week, Missed::All);
        assert_eq!(all.catch_up.len(), MAX_CATCH_UP);
        assert_eq!(
            all.catch_up.len() as u64 + all.skipped,
            (week / 1_000) as u64
        );
        assert_eq!(all.catch_up.last(), Some(&(DAY + week)));
    }

    #[test]
    fn a_missed_one_time_schedule_runs_late_once() {
        let at = expr("at(2026-12-02T18:00:00)");
        let later = DAY + 20 * 60 * MIN;
        // Started (and recorded) at DAY, down from before 18:00 to 20:00.
        let p = plan(&at, Some(DAY), later, Missed::Once);
        assert_eq!(p.catch_up, vec![DAY + 18 * 60 * MIN]);
        assert_eq!(p.next, None);
        // Once it ran, it is done.
        let p = plan(&at, Some(DAY + 18 * 60 * MIN), later, Missed::Once);
        assert_eq!(
            p,
            Plan {
                catch_up: vec![],
                skipped: 0,
                next: None
            }
        );
    }
}
