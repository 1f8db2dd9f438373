//! The promise users buy the gateway for: nothing is lost when the gateway,
//! the local broker or the uplink goes away. Each test runs the real
//! `wasmgate` binary between two real mosquittos, the local one devices
//! publish to and an "upstream" one standing in for the cloud, and checks
//! what arrives upstream against what the devices published.
//!
//! The function is the vending example: every message here carries a sale,
//! so its KV counters (`<machine>/vends`, `<machine>/sales_cents`) can be
//! compared with a replay of the inputs after the crashes.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::gateway::{wasmgate, BrokerMode, GatewayConfig, GatewayProcess};
use support::mosquitto::{Mosquitto, GATEWAY_SETTINGS};
use support::mqtt::{free_port, unique_id, wait_until, Message, MqttClient};
use support::rig::{alert_topic, telemetry, telemetry_topic, Summaries, PROBE};

/// Longest a stream of results may pause before a test calls it a stall.
const STALL: Duration = Duration::from_secs(60);
const MACHINES: [&str; 4] = ["vm-1", "vm-2", "vm-3", "vm-4"];
/// Messages of the gateway's outbox, per destination, sent and unanswered
/// or acknowledged with their delete not yet committed (`RESEND_BOUND` in
/// `pipeline/outbox.rs`).
const RESEND_BOUND: usize = 256;
/// Summaries one SIGKILL may send upstream twice when no message ran twice:
/// every row still in the outbox goes again after a restart, and of those
/// only the ones within the bound can have reached the broker already. This
/// used to be unbounded (it grew with throughput), because a slot came free
/// at the PUBACK while the delete waited for a later group commit.
const RESENT_PER_KILL: usize = RESEND_BOUND;
/// Messages the local mosquitto delivers to the gateway's session before
/// it must acknowledge them (`max_inflight_messages` in `GATEWAY_SETTINGS`).
const LOCAL_INFLIGHT: usize = 1000;

fn machine(seq: u64) -> &'static str {
    MACHINES[seq as usize % MACHINES.len()]
}

fn price_cents(seq: u64) -> u64 {
    100 + seq % 157
}

/// Telemetry with one sale; `temp_c` above the function's 8 °C also raises
/// an alert on the local broker.
fn vend(seq: u64, temp_c: f32) -> String {
    format!(
        r#"{{"ts":{seq},"temp_c":{temp_c:.1},"stock":[{{"slot":"A1","count":9}}],"sale":{{"slot":"A1","price_cents":{}}}}}"#,
        price_cents(seq)
    )
}

/// What the function's counters must be after processing `seqs` once each.
fn replay(seqs: impl IntoIterator<Item = u64>) -> BTreeMap<String, i64> {
    let mut totals = BTreeMap::new();
    for seq in seqs {
        let m = machine(seq);
        *totals.entry(format!("{m}/vends")).or_insert(0) += 1;
        *totals.entry(format!("{m}/sales_cents")).or_insert(0) += price_cents(seq) as i64;
    }
    totals
}

/// The gateway's counters, read the way an operator would: `wasmgate kv list`.
#[track_caller]
fn kv_totals(gateway: &GatewayProcess) -> BTreeMap<String, i64> {
    let config = gateway.config_path().display().to_string();
    let out = wasmgate(
        &["kv", "list", "vending", "--config", &config],
        Duration::from_secs(60),
    );
    assert_eq!(out.code, Some(0), "kv list: {}", out.stderr);
    out.stdout
        .lines()
        .filter_map(|line| line.split_once(" = "))
        .filter(|(key, _)| key.ends_with("/vends") || key.ends_with("/sales_cents"))
        .filter(|(key, _)| !key.starts_with(PROBE))
        .map(|(key, value)| {
            // `889365 (counter; bytes ...)`: the number, then how it is stored.
            let number = value.split_whitespace().next().unwrap_or_default();
            let value = number
                .parse()
                .unwrap_or_else(|e| panic!("{key} = {value}: {e}"));
            (key.to_owned(), value)
        })
        .collect()
}

/// A gateway between a local mosquitto and an upstream one, and the test's
/// subscriber on each.
struct Setup {
    local: Mosquitto,
    cloud: Mosquitto,
    gateway: GatewayProcess,
    /// Subscribed to the summaries on the upstream broker.
    summaries: Option<MqttClient>,
    /// Subscribed to the alerts on the local broker.
    alerts: MqttClient,
}

