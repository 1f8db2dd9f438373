//! `wasmgate cost`: what each function used over a window, what the same
//! work would cost a month on AWS Lambda plus IoT Core messaging, and
//! right-sizing advice from what it really used (the serverless guide's
//! "Pricing Model" and "Right-Size Memory").
//!
//! Pure: built from the store's hourly usage rows (`store::usage`).

use crate::metrics::HistogramSnapshot;
use crate::store::usage::UsageRow;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The prices compared against, with where they come from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Prices {
    pub lambda_per_million_requests: f64,
    pub lambda_per_gb_second: f64,
    pub iot_core_per_million_messages: f64,
}

/// AWS Lambda's x86 prices as `../shared/reference/serverless-architecture-guide.md`
/// states them ("Pricing Model", dated 2025-10-20); IoT Core's per-message
/// price is AWS's published us-east-1 rate for the first billion messages
/// a month (not in the guide; as we last read it, unverified from here:
/// check https://aws.amazon.com/iot-core/pricing/).
pub const AWS_PRICES: Prices = Prices {
    lambda_per_million_requests: 0.20,
    lambda_per_gb_second: 0.000_016_666_7,
    iot_core_per_million_messages: 1.00,
};

pub const PRICES_SOURCE: &str = "Lambda: $0.20 per 1M requests, $0.0000166667 per GB-second (serverless-architecture-guide.md, Pricing Model, 2025-10-20); IoT Core: $1.00 per 1M messages (AWS us-east-1 list price, first 1B a month; not verified from this machine)";

/// Lambda's smallest memory size: a function here needing 2 MiB would be
/// billed as 128 MB there.
const LAMBDA_MIN_MB: f64 = 128.0;
const DAYS_PER_MONTH: f64 = 30.0;

/// One function version's use over the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionCost {
    pub function: String,
    pub version: String,
    pub invocations: u64,
    pub failed: u64,
    pub total_duration_ms: f64,
    /// The upper bound of the bucket holding the 99th percentile (exact
    /// to a factor of two).
    pub p99_duration_ms: Option<f64>,
    pub max_duration_ms: f64,
    /// Configured memory limit x time run, as Lambda bills it.
    pub gb_seconds: f64,
    pub fuel: u64,
    pub max_fuel: u64,
    pub peak_memory_bytes: u64,
    pub memory_limit_bytes: u64,
    pub fuel_limit: u64,
    /// The same invocations on Lambda (at its minimum of 128 MB or this
    /// limit, and durations rounded up to 1 ms) plus one IoT Core message
    /// each, projected from the window to 30 days.
    pub aws_month_usd: f64,
    pub advice: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub since_ms: i64,
    pub until_ms: i64,
    pub versions: Vec<VersionCost>,
    pub aws_month_usd: f64,
    pub prices: Prices,
    pub prices_source: String,
}

/// Adds up the rows of each version, prices them and advises.
pub fn report(rows: &[UsageRow], since_ms: i64, until_ms: i64, prices: Prices) -> Report {
    // Usage is kept by whole hours: the window starts with the hour that
    // holds `since_ms`, or an hour's usage would be priced as minutes'.
    let until_ms = until_ms.max(0);
    let since_ms = since_ms.clamp(0, until_ms);
    let since_ms = since_ms - since_ms.rem_euclid(crate::store::usage::HOUR_MS);
    let mut by_version: BTreeMap<(String, String), Vec<&UsageRow>> = BTreeMap::new();
    for row in rows {
        by_version
            .entry((row.function.clone(), row.version.clone()))
            .or_default()
            .push(row);
    }
    // A window shorter than the data it covers is the window; at least a
    // minute, so a fresh gateway's first seconds are not projected wildly.
    let window_s = ((until_ms - since_ms) as f64 / 1000.0).max(60.0);
    let month_factor = DAYS_PER_MONTH * 86_400.0 / window_s;
    let versions: Vec<VersionCost> = by_version
        .into_iter()
        .map(|((function, version), rows)| {
            let sum = |of: fn(&UsageRow) -> u64| rows.iter().map(|r| of(r)).sum::<u64>();
            let max = |of: fn(&UsageRow) -> u64| rows.iter().map(|r| of(r)).max().unwrap_or(0);
            let mut buckets = vec![0u64; crate::metrics::BUCKETS];
            for r in &rows {
                for (b, n) in buckets.iter_mut().zip(&r.duration_buckets) {
                    *b += n;
                }
            }
            let histogram = HistogramSnapshot::from_buckets(&buckets);
            let last = rows.last().copied();
            let memory_limit_bytes = last.map_or(0, |r| r.memory_limit_bytes);
            let fuel_limit = last.map_or(0, |r| r.fuel_limit);
            let invocations = sum(|r| r.invocations);
            let duration_us = sum(|r| r.duration_us);
            let memory_gb = memory_limit_bytes as f64 / (1u64 << 30) as f64;
            let gb_seconds = memory_gb * duration_us as f64 / 1e6;
            // Lambda rounds each invocation up to 1 ms: at least 1 ms each.
            let billed_s = (duration_us as f64 / 1e6).max(invocations as f64 / 1000.0);
            let lambda_gb =
                (memory_limit_bytes as f64 / (1 << 20) as f64).max(LAMBDA_MIN_MB) / 1024.0;
            let month = month_factor
                * (invocations as f64 / 1e6 * prices.lambda_per_million_requests
                    + billed_s * lambda_gb * prices.lambda_per_gb_second
                    + invocations as f64 / 1e6 * prices.iot_core_per_million_messages);
            let mut cost = VersionCost {
                function,
                version,
                invocations,
                failed: sum(|r| r.failed),
                total_duration_ms: duration_us as f64 / 1000.0,
                p99_duration_ms: histogram.quantile(0.99).map(|d| d.as_secs_f64() * 1000.0),
                max_duration_ms: max(|r| r.max_duration_us) as f64 / 1000.0,
                gb_seconds,
                fuel: sum(|r| r.fuel),
                max_fuel: max(|r| r.max_fuel),
                peak_memory_bytes: max(|r| r.peak_memory_bytes),
                memory_limit_bytes,
                fuel_limit,
                aws_month_usd: month,
                advice: Vec::new(),
            };
            cost.advice = advise(&cost);
            cost
        })
        .collect();
    Report {
        since_ms,
        until_ms,
        aws_month_usd: versions.iter().map(|v| v.aws_month_usd).sum(),
        versions,
        prices,
        prices_source: PRICES_SOURCE.to_owned(),
    }
}

