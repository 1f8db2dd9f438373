//! The flags of `wasmgate bench` and `wasmgate bench passthrough`; `main.rs`
//! only calls [`command`].

use super::{passthrough, BenchError, Options};
use crate::simulate::{parse_broker, Mix};
use clap::{Args, Subcommand};
use std::future::Future;
use std::time::Duration;

/// Examples shown under `wasmgate bench --help`.
pub const BENCH_HELP: &str = "\
Examples:
  wasmgate bench --count 20000                          flat out, QoS 1, results on telemetry/#
  wasmgate bench --count 20000 --rate 2000 --pid $(pidof wasmgate)
  wasmgate bench --results 'vending/+/telemetry'        the broker alone (echo)
  wasmgate bench passthrough --from 'vending/+/telemetry' --to 'telemetry/vending/{machine}'
                                                        the baseline: republish with no function
  wasmgate bench --json > run.json

Each message is a vending machine's telemetry (wasmgate simulate's fleet) with
\"seq\" (per device), \"ts\" (ms, kept unique per device) and \"sent_us\" (the
send time in microseconds). An output is matched to its message by the device
id in it (\"machine\", \"robot\" or \"device\") and its \"seq\", or, failing that,
its \"ts\": vending-telemetry's summary echoes machine and ts. Latency runs
from the send stamp to the output's arrival, on the bench's clock. A message
with no output within --settle seconds of the last send is lost.";

/// `wasmgate bench`: flags for a load run, or a subcommand.
#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub mode: Option<BenchMode>,
    #[command(flatten)]
    pub load: LoadArgs,
}

#[derive(Debug, Clone, Subcommand)]
pub enum BenchMode {
    /// The baseline: subscribe to --from and republish each message to --to
    /// (QoS 1, persistent session, manual acks after the republish is acked),
    /// with no function and no database. Runs until Ctrl-C.
    Passthrough(PassthroughArgs),
    /// HTTP/1.1 load: keep-alive connections sending one request flat out;
    /// requests/s, latency percentiles, every status and error.
    Http(super::http::HttpArgs),
    /// The HTTP floor: a minimal axum handler answering /hello as hello-http
    /// does, with no function. Runs until Ctrl-C.
    HttpFloor(super::http_floor::HttpFloorArgs),
}

/// A load run.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// The MQTT broker, HOST:PORT (or HOST, port 1883).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:1883", value_parser = parse_broker)]
    pub broker: (String, u16),
    /// Messages to send.
    #[arg(long, short = 'n', default_value_t = Options::DEFAULT_COUNT, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: u64,
    /// Messages per second; 0 sends flat out (as fast as the broker takes them).
    #[arg(long, short, default_value_t = 0.0, value_parser = parse_rate)]
    pub rate: f64,
    /// QoS of the publishes and of the results subscription: 0 or 1.
    #[arg(long, short, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,
    /// Devices in the fleet; they publish in turn.
    #[arg(long, default_value_t = Options::DEFAULT_DEVICES, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub devices: u32,
    /// Device kinds, KIND=WEIGHT,...; vending-telemetry answers vending machines only.
    #[arg(long, value_name = "KIND=W,...", default_value_t = Options::DEFAULT_MIX)]
    pub mix: Mix,
    /// Seed of the fleet.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Topic filter the outputs come out on.
    #[arg(long, value_name = "FILTER", default_value = Options::DEFAULT_RESULTS)]
    pub results: String,
    /// Seconds to wait, after the last send, for outputs still missing.
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_seconds)]
    pub settle: Duration,
    /// QoS 1 publishes in flight, waiting for their PUBACK.
    #[arg(long, default_value_t = Options::DEFAULT_INFLIGHT, value_parser = clap::value_parser!(u16).range(1..))]
    pub inflight: u16,
    /// A process to sample CPU and memory of (the gateway, the broker); repeatable.
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// A name for the run, printed and kept in the JSON.
    #[arg(long)]
    pub label: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub login: crate::simulate::cli::Login,
}

impl LoadArgs {
    pub fn into_options(self) -> Options {
        let (host, port) = self.broker;
        let mut options = Options::new(host, port);
        options.credentials = self.login.credentials();
        options.count = self.count;
        options.rate = self.rate;
        options.qos = self.qos;
        options.fleet.devices = self.devices;
        options.fleet.mix = self.mix;
        options.fleet.seed = self.seed;
        options.results = self.results;
        options.settle = self.settle;
        options.inflight = self.inflight;
        options.pids = self.pids;
        options.label = self.label;
        options
    }
}

