//! The flags of `wasmgate simulate`. Here rather than in `main.rs` so that the
//! command stays one line there and the flags are tested with the options
//! they make.

use super::{parse_broker, FleetConfig, Mix, Options};
use clap::Args;
use std::time::Duration;

/// Examples shown under `wasmgate simulate --help`.
pub const SIMULATE_HELP: &str = "\
Examples:
  wasmgate simulate                                   10 devices, 10 msg/s, to 127.0.0.1:1883 (wasmgate demo)
  wasmgate simulate --devices 100 --rate 500 --duration 60
  wasmgate simulate --rate 0 --count 100000 --qos 0   as fast as the broker takes them
  wasmgate simulate --mix robot=1 --broker gw.local:1883 --username sim --password secret

Topics: vending/vm-<n>/telemetry and robots/r-<n>/telemetry, the inputs of the
example functions vending-telemetry and robot-telemetry. Each message carries
\"seq\": a per-device count from 1, so a subscriber can spot loss and reordering.";

/// `wasmgate simulate` flags; `into_options` turns them into [`Options`].
/// How a load tool logs in to a broker. The password may come from a file
/// or the environment: a command line is visible to every user of the
/// machine (`ps`), and stays in shell histories.
#[derive(Debug, Clone, Args)]
pub struct Login {
    /// Username for the broker.
    #[arg(long, short, requires = "secret")]
    pub username: Option<String>,
    /// Password for the broker (visible in `ps`: prefer --password-file or
    /// $WASMGATE_PASSWORD).
    #[arg(
        long,
        short,
        group = "secret",
        requires = "username",
        env = "WASMGATE_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,
    /// A file holding the password (a final newline is dropped).
    #[arg(long, value_name = "FILE", group = "secret", requires = "username", value_parser = read_password_file)]
    pub password_file: Option<String>,
}

impl Login {
    /// The user and password, if given.
    pub fn credentials(&self) -> Option<(String, String)> {
        let password = self.password.clone().or_else(|| self.password_file.clone());
        self.username.clone().zip(password)
    }
}

fn read_password_file(path: &str) -> Result<String, String> {
    let text = crate::files::read_text(std::path::Path::new(path), 64 << 10, "password file")
        .map_err(|e| e.to_string())?;
    Ok(text.strip_suffix('\n').unwrap_or(&text).to_owned())
}

#[derive(Debug, Clone, Args)]
pub struct SimulateArgs {
    /// The MQTT broker, HOST:PORT (or HOST, port 1883). The default is where
    /// `wasmgate demo` and `wasmgate run`'s embedded broker listen.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:1883", value_parser = parse_broker)]
    pub broker: (String, u16),
    /// Devices to simulate; they publish in turn.
    #[arg(long, short = 'n', default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub devices: u32,
    /// Messages per second over the whole fleet (each device sends RATE/DEVICES);
    /// 0 sends as fast as the broker takes them.
    #[arg(long, short, default_value_t = Options::DEFAULT_RATE, value_parser = parse_rate)]
    pub rate: f64,
    /// Stop after this many seconds (fractions allowed). Without --duration or
    /// --count, runs until Ctrl-C; with both, stops at whichever comes first.
    #[arg(long, short, value_name = "SECS", value_parser = parse_seconds)]
    pub duration: Option<Duration>,
    /// Stop after this many messages in total.
    #[arg(long, short, value_name = "N")]
    pub count: Option<u64>,
    /// MQTT QoS of every publish: 0 (fire and forget) or 1 (acked by the broker).
    #[arg(long, short, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,
    /// Seed of the simulation: the same seed gives the same readings, device by device.
    #[arg(long, default_value_t = FleetConfig::default().seed)]
    pub seed: u64,
    /// Device kinds and their proportions, KIND=WEIGHT,...; kinds: vending, robot.
    #[arg(long, value_name = "KIND=W,...", default_value_t = Mix::DEFAULT)]
    pub mix: Mix,
    /// Leave out the per-device "seq" field (the example functions ignore it anyway).
    #[arg(long)]
    pub no_seq: bool,
    #[command(flatten)]
    pub login: Login,
    /// MQTT client id; with several connections, `-<k>` is appended.
    /// [default: wasmgate-sim-<pid>]
    #[arg(long)]
    pub client_id: Option<String>,
    /// MQTT connections to spread the devices over (device i uses connection i mod K).
    #[arg(long, value_name = "K", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub connections: u32,
    /// QoS 1 publishes in flight per connection, waiting for their ack.
    #[arg(long, default_value_t = Options::DEFAULT_INFLIGHT, value_parser = clap::value_parser!(u16).range(1..))]
    pub inflight: u16,
    /// Seconds between progress lines.
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_seconds)]
    pub progress: Duration,
}