const PAGE: u64 = 64 << 10;

/// Limits with headroom over what was used: memory 1.5x its peak (whole
/// 64 KiB pages, at least 1 MiB), fuel 2x its most; flagged where the
/// limit is over 4x (memory) or 10x (fuel) what is needed, or what is used
/// is within 20% of the limit.
pub fn advise(v: &VersionCost) -> Vec<String> {
    let mut advice = Vec::new();
    if v.invocations == 0 {
        return advice;
    }
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    if v.peak_memory_bytes > 0 && v.memory_limit_bytes > 0 {
        let suggested = (v.peak_memory_bytes * 3 / 2).div_ceil(PAGE).max(16) * PAGE;
        if v.peak_memory_bytes * 5 > v.memory_limit_bytes * 4 {
            advice.push(format!(
                "memory: peak {:.1} MiB is within 20% of the {:.1} MiB limit; raise limits.memory_mb to at least {:.0}",
                mib(v.peak_memory_bytes),
                mib(v.memory_limit_bytes),
                mib(suggested).ceil()
            ));
        } else if v.memory_limit_bytes > suggested * 4 {
            advice.push(format!(
                "memory: peak {:.1} MiB, limit {:.1} MiB; limits.memory_mb = {:.0} leaves 50% headroom",
                mib(v.peak_memory_bytes),
                mib(v.memory_limit_bytes),
                mib(suggested).ceil()
            ));
        }
    }
    if v.max_fuel > 0 && v.fuel_limit > 0 {
        let suggested = v.max_fuel.saturating_mul(2);
        if v.max_fuel * 5 > v.fuel_limit * 4 {
            advice.push(format!(
                "fuel: the most one invocation used ({}) is within 20% of the budget ({}); raise limits.fuel to at least {suggested}",
                v.max_fuel, v.fuel_limit
            ));
        } else if v.fuel_limit > suggested.saturating_mul(10) {
            advice.push(format!(
                "fuel: the most one invocation used is {}, the budget {}; limits.fuel = {suggested} still stops a runaway loop sooner",
                v.max_fuel, v.fuel_limit
            ));
        }
    }
    advice
}

/// The report as a table, then its advice and where the prices come from.
pub fn render(report: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} to {} UTC",
        crate::dlq::utc(report.since_ms),
        crate::dlq::utc(report.until_ms)
    );
    if report.versions.is_empty() {
        out.push_str("no invocations in this window\n");
        return out;
    }
    let _ = writeln!(
        out,
        "{:<20} {:<12} {:>11} {:>7} {:>11} {:>9} {:>11} {:>13} {:>10} {:>11}",
        "FUNCTION",
        "VERSION",
        "INVOCATIONS",
        "FAILED",
        "TOTAL MS",
        "P99 MS",
        "GB-S",
        "FUEL",
        "PEAK MEM",
        "AWS/MONTH"
    );
    for v in &report.versions {
        let _ = writeln!(
            out,
            "{:<20} {:<12} {:>11} {:>7} {:>11.1} {:>9} {:>11.6} {:>13} {:>10} {:>11}",
            v.function,
            v.version,
            v.invocations,
            v.failed,
            v.total_duration_ms,
            v.p99_duration_ms
                .map_or("-".to_owned(), |ms| format!("{ms:.3}")),
            v.gb_seconds,
            v.fuel,
            format!("{:.1}M", v.peak_memory_bytes as f64 / (1 << 20) as f64),
            dollars(v.aws_month_usd)
        );
    }
    let _ = writeln!(
        out,
        "\nthe same work on AWS, projected to 30 days: {} a month (Lambda requests and GB-seconds at >= 128 MB, 1 ms rounding, and one IoT Core message per invocation); here: the board you already run",
        dollars(report.aws_month_usd)
    );
    for v in &report.versions {
        for a in &v.advice {
            let _ = writeln!(out, "{} {}: {a}", v.function, v.version);
        }
    }
    let _ = writeln!(out, "prices: {}", report.prices_source);
    out
}