/// `wasmgate bench passthrough`.
#[derive(Debug, Clone, Args)]
pub struct PassthroughArgs {
    /// The MQTT broker, HOST:PORT (or HOST, port 1883).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:1883", value_parser = parse_broker)]
    pub broker: (String, u16),
    /// The topic filter to take messages from.
    #[arg(long, value_name = "FILTER", default_value = "vending/+/telemetry")]
    pub from: String,
    /// The topic to republish to; `{name}` placeholders take, in order, the
    /// levels the wildcards of --from matched.
    #[arg(
        long,
        value_name = "TEMPLATE",
        default_value = "telemetry/vending/{machine}"
    )]
    pub to: String,
    /// QoS of the subscription and the republish.
    #[arg(long, short, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,
    /// Client id of the persistent session (the publishing connection adds `-out`).
    #[arg(long, default_value = passthrough::Options::DEFAULT_CLIENT_ID)]
    pub client_id: String,
    /// Republished messages in flight, waiting for their PUBACK.
    #[arg(long, default_value_t = Options::DEFAULT_INFLIGHT, value_parser = clap::value_parser!(u16).range(1..))]
    pub inflight: u16,
    /// Stop after forwarding (and acking) this many messages.
    #[arg(long, short = 'n')]
    pub count: Option<u64>,
    #[command(flatten)]
    pub login: crate::simulate::cli::Login,
}

impl PassthroughArgs {
    pub fn into_options(self) -> passthrough::Options {
        let (host, port) = self.broker;
        passthrough::Options {
            host,
            port,
            credentials: self.login.credentials(),
            from: self.from,
            to: self.to,
            qos: self.qos,
            client_id: self.client_id,
            inflight: self.inflight,
            count: self.count,
        }
    }
}

/// Runs `wasmgate bench` as the flags say; returns what to print.
pub async fn command(
    args: BenchArgs,
    shutdown: impl Future<Output = ()>,
) -> Result<String, BenchError> {
    match args.mode {
        Some(BenchMode::Passthrough(args)) => {
            let summary = passthrough::run(args.into_options(), shutdown).await?;
            Ok(format!(
                "pass-through: {} received, {} forwarded, {} acked, {} skipped\n",
                summary.received, summary.forwarded, summary.acked, summary.skipped
            ))
        }
        Some(BenchMode::Http(args)) => Ok(args.command(shutdown).await?),
        Some(BenchMode::HttpFloor(args)) => Ok(args.command(shutdown).await?),
        None => {
            let json = args.load.json;
            let report = super::run(args.load.into_options(), shutdown).await?;
            Ok(if json {
                let mut text = serde_json::to_string_pretty(&report).expect("a report serializes");
                text.push('\n');
                text
            } else {
                report.to_string()
            })
        }
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate >= 0.0 => Ok(rate),
        _ => Err(format!(
            "expected messages per second, 0 (flat out) or more, got {s:?}"
        )),
    }
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs > 0.0 => Ok(Duration::from_secs_f64(secs)),
        _ => Err(format!("expected a number of seconds above 0, got {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    #[track_caller]
    fn parse(args: &[&str]) -> BenchArgs {
        Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))
            .expect("flags parse")
            .args
    }

    #[test]
    fn the_defaults_send_ten_thousand_vending_messages_flat_out_at_qos_1() {
        let o = parse(&[]).load.into_options();
        assert_eq!((o.host.as_str(), o.port), ("127.0.0.1", 1883));
        assert_eq!((o.count, o.rate, o.qos), (10_000, 0.0, 1));
        assert_eq!(
            (o.fleet.devices, o.fleet.mix),
            (
                100,
                Mix {
                    vending: 1,
                    robot: 0
                }
            )
        );
        assert!(o.fleet.sent_us, "the bench stamps its messages");
        assert_eq!(o.results, "telemetry/#");
        assert!(o.pids.is_empty());
    }

    #[test]
    fn load_flags_land_in_the_options() {
        let args = parse(&[
            "--broker",
            "gw:1884",
            "-n",
            "20000",
            "--rate",
            "2000",
            "--qos",
            "0",
            "--devices",
            "7",
            "--results",
            "vending/#",
            "--settle",
            "2.5",
            "--pid",
            "1",
            "--pid",
            "2",
            "--label",
            "x",
            "--json",
        ]);
        assert!(args.load.json);
        let o = args.load.into_options();
        assert_eq!(
            (o.host.as_str(), o.port, o.count, o.rate, o.qos),
            ("gw", 1884, 20_000, 2000.0, 0)
        );
        assert_eq!((o.fleet.devices, o.results.as_str()), (7, "vending/#"));
        assert_eq!(o.settle, Duration::from_millis(2500));
        assert_eq!((o.pids, o.label.as_deref()), (vec![1, 2], Some("x")));
    }

    #[test]
    fn passthrough_is_a_subcommand_with_its_own_flags() {
        let args = parse(&[
            "passthrough",
            "--broker",
            "127.0.0.1:1999",
            "--from",
            "a/+",
            "--to",
            "b/{x}",
        ]);
        let Some(BenchMode::Passthrough(p)) = args.mode else {
            panic!("not the pass-through: {args:?}");
        };
        let o = p.into_options();
        assert_eq!(
            (o.port, o.from.as_str(), o.to.as_str(), o.qos),
            (1999, "a/+", "b/{x}", 1)
        );
        assert_eq!(o.client_id, "wasmgate-passthrough");
    }

    #[test]
    fn nonsense_flags_are_refused() {
        for bad in [
            &["--qos", "2"][..],
            &["--rate", "-5"],
            &["--count", "0"],
            &["--settle", "0"],
        ] {
            let argv = std::iter::once("bench").chain(bad.iter().copied());
            assert!(Cli::try_parse_from(argv).is_err(), "{bad:?} accepted");
        }
    }
}