impl Setup {
    /// Starts both brokers (`local_extra`/`cloud_extra`: mosquitto config
    /// lines beyond what a gateway needs) and the gateway.
    #[track_caller]
    fn start(
        local_extra: &str,
        cloud_extra: &str,
        adjust: impl FnOnce(&mut GatewayConfig, &Mosquitto),
    ) -> Setup {
        let local = Mosquitto::start_with(&format!("{GATEWAY_SETTINGS}{local_extra}"));
        let cloud = Mosquitto::start_with(&format!("{GATEWAY_SETTINGS}{cloud_extra}"));
        let mut config = GatewayConfig::vending(BrokerMode::External { port: local.port() });
        config.upstream = Some(format!("host = \"127.0.0.1\"\nport = {}", cloud.port()));
        adjust(&mut config, &cloud);
        let alerts = MqttClient::connect_persistent(local.port(), &unique_id("alerts"));
        alerts.subscribe("vending/+/alert");
        let summaries = MqttClient::connect(cloud.port(), "cloud");
        summaries.subscribe("telemetry/vending/+");
        let gateway = GatewayProcess::start(&config);
        Setup {
            local,
            cloud,
            gateway,
            summaries: Some(summaries),
            alerts,
        }
    }

    fn summaries(&self) -> &MqttClient {
        self.summaries
            .as_ref()
            .expect("the upstream subscriber is connected")
    }

    /// A device on the local broker.
    fn device(&self) -> MqttClient {
        MqttClient::connect(self.local.port(), "device")
    }

    /// The ends of every log, for failure messages.
    fn diagnostics(&self) -> String {
        support::diagnostics(
            &self.gateway,
            &[("local", &self.local), ("upstream", &self.cloud)],
        )
    }

    /// Records summaries until `done`; fails the test on a stall.
    #[track_caller]
    fn collect(&self, summaries: &mut Summaries, done: impl FnMut(&Summaries) -> bool) {
        summaries.collect_from(self.summaries(), STALL, done, || self.diagnostics());
    }
}

/// Publishes `seqs` from a device thread as fast as the broker takes them;
/// joined, it returns once the broker acknowledged every one.
fn publish_all(
    device: MqttClient,
    seqs: std::ops::RangeInclusive<u64>,
    temp_c: f32,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for seq in seqs {
            device.publish(&telemetry_topic(machine(seq)), vend(seq, temp_c));
        }
        device.wait_acked(Duration::from_secs(300));
    })
}

/// A small deterministic generator, seeded from the clock unless
/// `WASMGATE_CRASH_SEED` is set, so a failing run can be repeated.
struct Rng(u64);