/// Cents, or a fraction of a cent where that is all it is.
fn dollars(usd: f64) -> String {
    if usd >= 0.01 || usd == 0.0 {
        format!("${usd:.2}")
    } else {
        format!("${usd:.5}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(invocations: u64, duration_us: u64, peak: u64, max_fuel: u64) -> UsageRow {
        let mut buckets = vec![0; crate::metrics::BUCKETS];
        // 512..1024 µs: the 99th percentile reads as 1.024 ms.
        buckets[9] = invocations;
        UsageRow {
            function: "vending".into(),
            version: "abc".into(),
            hour_ms: 0,
            invocations,
            failed: 0,
            duration_us,
            max_duration_us: 900,
            fuel: 1_000 * invocations,
            max_fuel,
            peak_memory_bytes: peak,
            memory_limit_bytes: 128 << 20,
            fuel_limit: 50_000_000,
            duration_buckets: buckets,
        }
    }

    #[test]
    fn the_guides_example_prices_as_it_says() {
        // 1M requests of 100 ms at 128 MB in 30 days: $0.20 + $0.21 on
        // Lambda, and $1.00 of IoT Core messages.
        let rows = [row(1_000_000, 100_000 * 1_000_000, 1 << 20, 1_000)];
        let r = report(&rows, 0, 30 * 86_400_000, AWS_PRICES);
        let v = &r.versions[0];
        assert!(
            (v.aws_month_usd - 1.4083).abs() < 0.001,
            "{}",
            v.aws_month_usd
        );
        assert!((v.gb_seconds - 12_500.0).abs() < 0.01, "{}", v.gb_seconds);
        assert_eq!(v.p99_duration_ms, Some(1.024));
    }

    #[test]
    fn a_short_window_is_projected_to_a_month() {
        let rows = [row(1_000, 1_000_000, 1 << 20, 1_000)];
        let hour = report(&rows, 0, 3_600_000, AWS_PRICES);
        let day = report(&rows, 0, 86_400_000, AWS_PRICES);
        let ratio = hour.aws_month_usd / day.aws_month_usd;
        assert!((ratio - 24.0).abs() < 1e-6, "{ratio}");
    }

    #[test]
    fn advice_flags_limits_far_above_or_close_to_what_is_used() {
        // 1 MiB used of 128 MiB; 1,000 fuel of 50M.
        let generous =
            &report(&[row(10, 10_000, 1 << 20, 1_000)], 0, 60_000, AWS_PRICES).versions[0];
        assert_eq!(generous.advice.len(), 2, "{:?}", generous.advice);
        assert!(
            generous.advice[0].contains("limits.memory_mb = 2"),
            "{:?}",
            generous.advice
        );
        assert!(
            generous.advice[1].contains("limits.fuel = 2000"),
            "{:?}",
            generous.advice
        );
        // 120 MiB of 128; 45M fuel of 50M.
        let tight = &report(
            &[row(10, 10_000, 120 << 20, 45_000_000)],
            0,
            60_000,
            AWS_PRICES,
        )
        .versions[0];
        assert!(tight.advice[0].contains("within 20%"), "{:?}", tight.advice);
        assert!(
            tight.advice[1].contains("at least 90000000"),
            "{:?}",
            tight.advice
        );
        // Well sized: nothing to say.
        let mut fine = row(10, 10_000, 60 << 20, 10_000_000);
        fine.memory_limit_bytes = 128 << 20;
        assert!(report(&[fine], 0, 60_000, AWS_PRICES).versions[0]
            .advice
            .is_empty());
    }

    #[test]
    fn hours_of_one_version_add_up() {
        let mut a = row(10, 10_000, 1 << 20, 1_000);
        let mut b = row(5, 5_000, 2 << 20, 3_000);
        b.hour_ms = 3_600_000;
        a.failed = 2;
        let r = report(&[a, b], 0, 7_200_000, AWS_PRICES);
        assert_eq!(r.versions.len(), 1);
        let v = &r.versions[0];
        assert_eq!(
            (v.invocations, v.failed, v.max_fuel, v.peak_memory_bytes),
            (15, 2, 3_000, 2 << 20)
        );
        assert!(render(&r).contains("vending"));
    }
}