impl SimulateArgs {
    pub fn into_options(self) -> Options {
        let (host, port) = self.broker;
        Options {
            client_id: self.client_id,
            credentials: self.login.credentials(),
            qos: self.qos,
            fleet: FleetConfig {
                devices: self.devices,
                mix: self.mix,
                seed: self.seed,
                seq: !self.no_seq,
                ..FleetConfig::default()
            },
            rate: self.rate,
            duration: self.duration,
            count: self.count,
            connections: self.connections,
            inflight: self.inflight,
            progress_every: self.progress,
            ..Options::new(host, port)
        }
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate >= 0.0 => Ok(rate),
        _ => Err(format!(
            "expected messages per second, 0 or more, got {s:?}"
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
        args: SimulateArgs,
    }

    #[track_caller]
    fn options(args: &[&str]) -> Options {
        let argv = std::iter::once("simulate").chain(args.iter().copied());
        Cli::try_parse_from(argv)
            .expect("flags parse")
            .args
            .into_options()
    }

    #[test]
    fn the_defaults_reach_wasmgate_demo_with_ten_devices_at_ten_messages_a_second() {
        let o = options(&[]);
        assert_eq!((o.host.as_str(), o.port), ("127.0.0.1", 1883));
        assert_eq!((o.fleet.devices, o.rate, o.qos), (10, 10.0, 1));
        assert_eq!(o.fleet.mix, Mix::DEFAULT);
        assert!(o.fleet.seq);
        assert_eq!((o.duration, o.count, &o.credentials), (None, None, &None));
        assert!(o.validate().is_ok());
    }

    #[test]
    fn every_flag_lands_in_the_options() {
        let o = options(&[
            "--broker",
            "gw.local:1884",
            "--devices",
            "3",
            "--rate",
            "0",
            "--duration",
            "1.5",
            "--count",
            "99",
            "--qos",
            "0",
            "--seed",
            "5",
            "--mix",
            "robot=1",
            "--no-seq",
            "--username",
            "u",
            "--password",
            "p",
            "--client-id",
            "sim",
            "--connections",
            "2",
            "--inflight",
            "7",
            "--progress",
            "2",
        ]);
        assert_eq!((o.host.as_str(), o.port), ("gw.local", 1884));
        assert_eq!(
            (o.fleet.devices, o.rate, o.qos, o.fleet.seed),
            (3, 0.0, 0, 5)
        );
        assert_eq!(o.duration, Some(Duration::from_millis(1500)));
        assert_eq!(o.count, Some(99));
        assert_eq!(
            o.fleet.mix,
            Mix {
                vending: 0,
                robot: 1
            }
        );
        assert!(!o.fleet.seq);
        assert_eq!(o.credentials, Some(("u".into(), "p".into())));
        assert_eq!(o.client_id.as_deref(), Some("sim"));
        assert_eq!((o.connections, o.inflight), (2, 7));
        assert_eq!(o.progress_every, Duration::from_secs(2));
    }

    #[test]
    fn a_password_comes_from_a_file_as_well_as_a_flag() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "from-a-file\n").unwrap();
        let o = options(&["--username", "u", "--password-file", file.to_str().unwrap()]);
        assert_eq!(o.credentials, Some(("u".into(), "from-a-file".into())));
        let argv = [
            "simulate",
            "--username",
            "u",
            "--password",
            "p",
            "--password-file",
            "x",
        ];
        assert!(
            Cli::try_parse_from(argv).is_err(),
            "one source of the password"
        );
        let argv = [
            "simulate",
            "--username",
            "u",
            "--password-file",
            "/nonexistent/pw",
        ];
        let error = Cli::try_parse_from(argv).unwrap_err().to_string();
        assert!(error.contains("/nonexistent/pw"), "{error}");
    }

    #[test]
    fn nonsense_flags_are_refused() {
        for bad in [
            &["--qos", "2"][..],
            &["--rate", "-1"],
            &["--devices", "0"],
            &["--duration", "0"],
            &["--mix", "drone=1"],
            &["--broker", "host:port"],
            &["--username", "u"],
        ] {
            let argv = std::iter::once("simulate").chain(bad.iter().copied());
            assert!(Cli::try_parse_from(argv).is_err(), "{bad:?} accepted");
        }
    }
}
