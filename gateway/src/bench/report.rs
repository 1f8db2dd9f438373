//! What a bench run measured: a table for people ([`fmt::Display`]) and
//! JSON for machines (`serde`).

use super::procfs::Usage;
use super::stats::Latency;
use serde::Serialize;
use std::fmt;

/// One bench run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The run's name (`--label`).
    pub label: Option<String>,
    pub broker: String,
    /// The filter the outputs were taken from.
    pub results: String,
    pub qos: u8,
    /// Messages per second asked for; 0 is flat out.
    pub rate_target: f64,
    pub devices: u32,
    /// Messages published.
    pub sent: u64,
    /// PUBACKs from the broker (QoS 1).
    pub acked: Option<u64>,
    /// Messages with an output.
    pub outputs: u64,
    /// Messages with no output within `settle_s` of the last send.
    pub lost: u64,
    /// Outputs beyond the first for a message.
    pub duplicates: u64,
    /// Outputs that named no message of this run.
    pub unmatched: u64,
    /// Connection errors during the run (each reconnection attempt).
    pub connection_errors: u64,
    /// Ctrl-C ended the run early.
    pub interrupted: bool,
    /// From the first send to the last (handed to the MQTT client, which
    /// holds at most a few requests and `inflight` unacked publishes).
    pub send_s: f64,
    /// Messages per second into the broker, over `send_s`.
    pub in_rate: f64,
    /// Outputs per second, from the first send to the last output.
    pub out_rate: f64,
    /// The whole run, settling included.
    pub wall_s: f64,
    pub settle_s: f64,
    /// From each message's send stamp to its first output.
    pub latency: Latency,
    /// The processes sampled with `--pid`.
    pub processes: Vec<Usage>,
    /// The bench itself: on a small machine it competes for the same cores.
    pub bench: Usage,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(label) = &self.label {
            writeln!(f, "{label}")?;
        }
        let rate = if self.rate_target > 0.0 {
            format!("{:.0} msg/s", self.rate_target)
        } else {
            "flat out".to_owned()
        };
        writeln!(
            f,
            "  {} messages from {} devices to {}, QoS {}, {rate}; results on {}",
            self.sent, self.devices, self.broker, self.qos, self.results
        )?;
        let acked = self
            .acked
            .map(|a| format!(", {a} acked"))
            .unwrap_or_default();
        writeln!(
            f,
            "  in       {:>9.0} msg/s   ({} sent in {:.2} s{acked})",
            self.in_rate, self.sent, self.send_s
        )?;
        writeln!(
            f,
            "  out      {:>9.0} msg/s   ({} answered; {} lost, {} duplicated, {} unmatched)",
            self.out_rate, self.outputs, self.lost, self.duplicates, self.unmatched
        )?;
        let l = &self.latency;
        writeln!(
            f,
            "  latency  p50 {}  p90 {}  p99 {}  max {}  (mean {}, min {})",
            ms(l.p50_us),
            ms(l.p90_us),
            ms(l.p99_us),
            ms(l.max_us),
            ms(l.mean_us),
            ms(l.min_us)
        )?;
        for usage in self.processes.iter().chain(std::iter::once(&self.bench)) {
            let who = if std::ptr::eq(usage, &self.bench) {
                "bench".to_owned()
            } else {
                format!("{} {}", usage.name, usage.pid)
            };
            writeln!(
                f,
                "  {who:<16} cpu {:>5.1} % avg, {:>5.1} % peak ({:.2} s); rss {:.1} MiB max ({:.1} at start, {:.1} at end)",
                usage.cpu_pct,
                usage.cpu_pct_max,
                usage.cpu_s,
                mib(usage.rss_kib_max),
                mib(usage.rss_kib_start),
                mib(usage.rss_kib_end)
            )?;
        }
        if self.connection_errors > 0 || self.interrupted {
            writeln!(
                f,
                "  {} connection errors{}",
                self.connection_errors,
                if self.interrupted {
                    "; interrupted"
                } else {
                    ""
                }
            )?;
        }
        Ok(())
    }
}

fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_rates_losses_latency_and_processes() {
        let report = Report {
            label: Some("wasmgate, flat out".into()),
            broker: "127.0.0.1:1883".into(),
            results: "telemetry/#".into(),
            qos: 1,
            rate_target: 0.0,
            devices: 100,
            sent: 20_000,
            acked: Some(20_000),
            outputs: 19_999,
            lost: 1,
            duplicates: 2,
            unmatched: 0,
            connection_errors: 0,
            interrupted: false,
            send_s: 4.0,
            in_rate: 5000.0,
            out_rate: 4000.0,
            wall_s: 5.0,
            settle_s: 5.0,
            latency: Latency {
                count: 19_999,
                min_us: 300,
                mean_us: 1_000,
                p50_us: 900,
                p90_us: 1_500,
                p99_us: 12_345,
                max_us: 40_000,
            },
            processes: vec![Usage {
                pid: 42,
                name: "wasmgate".into(),
                cpu_pct: 80.0,
                rss_kib_max: 10_240,
                ..Usage::default()
            }],
            bench: Usage::default(),
        };
        let table = report.to_string();
        for expected in [
            "wasmgate, flat out",
            "5000 msg/s",
            "4000 msg/s",
            "1 lost, 2 duplicated",
            "p99 12.35 ms",
            "wasmgate 42",
            "80.0 % avg",
            "rss 10.0 MiB max",
        ] {
            assert!(
                table.contains(expected),
                "{expected:?} missing from\n{table}"
            );
        }
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["latency"]["p99_us"], 12_345);
        assert_eq!(json["processes"][0]["name"], "wasmgate");
    }
}
