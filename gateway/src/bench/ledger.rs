//! What was sent, and which output answers which message. Pure: the bench
//! records each message as it publishes it and hands over each output as it
//! arrives, with timestamps from its own clock.
//!
//! An output names its message by the device id in its payload (`machine`,
//! `robot` or `device`) and then, best first:
//! - `seq`: the device's count, which the fleet stamps and a pass-through or
//!   the broker echo keeps;
//! - `ts`: what vending-telemetry echoes. The bench's fleet keeps `ts`
//!   strictly increasing per device (`FleetConfig::sent_us`), so it is as good
//!   a name as `seq` for a function that copies it into its output.

use super::stats::Latency;
use serde::Deserialize;
use std::collections::HashMap;

/// How an output was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The first output for a message; its latency in microseconds.
    Matched { latency_us: u64 },
    /// Another output for a message already answered.
    Duplicate,
    /// Names no message sent in this run (not JSON, no device id, from an
    /// earlier run, or a result the bench does not count, like an alert).
    Unmatched,
}

/// Counts so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub sent: u64,
    /// Messages with at least one output.
    pub matched: u64,
    pub duplicates: u64,
    pub unmatched: u64,
}

impl Counts {
    /// Messages without an output (yet).
    pub fn missing(&self) -> u64 {
        self.sent - self.matched
    }
}

#[derive(Debug, Clone, Copy)]
struct Sent {
    sent_us: u64,
    outputs: u32,
}

/// Every message of a run and the outputs that answered it.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Device id -> index, for the ids of the fleet.
    devices: HashMap<String, usize>,
    sent: Vec<Sent>,
    by_seq: HashMap<(usize, u64), usize>,
    by_ts: HashMap<(usize, u64), usize>,
    latencies_us: Vec<u64>,
    counts: Counts,
}

/// The fields of an output that name its message; the rest is skipped.
#[derive(Debug, Deserialize)]
struct Echo<'a> {
    #[serde(borrow, default)]
    machine: Option<&'a str>,
    #[serde(borrow, default)]
    robot: Option<&'a str>,
    #[serde(borrow, default)]
    device: Option<&'a str>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    ts: Option<u64>,
}

impl Ledger {
    /// A ledger for a fleet whose device `i` is `ids[i]`.
    pub fn new<S: Into<String>>(ids: impl IntoIterator<Item = S>) -> Self {
        Self {
            devices: ids
                .into_iter()
                .enumerate()
                .map(|(i, id)| (id.into(), i))
                .collect(),
            ..Self::default()
        }
    }

    /// Notes a message as published at `sent_us`.
    pub fn record(&mut self, device: usize, seq: u64, ts: u64, sent_us: u64) {
        let index = self.sent.len();
        self.sent.push(Sent {
            sent_us,
            outputs: 0,
        });
        self.by_seq.insert((device, seq), index);
        self.by_ts.insert((device, ts), index);
        self.counts.sent += 1;
    }

    /// Takes an output that arrived at `received_us`.
    pub fn answer(&mut self, payload: &[u8], received_us: u64) -> Outcome {
        let outcome = match self.find(payload) {
            None => Outcome::Unmatched,
            Some(index) => {
                let sent = &mut self.sent[index];
                sent.outputs += 1;
                if sent.outputs == 1 {
                    Outcome::Matched {
                        latency_us: received_us.saturating_sub(sent.sent_us),
                    }
                } else {
                    Outcome::Duplicate
                }
            }
        };
        match outcome {
            Outcome::Matched { latency_us } => {
                self.latencies_us.push(latency_us);
                self.counts.matched += 1;
            }
            Outcome::Duplicate => self.counts.duplicates += 1,
            Outcome::Unmatched => self.counts.unmatched += 1,
        }
        outcome
    }

    fn find(&self, payload: &[u8]) -> Option<usize> {
        let echo: Echo = serde_json::from_slice(payload).ok()?;
        let id = echo.machine.or(echo.robot).or(echo.device)?;
        let device = *self.devices.get(id)?;
        match (echo.seq, echo.ts) {
            (Some(seq), _) => self.by_seq.get(&(device, seq)).copied(),
            (None, Some(ts)) => self.by_ts.get(&(device, ts)).copied(),
            (None, None) => None,
        }
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// The latencies of the matched messages (first outputs only).
    pub fn latency(&mut self) -> Latency {
        Latency::of(&mut self.latencies_us)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger() -> Ledger {
        let mut ledger = Ledger::new(["vm-1", "vm-2"]);
        ledger.record(0, 1, 1_000, 5_000_000);
        ledger.record(1, 1, 1_000, 5_000_100);
        ledger.record(0, 2, 1_001, 5_000_200);
        ledger
    }

    #[test]
    fn an_echoed_seq_names_the_message_and_gives_its_latency() {
        let mut ledger = ledger();
        let out = br#"{"machine":"vm-2","seq":1,"ts":1000,"temp_c":4.5}"#;
        assert_eq!(
            ledger.answer(out, 5_001_100),
            Outcome::Matched { latency_us: 1_000 }
        );
        assert_eq!(ledger.counts().missing(), 2);
    }

    #[test]
    fn a_function_that_echoes_only_ts_is_matched_by_device_and_ts() {
        // vending-telemetry's summary: machine and ts, no seq.
        let mut ledger = ledger();
        let summary = br#"{"machine":"vm-1","ts":1001,"temp_c":4.5,"door_open":false,"sales_cents":150,"vends":1,"low_slots":0}"#;
        assert_eq!(
            ledger.answer(summary, 5_000_700),
            Outcome::Matched { latency_us: 500 }
        );
    }

    #[test]
    fn a_second_output_for_a_message_is_a_duplicate_and_keeps_the_first_latency() {
        let mut ledger = ledger();
        let out = br#"{"machine":"vm-1","seq":1}"#;
        assert!(matches!(
            ledger.answer(out, 5_000_010),
            Outcome::Matched { .. }
        ));
        assert_eq!(ledger.answer(out, 5_900_000), Outcome::Duplicate);
        let counts = ledger.counts();
        assert_eq!(
            (counts.matched, counts.duplicates, counts.missing()),
            (1, 1, 2)
        );
        assert_eq!(ledger.latency().max_us, 10);
    }

    #[test]
    fn outputs_that_name_no_message_of_this_run_are_unmatched() {
        let mut ledger = ledger();
        for out in [
            &b"not json"[..],
            br#"{"machine":"vm-9","seq":1}"#,
            br#"{"machine":"vm-1","seq":77}"#,
            br#"{"machine":"vm-1"}"#,
            br#"{"seq":1,"ts":1000}"#,
        ] {
            assert_eq!(ledger.answer(out, 1), Outcome::Unmatched, "{out:?}");
        }
        assert_eq!(ledger.counts().unmatched, 5);
        assert_eq!(ledger.counts().matched, 0);
    }

    #[test]
    fn robots_are_named_by_their_robot_field() {
        let mut ledger = Ledger::new(["r-1"]);
        ledger.record(0, 1, 42, 10);
        assert!(matches!(
            ledger.answer(br#"{"robot":"r-1","ts":42,"alert":"battery"}"#, 30),
            Outcome::Matched { latency_us: 20 }
        ));
    }
}