impl Rng {
    fn from_env() -> Rng {
        let seed = std::env::var("WASMGATE_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        eprintln!("crash points from WASMGATE_CRASH_SEED={seed}");
        Rng(seed | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// Kills the gateway with SIGKILL at `kills` random points of an `n`
/// message stream (by how many results have arrived upstream), restarting
/// it each time, and waits until every input's result has arrived.
#[track_caller]
fn stream_through_crashes(setup: &mut Setup, n: u64, kills: usize) -> Summaries {
    let mut rng = Rng::from_env();
    let mut points: Vec<u64> = (0..kills).map(|_| n / 20 + rng.below(n * 8 / 10)).collect();
    points.sort_unstable();
    let started = std::time::Instant::now();
    let publisher = publish_all(setup.device(), 1..=n, 5.0);
    let mut summaries = Summaries::default();
    for point in points {
        setup.collect(&mut summaries, |s| s.unique() as u64 >= point);
        setup.gateway.kill();
        eprintln!("SIGKILL after {point} results ({:?})", started.elapsed());
        setup.gateway.restart();
    }
    publisher.join().expect("the device");
    setup.collect(&mut summaries, |s| s.unique() as u64 == n);
    eprintln!("all {n} results upstream after {:?}", started.elapsed());
    let seen = summaries.seqs();
    let missing: Vec<u64> = (1..=n).filter(|s| !seen.contains(s)).collect();
    assert!(missing.is_empty(), "lost: {missing:?}");
    summaries
}

/// (a) with a dedup key: the device stamps every message with an id (its
/// sequence number), so effects happen exactly once however often the
/// gateway dies; only the outbox's in-flight rows may be sent twice.
#[test]
fn sigkill_during_a_stream_loses_nothing_and_a_dedup_key_makes_effects_exact() {
    const N: u64 = 20_000;
    const KILLS: usize = 5;
    let mut setup = Setup::start("", "", |config, _| {
        config.dedup_key = Some("ts".into());
    });
    let summaries = stream_through_crashes(&mut setup, N, KILLS);
    let duplicates = summaries.duplicates();
    eprintln!("{N} messages, {KILLS} SIGKILLs: {duplicates} duplicate summaries upstream");
    // Only outbox rows not yet deleted are sent again; nothing ran twice.
    let bound = KILLS * RESENT_PER_KILL;
    assert!(
        duplicates <= bound,
        "{duplicates} duplicates, more than {bound}"
    );

    let status = setup.gateway.stop();
    assert!(status.success(), "SIGTERM: {status}");
    let totals = kv_totals(&setup.gateway);
    assert_eq!(
        totals,
        replay(1..=N),
        "the counters differ from a replay of the inputs"
    );
}

/// (a) without a dedup key: at least once. A message processed but not yet
/// acknowledged when the gateway died runs again, so the counters may run
/// ahead of a replay, but only by messages that also show up upstream as
/// duplicates (each run commits its summary with its counters).
#[test]
fn sigkill_during_a_stream_without_dedup_counts_each_duplicate() {
    const N: u64 = 6_000;
    const KILLS: usize = 3;
    let mut setup = Setup::start("", "", |_, _| {});
    let summaries = stream_through_crashes(&mut setup, N, KILLS);
    let status = setup.gateway.stop();
    assert!(status.success(), "SIGTERM: {status}");

    let expected = replay(1..=N);
    // What the duplicates seen upstream allow for: each extra run of `seq`
    // adds one vend and its price, and also sends one more summary.
    let mut extra = BTreeMap::<String, i64>::new();
    for (m, seqs) in &summaries.by_machine {
        let mut counts = BTreeMap::<u64, i64>::new();
        for &seq in seqs {
            *counts.entry(seq).or_default() += 1;
        }
        for (seq, count) in counts {
            *extra.entry(format!("{m}/vends")).or_default() += count - 1;
            *extra.entry(format!("{m}/sales_cents")).or_default() +=
                (count - 1) * price_cents(seq) as i64;
        }
    }
    let actual = kv_totals(&setup.gateway);
    assert_eq!(
        actual.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (key, want) in &expected {
        let got = actual[key];
        let allowed = extra.get(key).copied().unwrap_or(0);
        assert!(
            *want <= got && got <= want + allowed,
            "{key}: {got}, a replay gives {want}, duplicates allow up to {}",
            want + allowed
        );
    }
    let ran_twice: i64 = MACHINES
        .iter()
        .map(|m| actual[&format!("{m}/vends")] - expected[&format!("{m}/vends")])
        .sum();
    let duplicates = summaries.duplicates();
    eprintln!(
        "{N} messages, {KILLS} SIGKILLs: {ran_twice} ran again, {duplicates} duplicate summaries upstream"
    );
    // Only a message delivered to the gateway and not yet acknowledged can
    // run again: at most the broker's in-flight window per kill.
    let window = KILLS * LOCAL_INFLIGHT;
    assert!(
        ran_twice as usize <= window,
        "{ran_twice} ran again, more than {window}"
    );
    let bound = window + KILLS * RESENT_PER_KILL;
    assert!(
        duplicates <= bound,
        "{duplicates} duplicates, more than {bound}"
    );
}

/// Waits until the alert subscriber has seen the alert of every `seqs`.
#[track_caller]
fn wait_for_alerts(setup: &Setup, seqs: &BTreeSet<u64>) {
    let mut got = BTreeSet::new();
    let all = setup.alerts.collect_until(STALL, |message: Message| {
        if let Some(ts) = message.json()["ts"].as_u64() {
            if message.topic != alert_topic(PROBE) {
                got.insert(ts);
            }
        }
        seqs.is_subset(&got)
    });
    assert!(
        all,
        "{} of {} alerts arrived\n{}",
        got.intersection(seqs).count(),
        seqs.len(),
        setup.diagnostics()
    );
}

/// The upstream broker with a persistent session for the test's
/// subscriber, then stopped: what the gateway sends once it is back is
/// queued for the subscriber, whoever reconnects first.
fn take_upstream_down(setup: &mut Setup, subscriber_id: &str) {
    take_upstream_down_for(setup, subscriber_id, "telemetry/vending/+");
}

fn take_upstream_down_for(setup: &mut Setup, subscriber_id: &str, filter: &str) {
    drop(setup.summaries.take());
    let subscriber = MqttClient::connect_persistent(setup.cloud.port(), subscriber_id);
    subscriber.subscribe(filter);
    drop(subscriber);
    setup.cloud.stop();
}

fn bring_upstream_back(setup: &mut Setup, subscriber_id: &str) {
    setup.cloud.restart();
    setup.summaries = Some(MqttClient::connect_persistent(
        setup.cloud.port(),
        subscriber_id,
    ));
}

const PERSISTENT: &str = "persistence true\npersistence_location {dir}/\n";

/// (b) The uplink is down for the whole stream: every result waits in the
/// outbox, then drains in order once it is back, while new traffic keeps
/// being stored behind the backlog.
#[test]
fn upstream_down_for_the_whole_stream_then_everything_drains_in_order() {
    const BACKLOG: u64 = 2_000;
    const MORE: u64 = 500;
    let mut setup = Setup::start("", PERSISTENT, |_, _| {});
    let subscriber = unique_id("cloud-sub");
    take_upstream_down(&mut setup, &subscriber);

    // Every message alerts locally: that is how the test knows the gateway
    // has processed them all while the uplink is down.
    publish_all(setup.device(), 1..=BACKLOG, 20.0)
        .join()
        .expect("the device");
    wait_for_alerts(&setup, &(1..=BACKLOG).collect());
    assert!(
        !setup
            .gateway
            .log_lines_with(&["upstream", "messages wait in the outbox"])
            .is_empty(),
        "no log line says the upstream link is down\n{}",
        setup.diagnostics()
    );

    bring_upstream_back(&mut setup, &subscriber);
    let more = publish_all(setup.device(), BACKLOG + 1..=BACKLOG + MORE, 20.0);
    let mut summaries = Summaries::default();
    setup.collect(&mut summaries, |s| s.unique() as u64 == BACKLOG + MORE);
    more.join().expect("the device");

    // One function worker (concurrency 1) commits in arrival order, and the
    // outbox drains in commit order: each machine's summaries arrive in the
    // order its telemetry was published, the backlog before the new ones.
    assert_in_order(&summaries);
}

/// (c) The local broker stops and comes back (a persistent mosquitto, as
/// in production): the gateway's session and the messages queued for it
/// survive, the gateway reconnects, and alerts emitted while the broker
/// was down wait in the outbox and arrive after.
#[test]
fn local_broker_down_and_up_loses_nothing() {
    const N: u64 = 3_000;
    let mut setup = Setup::start(PERSISTENT, "", |_, _| {});
    let stop = Arc::new(AtomicBool::new(false));
    // A device publishing steadily, through the outage: its client keeps
    // what it could not send and sends it after reconnecting. Only into a
    // session the broker still has: rumqttc drops its unacknowledged
    // publishes when the CONNACK says the session is new, so a device with
    // a clean session loses what was in flight when the broker stopped.
    let device = MqttClient::connect_persistent(setup.local.port(), &unique_id("device"));
    let publisher = std::thread::spawn({
        let stop = stop.clone();
        move || {
            for seq in 1..=N {
                device.publish(&telemetry_topic(machine(seq)), vend(seq, 20.0));
                if seq % 50 == 0 {
                    std::thread::sleep(Duration::from_millis(20));
                }
                if stop.load(Ordering::SeqCst) {
                    break;
                }
            }
            device.wait_acked(Duration::from_secs(300));
        }
    });
    let mut summaries = Summaries::default();
    setup.collect(&mut summaries, |s| s.unique() >= 500);
    setup.local.stop();
    // Long enough for the gateway to notice, back off and retry.
    std::thread::sleep(Duration::from_secs(2));
    setup.local.restart();
    publisher.join().expect("the device");
    assert!(!stop.load(Ordering::SeqCst));

    setup.collect(&mut summaries, |s| s.unique() as u64 == N);
    wait_for_alerts(&setup, &(1..=N).collect());
    assert!(
        !setup
            .gateway
            .log_lines_with(&["local broker connection lost"])
            .is_empty(),
        "the gateway never noticed the broker going away\n{}",
        setup.diagnostics()
    );
}

/// Upstream batching, as on a cellular link: the backlog after an outage
/// travels as full batches, live traffic in batches of what arrived within
/// `max_delay_ms`; compressed, in the documented `WGB1` format. Every result
/// arrives, each machine's in order.
#[test]
fn upstream_batches_carry_every_result_in_order() {
    const BACKLOG: u64 = 1_000;
    const MORE: u64 = 200;
    let mut setup = Setup::start("", PERSISTENT, |config, _| {
        let upstream = config.upstream.take().expect("an upstream");
        config.upstream = Some(format!(
            "{upstream}\nbatch = {{ max_messages = 50, max_delay_ms = 200, compression = \"deflate\" }}"
        ));
    });
    let subscriber = unique_id("cloud-sub");
    take_upstream_down_for(&mut setup, &subscriber, "wasmgate/+/batch");
    publish_all(setup.device(), 1..=BACKLOG, 20.0)
        .join()
        .expect("the device");
    wait_for_alerts(&setup, &(1..=BACKLOG).collect());
    bring_upstream_back(&mut setup, &subscriber);
    let more = publish_all(setup.device(), BACKLOG + 1..=BACKLOG + MORE, 20.0);

    let mut upstream = Summaries::default();
    let mut batches = 0;
    let all = setup.summaries().collect_until(STALL, |message| {
        assert_eq!(message.topic, "wasmgate/e2e/batch");
        let entries = wasmgate::pipeline::decode_batch(&message.payload)
            .unwrap_or_else(|e| panic!("batch {batches}: {e}"));
        batches += 1;
        for (topic, payload) in entries {
            upstream.record(&Message { topic, payload });
        }
        upstream.unique() as u64 == BACKLOG + MORE
    });
    more.join().expect("the device");
    assert!(
        all,
        "{} of {} results arrived in {batches} batches\n{}",
        upstream.unique() as u64,
        BACKLOG + MORE,
        setup.diagnostics()
    );
    assert_in_order(&upstream);
    eprintln!("{} results in {batches} batches", BACKLOG + MORE);
    assert!(
        batches * 5 <= (BACKLOG + MORE) as usize,
        "{batches} batches for {} results: hardly batched",
        BACKLOG + MORE
    );
}

/// Each machine's summaries, first arrivals only, in publishing order.
#[track_caller]
fn assert_in_order(upstream: &Summaries) {
    for (m, seqs) in &upstream.by_machine {
        let mut first = Vec::new();
        let mut once = BTreeSet::new();
        for &seq in seqs {
            if once.insert(seq) {
                first.push(seq);
            }
        }
        assert!(
            first.windows(2).all(|w| w[0] < w[1]),
            "{m}: out of order: {:?}",
            first
                .windows(2)
                .find(|w| w[0] >= w[1])
                .expect("an inversion")
        );
    }
}

/// The line the store logs for every row `drop-oldest` deletes.
const DROPPED: &str = "oldest message dropped";

/// (d) A 1 MiB outbox with `drop-oldest` upstream and the uplink down:
/// the oldest summaries are dropped, each with a log line and counted, and
/// what is left drains once the link is back: the newest ones, nothing else
/// missing.
#[test]
fn outbox_full_drop_oldest_drops_the_oldest_visibly() {
    const N: u64 = 12_000;
    let mut setup = Setup::start("", PERSISTENT, |config, _| {
        config.store = Some("outbox_max_mb = 1\nupstream_when_full = \"drop-oldest\"".into());
    });
    let subscriber = unique_id("cloud-sub");
    take_upstream_down(&mut setup, &subscriber);
    publish_all(setup.device(), 1..=N, 20.0)
        .join()
        .expect("the device");
    wait_for_alerts(&setup, &(1..=N).collect());

    let dropped = setup.gateway.log_lines_with(&[DROPPED]);
    assert!(
        !dropped.is_empty(),
        "{N} summaries (over 1 MiB) and nothing dropped\n{}",
        setup.diagnostics()
    );
    bring_upstream_back(&mut setup, &subscriber);
    let expected = N - dropped.len() as u64;
    let mut summaries = Summaries::default();
    setup.collect(&mut summaries, |s| s.unique() as u64 == expected);
    // Drop-oldest in one outbox filled in order: the first ones are gone.
    let first_kept = N - expected + 1;
    assert_eq!(
        summaries.seqs(),
        (first_kept..=N).collect::<BTreeSet<_>>(),
        "not exactly the oldest {} were dropped",
        dropped.len()
    );
    // The count is also in the store's counters, logged at shutdown.
    let status = setup.gateway.stop();
    assert!(status.success(), "SIGTERM: {status}");
    let stats = setup.gateway.log_lines_with(&["store totals"]);
    assert!(
        stats
            .last()
            .is_some_and(|line| line.contains(&format!("outbox_dropped={}", dropped.len()))),
        "the shutdown totals do not count {} dropped rows: {stats:?}",
        dropped.len()
    );
}

/// (d) The same with `block` (the default): nothing is dropped; the gateway
/// stops taking messages, the broker holds them, and everything arrives once
/// the link is back.
#[test]
fn outbox_full_block_holds_messages_at_the_broker_until_it_drains() {
    const N: u64 = 12_000;
    let mut setup = Setup::start("", PERSISTENT, |config, _| {
        config.store = Some("outbox_max_mb = 1\nupstream_when_full = \"block\"".into());
    });
    let subscriber = unique_id("cloud-sub");
    take_upstream_down(&mut setup, &subscriber);
    publish_all(setup.device(), 1..=N, 20.0)
        .join()
        .expect("the device");
    let full = wait_until(STALL, || {
        !setup
            .gateway
            .log_lines_with(&["outbox full: holding new messages"])
            .is_empty()
    });
    assert!(
        full,
        "the outbox never said it was full\n{}",
        setup.diagnostics()
    );

    bring_upstream_back(&mut setup, &subscriber);
    let mut summaries = Summaries::default();
    setup.collect(&mut summaries, |s| s.unique() as u64 == N);
    assert!(setup.gateway.log_lines_with(&[DROPPED]).is_empty());
    wait_for_alerts(&setup, &(1..=N).collect());
}

/// Certificates for a TLS mosquitto and a gateway that must present its own:
/// a CA, a server certificate for 127.0.0.1, a client certificate.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "wasmgate test CA");
        let ca = ca_params.self_signed(&ca_key).expect("self-signed CA");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf = |names: Vec<String>, file: &str| {
            let key = rcgen::KeyPair::generate().expect("key");
            let mut params = rcgen::CertificateParams::new(names).expect("params");
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, file);
            let cert = params.signed_by(&key, &issuer).expect("sign");
            std::fs::write(dir.path().join(format!("{file}.crt")), cert.pem()).expect("write");
            std::fs::write(dir.path().join(format!("{file}.key")), key.serialize_pem())
                .expect("write");
        };
        leaf(vec!["127.0.0.1".into(), "localhost".into()], "server");
        leaf(vec!["gateway".into()], "gateway");
        std::fs::write(dir.path().join("ca.crt"), ca.pem()).expect("write");
        Pki { dir }
    }

    fn path(&self, file: &str) -> String {
        self.dir.path().join(file).display().to_string()
    }
}

/// The uplink as AWS IoT Core and most cloud brokers want it: TLS, and the
/// gateway proves who it is with a client certificate (mTLS). The upstream
/// mosquitto refuses clients without one on its TLS port; the test's
/// subscriber uses a plain port of its own.
#[test]
fn upstream_over_mutual_tls() {
    let pki = Pki::new();
    let tls_port = free_port();
    let cloud_tls = format!(
        "listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\nuse_identity_as_username true\n",
        pki.path("ca.crt"),
        pki.path("server.crt"),
        pki.path("server.key"),
    );
    let setup = Setup::start("", &cloud_tls, |config, _| {
        config.upstream = Some(format!(
            "host = \"127.0.0.1\"\nport = {tls_port}\ntls = {{ ca = {:?}, cert = {:?}, key = {:?} }}",
            pki.path("ca.crt"),
            pki.path("gateway.crt"),
            pki.path("gateway.key"),
        ));
    });
    let device = setup.device();
    for seq in 1..=50 {
        device.publish(&telemetry_topic(machine(seq)), telemetry(seq, 5.0));
    }
    let mut summaries = Summaries::default();
    setup.collect(&mut summaries, |s| s.unique() == 50);
    // With `use_identity_as_username`, mosquitto names the client by its
    // certificate's common name.
    assert!(
        setup.cloud.log().contains("u'gateway'"),
        "mosquitto did not log the gateway's certificate connecting\n{}",
        setup.cloud.log()
    );
}

/// The gateway's resident memory in KiB, from `/proc`.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Every fault at once, for a bounded time (`WASMGATE_SOAK_SECS`, default
/// 45): a device that disconnects and reconnects every batch, the local
/// broker restarted, the gateway SIGKILLed and restarted, and commits held
/// back (a slow SD card), in a random order. Then: nothing the broker
/// acknowledged to the device is lost, a dedup key keeps the effects exact,
/// what came upstream twice is within one outbox window per kill, and the
/// gateway's memory stayed bounded.
#[test]
fn soak_device_reconnects_broker_restarts_kills_and_slow_commits_together() {
    let secs: u64 = std::env::var("WASMGATE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(45);
    let mut setup = Setup::start(PERSISTENT, "", |config, _| {
        config.dedup_key = Some("ts".into());
        config.store = Some("group_commit_ms = 40".into());
    });
    let mut rng = Rng::from_env();
    let published = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let port = setup.local.port();
    let device_id = unique_id("soak-device");
    let device = {
        let (published, stop) = (published.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut seq = 0;
            while !stop.load(Ordering::SeqCst) {
                // A fresh connection per batch: the device's Wi-Fi drops.
                // It keeps its unacknowledged messages and sends them again
                // (rumqttc does), so a batch is done once all are acked.
                let device = MqttClient::connect_persistent(port, &device_id);
                for _ in 0..200 {
                    seq += 1;
                    device.publish(&telemetry_topic(machine(seq)), vend(seq, 5.0));
                    std::thread::sleep(Duration::from_millis(2));
                }
                device.wait_acked(Duration::from_secs(120));
                published.store(seq, Ordering::SeqCst);
            }
        })
    };
    let (mut kills, mut restarts) = (0, 0);
    let mut max_rss = 0;
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(secs) {
        let pause = Duration::from_millis(2_000 + rng.below(3_000));
        let until = std::time::Instant::now() + pause;
        while std::time::Instant::now() < until {
            if setup.gateway.is_running() {
                max_rss = max_rss.max(rss_kib(setup.gateway.pid()).unwrap_or(0));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        if rng.below(2) == 0 {
            setup.gateway.kill();
            setup.gateway.restart();
            kills += 1;
        } else {
            setup.local.restart();
            restarts += 1;
        }
    }
    stop.store(true, Ordering::SeqCst);
    device.join().expect("the device");
    let n = published.load(Ordering::SeqCst);
    let mut summaries = Summaries::default();
    setup.collect(&mut summaries, |s| s.unique() as u64 == n);
    let seen = summaries.seqs();
    let missing: Vec<u64> = (1..=n).filter(|s| !seen.contains(s)).collect();
    assert!(missing.is_empty(), "lost: {missing:?}");
    let duplicates = summaries.duplicates();
    eprintln!(
        "soak: {secs} s, {n} messages, {kills} SIGKILLs, {restarts} broker restarts: \
         {duplicates} duplicate summaries, gateway RSS at most {max_rss} KiB"
    );
    let bound = kills * RESENT_PER_KILL;
    assert!(
        duplicates <= bound,
        "{duplicates} duplicates, more than {bound}"
    );
    // A debug build; the release build stays near 12 MiB under load.
    assert!(max_rss < 128 << 10, "RSS reached {max_rss} KiB");
    let status = setup.gateway.stop();
    assert!(status.success(), "SIGTERM: {status}");
    assert_eq!(
        kv_totals(&setup.gateway),
        replay(1..=n),
        "the counters differ from a replay of the inputs"
    );
}
