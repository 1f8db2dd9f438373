//! A broker and a gateway running the vending example, wired up the way a
//! user would: devices and the tests' subscribers talk to the broker only.

use super::gateway::{BrokerMode, GatewayConfig, GatewayProcess};
use super::mosquitto::Mosquitto;
use super::mqtt::{free_port, MqttClient};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Which local broker the devices publish to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broker {
    /// rumqttd inside the gateway (the default config).
    Embedded,
    /// A mosquitto the test starts, with the gateway in `mode = "external"`.
    Mosquitto,
}

/// The broker (if separate) and the gateway.
#[derive(Debug)]
pub struct Rig {
    pub gateway: GatewayProcess,
    pub mosquitto: Option<Mosquitto>,
    port: u16,
}

impl Rig {
    /// Starts the broker and a gateway with the test config, and waits
    /// until a message published by a device comes out of the function.
    #[track_caller]
    pub fn start(broker: Broker) -> Rig {
        Self::start_with(broker, |_| {})
    }

    /// Like [`Rig::start`], with the config adjusted first.
    #[track_caller]
    pub fn start_with(broker: Broker, adjust: impl FnOnce(&mut GatewayConfig)) -> Rig {
        let (mosquitto, mode) = match broker {
            Broker::Embedded => (None, BrokerMode::Embedded { port: free_port() }),
            Broker::Mosquitto => {
                let mosquitto = Mosquitto::start_for_gateway();
                let port = mosquitto.port();
                (Some(mosquitto), BrokerMode::External { port })
            }
        };
        let port = match mode {
            BrokerMode::Embedded { port } | BrokerMode::External { port } => port,
        };
        let mut config = GatewayConfig::vending(mode);
        adjust(&mut config);
        let gateway = GatewayProcess::start(&config);
        let rig = Rig {
            gateway,
            mosquitto,
            port,
        };
        rig.wait_until_flowing();
        rig
    }

    /// The ends of the gateway's and the broker's logs, for failure messages.
    pub fn diagnostics(&self) -> String {
        let brokers: Vec<(&str, &Mosquitto)> =
            self.mosquitto.iter().map(|m| ("local", m)).collect();
        super::diagnostics(&self.gateway, &brokers)
    }

    /// The port devices connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A device or subscriber connected to the local broker.
    #[track_caller]
    pub fn client(&self, name: &str) -> MqttClient {
        MqttClient::connect(self.port, name)
    }

    /// The gateway logs "gateway running" before its sessions have
    /// subscribed, so until then a device's message may reach no one. Waits
    /// (bounded) until a probe published by a device yields its summary.
    #[track_caller]
    pub fn wait_until_flowing(&self) {
        let client = self.client("probe");
        client.subscribe(&summary_topic(PROBE));
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut ts = 0;
        while Instant::now() < deadline {
            ts += 1;
            client.publish(&telemetry_topic(PROBE), telemetry(ts, 4.0));
            if client.next_message(Duration::from_millis(250)).is_some() {
                return;
            }
        }
        panic!(
            "no message made it through the gateway within 30 s; its log:\n{}",
            self.gateway.logs()
        );
    }
}

/// The machine [`Rig::wait_until_flowing`] publishes as; tests ignore it.
pub const PROBE: &str = "probe";

pub fn telemetry_topic(machine: &str) -> String {
    format!("vending/{machine}/telemetry")
}

pub fn summary_topic(machine: &str) -> String {
    format!("telemetry/vending/{machine}")
}

pub fn alert_topic(machine: &str) -> String {
    format!("vending/{machine}/alert")
}

/// Telemetry as a vending machine sends it; `ts` doubles as a sequence number
/// (the function copies it into its summary and alert).
pub fn telemetry(ts: u64, temp_c: f32) -> String {
    format!(
        r#"{{"ts":{ts},"temp_c":{temp_c:.1},"door_open":false,"stock":[{{"slot":"A1","count":9}},{{"slot":"B2","count":5}}]}}"#
    )
}

/// Summaries seen per machine, in arrival order, with duplicates kept.
#[derive(Debug, Default)]
pub struct Summaries {
    pub by_machine: BTreeMap<String, Vec<u64>>,
    /// Distinct (machine, ts), kept as they arrive: tests ask for the count
    /// after every message, and a rescan each time is quadratic.
    distinct: BTreeSet<(String, u64)>,
}

impl Summaries {
    /// Records a summary message; ignores the probe and anything else.
    #[track_caller]
    pub fn record(&mut self, message: &super::mqtt::Message) {
        let Some(machine) = message.topic.strip_prefix("telemetry/vending/") else {
            return;
        };
        if machine == PROBE {
            return;
        }
        let json = message.json();
        assert_eq!(json["machine"], machine, "summary on {}", message.topic);
        let ts = json["ts"]
            .as_u64()
            .unwrap_or_else(|| panic!("summary without a numeric ts: {json}"));
        self.by_machine
            .entry(machine.to_owned())
            .or_default()
            .push(ts);
        self.distinct.insert((machine.to_owned(), ts));
    }

    /// Records every summary among `messages`.
    #[track_caller]
    pub fn record_all(&mut self, messages: impl IntoIterator<Item = super::mqtt::Message>) {
        for message in messages {
            self.record(&message);
        }
    }

    /// Records summaries from `subscriber` until `done`; fails the test
    /// when none arrives for `stall`, with `diagnostics` (the logs' ends).
    #[track_caller]
    pub fn collect_from(
        &mut self,
        subscriber: &MqttClient,
        stall: Duration,
        mut done: impl FnMut(&Summaries) -> bool,
        diagnostics: impl FnOnce() -> String,
    ) {
        if done(self) {
            return;
        }
        let finished = subscriber.collect_until(stall, |message| {
            self.record(&message);
            done(self)
        });
        assert!(
            finished,
            "summaries stopped at {} unique\n{}",
            self.unique(),
            diagnostics()
        );
    }

    /// Distinct (machine, ts) pairs seen.
    pub fn unique(&self) -> usize {
        self.distinct.len()
    }

    /// Every sequence number seen, whatever the machine.
    pub fn seqs(&self) -> BTreeSet<u64> {
        self.distinct.iter().map(|(_, ts)| *ts).collect()
    }

    /// Summaries seen more than once (at-least-once redelivery).
    pub fn duplicates(&self) -> usize {
        self.by_machine.values().map(Vec::len).sum::<usize>() - self.unique()
    }

    /// The sequence numbers seen from one machine.
    pub fn of(&self, machine: &str) -> BTreeSet<u64> {
        self.by_machine
            .get(machine)
            .map(|v| v.iter().copied().collect())
            .unwrap_or_default()
    }

    /// For each machine, the sequence numbers in `expected` never seen.
    pub fn missing(
        &self,
        machines: &[String],
        expected: std::ops::RangeInclusive<u64>,
    ) -> Vec<String> {
        machines
            .iter()
            .filter_map(|m| {
                let seen = self.of(m);
                let missing: Vec<u64> = expected.clone().filter(|ts| !seen.contains(ts)).collect();
                (!missing.is_empty()).then(|| {
                    format!(
                        "{m}: {} missing (first {:?})",
                        missing.len(),
                        &missing[..missing.len().min(10)]
                    )
                })
            })
            .collect()
    }
}
