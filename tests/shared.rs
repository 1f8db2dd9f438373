//! Scale-out by MQTT shared subscriptions: three gateways (one of them on
//! MQTT 5) on one real mosquitto take one trigger's stream through
//! `$share/site-a/...`. Each message is run by one of them, all of them take
//! a part, and when one is killed mid-stream the others keep going while
//! its part waits at the broker under its persistent session until it is
//! back; nothing is lost.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use support::gateway::{example_wasm, GatewayProcess};
use support::mosquitto::{Mosquitto, GATEWAY_SETTINGS};
use support::mqtt::{unique_id, MqttClient};
use support::rig::telemetry;

const N: u64 = 20_000;
const STALL: Duration = Duration::from_secs(30);

/// A gateway of the site: the enrich function on the shared trigger, its
/// `site` config naming the gateway in every output, and a dedup key, so
/// that a redelivery after its kill -9 does not run a message twice.
fn member(port: u16, site: &str, protocol: &str) -> GatewayProcess {
    let client_id = unique_id(site);
    let site = site.to_owned();
    let protocol = protocol.to_owned();
    GatewayProcess::start_toml(move |dir| {
        format!(
            "gateway_id = {site:?}\ndata_dir = {data:?}\n\
             [broker]\nmode = \"external\"\nhost = \"127.0.0.1\"\nport = {port}\nclient_id = {client_id:?}\nprotocol = {protocol:?}\n\
             [[functions]]\nname = \"enrich\"\nwasm = {wasm:?}\n\
             triggers = [{{ mqtt = \"vending/+/telemetry\", share = \"site-a\", dedup_key = \"ts\" }}]\n\
             [functions.grants]\nupstream = [\"telemetry/#\"]\n\
             [functions.config]\nsite = {site:?}\n",
            data = dir.join("data").display().to_string(),
            wasm = example_wasm("telemetry_enrich.wasm").display().to_string(),
        )
    })
}

/// What the outputs said: which gateway ran each seq, in arrival order.
#[derive(Default)]
struct Seen {
    by_seq: BTreeMap<u64, Vec<String>>,
    outputs: usize,
}

impl Seen {
    fn take(&mut self, message: &support::mqtt::Message) {
        let json = message.json();
        let seq = json["ts"].as_u64().expect("a seq");
        let site = json["site"].as_str().expect("a site").to_owned();
        self.by_seq.entry(seq).or_default().push(site);
        self.outputs += 1;
    }

    /// How many seqs each gateway ran (first).
    fn per_site(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for sites in self.by_seq.values() {
            *counts.entry(sites[0].clone()).or_default() += 1;
        }
        counts
    }
}

#[test]
fn three_gateways_split_a_shared_stream_and_lose_nothing_when_one_is_killed() {
    let broker = Mosquitto::start_with(GATEWAY_SETTINGS);
    let port = broker.port();
    let mut a = member(port, "gw-a", "3.1.1");
    let mut b = member(port, "gw-b", "3.1.1");
    let mut c = member(port, "gw-c", "5");
    let diagnostics = |gateways: &[&GatewayProcess]| {
        gateways
            .iter()
            .map(|g| support::diagnostics(g, &[]))
            .collect::<Vec<_>>()
            .join("\n")
            + "\nmosquitto log (end):\n"
            + &broker.log()
    };
    let outputs = MqttClient::connect_persistent(port, &unique_id("outputs"));
    outputs.subscribe("telemetry/#");

    // Ten machines, one global seq (the dedup key) so each message is
    // told apart from every other.
    let publisher = std::thread::spawn(move || {
        let device = MqttClient::connect(port, &unique_id("devices"));
        for seq in 0..N {
            device.publish(
                &format!("vending/vm-{}/telemetry", seq % 10),
                telemetry(seq, 5.0),
            );
            if seq % 4 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        device.wait_acked(Duration::from_secs(120));
    });

    let mut seen = Seen::default();
    let flowing = outputs.collect_until(STALL, |m| {
        seen.take(&m);
        seen.by_seq.len() as u64 >= N / 4
    });
    assert!(flowing, "outputs stalled\n{}", diagnostics(&[&a, &b, &c]));

    // gw-b dies mid-stream: the others keep running their parts.
    b.kill();
    let before = seen.per_site();
    let down = Instant::now();
    while down.elapsed() < Duration::from_secs(2) {
        if let Some(m) = outputs.next_message(Duration::from_millis(100)) {
            seen.take(&m);
        }
    }
    let during = seen.per_site();
    for site in ["gw-a", "gw-c"] {
        assert!(
            during.get(site) > before.get(site),
            "{site} did not keep going while gw-b was down: {before:?} -> {during:?}\n{}",
            diagnostics(&[&a, &c])
        );
    }
    // Back on its data and session: what the broker kept for it runs.
    b.restart();
    let complete = outputs.collect_until(STALL, |m| {
        seen.take(&m);
        seen.by_seq.len() as u64 >= N
    });
    publisher.join().expect("the publisher");
    // Late duplicates, if any, arrive within a moment.
    for m in outputs.drain_for(Duration::from_secs(1)) {
        seen.take(&m);
    }
    let missing: Vec<u64> = (0..N).filter(|s| !seen.by_seq.contains_key(s)).collect();
    assert!(
        complete && missing.is_empty(),
        "{} of {N} never came out (first: {:?})\n{}",
        missing.len(),
        &missing[..missing.len().min(10)],
        diagnostics(&[&a, &b, &c])
    );
    let per_site = seen.per_site();
    for site in ["gw-a", "gw-b", "gw-c"] {
        assert!(
            per_site.get(site).copied().unwrap_or(0) > 500,
            "{site} took too little of the stream: {per_site:?}"
        );
    }
    // One gateway ran each message: no seq came from two sites. After its
    // kill -9, gw-b's outbox resends what it had published and not heard
    // acknowledged (at-least-once's stated bound, on that gateway only),
    // so only gw-b may repeat an output, and only a window's worth.
    let two_sites: Vec<_> = seen
        .by_seq
        .iter()
        .filter(|(_, sites)| sites.iter().collect::<BTreeSet<_>>().len() > 1)
        .take(10)
        .collect();
    assert!(
        two_sites.is_empty(),
        "messages run by two gateways: {two_sites:?}"
    );
    let repeated: Vec<_> = seen
        .by_seq
        .iter()
        .filter(|(_, sites)| sites.len() > 1)
        .collect();
    assert!(
        repeated.iter().all(|(_, sites)| sites[0] == "gw-b") && repeated.len() <= 1_000,
        "{} outputs repeated (only gw-b's, after its kill, may be): {:?}",
        repeated.len(),
        &repeated[..repeated.len().min(10)]
    );
    eprintln!(
        "{N} messages: {per_site:?}; {} outputs, {} repeated by gw-b's outbox after its kill",
        seen.outputs,
        repeated.len()
    );
    for gateway in [&mut a, &mut b, &mut c] {
        assert!(gateway.stop().success(), "{}", gateway.logs());
    }
}
