//! `wasmgate bench`: an end-to-end load tool, like redis-benchmark for the
//! gateway. It publishes N telemetry messages from the simulated fleet
//! ([`crate::simulate::fleet`]), each stamped with its send time (`sent_us`)
//! and its device's `seq`; subscribes to where the results come out; matches
//! each output to its message ([`ledger`]); and reports throughput, latency
//! percentiles, lost and duplicated messages, and the CPU and memory of the
//! processes under test ([`procfs`]).
//!
//! [`passthrough`] is the baseline: subscribe, republish, ack, no function.
//!
//! Two connections, publisher and subscriber, each polled by its own task,
//! so that a slow subscriber never delays a send stamp and the other way round.

mod cli;
pub mod http;
pub mod http_floor;
pub mod ledger;
pub mod passthrough;
pub mod procfs;
pub mod report;
pub mod stats;

pub use cli::{command, BenchArgs, BENCH_HELP};
pub use report::Report;

use crate::simulate::{Fleet, FleetConfig, Mix};
use ledger::{Ledger, Outcome};
use procfs::Sampler;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Incoming, MqttOptions, Outgoing, QoS,
};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What to send, where, and what to watch.
#[derive(Debug, Clone)]
pub struct Options {
    pub host: String,
    pub port: u16,
    /// Username and password, if the broker wants them.
    pub credentials: Option<(String, String)>,
    /// Messages to send.
    pub count: u64,
    /// Messages per second; 0 is flat out (as fast as the broker takes them).
    pub rate: f64,
    /// QoS of the publishes and of the results subscription.
    pub qos: u8,
    /// The fleet; [`FleetConfig::sent_us`] is always set.
    pub fleet: FleetConfig,
    /// Topic filter the results come out on.
    pub results: String,
    /// After the last send, how long to wait for the outputs still missing.
    pub settle: Duration,
    /// QoS 1 publishes in flight, waiting for their PUBACK.
    pub inflight: u16,
    /// Processes to sample (the gateway, the broker...).
    pub pids: Vec<u32>,
    /// How often to sample them.
    pub sample_every: Duration,
    /// A name for the run, carried into the report.
    pub label: Option<String>,
}

impl Options {
    pub const DEFAULT_COUNT: u64 = 10_000;
    pub const DEFAULT_RESULTS: &'static str = "telemetry/#";
    pub const DEFAULT_SETTLE: Duration = Duration::from_secs(5);
    pub const DEFAULT_INFLIGHT: u16 = 100;
    pub const DEFAULT_DEVICES: u32 = 100;
    /// vending-telemetry answers vending machines only.
    pub const DEFAULT_MIX: Mix = Mix {
        vending: 1,
        robot: 0,
    };

    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
            credentials: None,
            count: Self::DEFAULT_COUNT,
            rate: 0.0,
            qos: 1,
            fleet: FleetConfig {
                devices: Self::DEFAULT_DEVICES,
                mix: Self::DEFAULT_MIX,
                sent_us: true,
                ..FleetConfig::default()
            },
            results: Self::DEFAULT_RESULTS.to_owned(),
            settle: Self::DEFAULT_SETTLE,
            inflight: Self::DEFAULT_INFLIGHT,
            pids: Vec::new(),
            sample_every: Duration::from_millis(200),
            label: None,
        }
    }

    /// `host:port`, for messages.
    pub fn broker(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Every problem, one per line.
    pub fn validate(&self) -> Result<(), BenchError> {
        let mut problems = Vec::new();
        if self.host.is_empty() {
            problems.push("the broker host is empty".to_owned());
        }
        if self.count == 0 {
            problems.push("count must be at least 1".to_owned());
        }
        if !(self.rate.is_finite() && self.rate >= 0.0) {
            problems.push(format!(
                "rate must be 0 (flat out) or more, not {}",
                self.rate
            ));
        }
        if self.qos > 1 {
            problems.push(format!("qos must be 0 or 1, not {}", self.qos));
        }
        if self.fleet.devices == 0 {
            problems.push("there must be at least one device".to_owned());
        }
        if let Err(e) = crate::router::validate_filter(&self.results) {
            problems.push(format!(
                "--results {:?} is not a topic filter: {e}",
                self.results
            ));
        }
        if self.inflight == 0 {
            problems.push("inflight must be at least 1".to_owned());
        }
        for pid in &self.pids {
            if procfs::read(*pid).is_none() {
                problems.push(format!(
                    "no process {pid} to sample (/proc/{pid} unreadable)"
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(BenchError::Invalid(problems.join("\n")))
        }
    }

    fn mqtt_qos(&self) -> QoS {
        qos(self.qos)
    }

    fn mqtt_options(&self, role: &str) -> MqttOptions {
        let id = format!("wasmgate-bench-{}-{role}", std::process::id());
        let mut options = MqttOptions::new(id, self.host.clone(), self.port);
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_clean_session(true)
            .set_inflight(self.inflight)
            .set_max_packet_size(4 << 20, 4 << 20);
        if let Some((user, password)) = &self.credentials {
            options.set_credentials(user.clone(), password.clone());
        }
        options
    }
}

pub(crate) fn qos(q: u8) -> QoS {
    if q == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

/// Why a bench could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("invalid bench options:\n{0}")]
    Invalid(String),
    #[error("cannot connect the {role} to the MQTT broker at {broker}: {error}")]
    Connect {
        role: &'static str,
        broker: String,
        error: Box<ConnectionError>,
    },
    #[error("the MQTT broker at {broker} did not answer the {role}'s {what} within {timeout:?}")]
    Timeout {
        role: &'static str,
        broker: String,
        what: &'static str,
        timeout: Duration,
    },
    #[error("the MQTT broker at {broker} refused the subscription to {filter:?}")]
    SubscribeRefused { broker: String, filter: String },
    #[error(transparent)]
    Http(#[from] http::HttpError),
}

/// How long the broker gets to answer CONNECT and SUBSCRIBE.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Publish requests queued ahead of the event loop: few, so that a send stamp
/// is taken just before the message goes out rather than a long queue earlier.
const CLIENT_CAPACITY: usize = 16;

/// Microseconds since the Unix epoch, from a monotonic clock: one origin
/// for send and receive stamps, so a latency never goes negative.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
    origin_us: u64,
}

impl Clock {
    pub fn new() -> Self {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            origin: Instant::now(),
            origin_us: since_epoch.as_micros() as u64,
        }
    }

    pub fn now_us(&self) -> u64 {
        self.origin_us + self.origin.elapsed().as_micros() as u64
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// State shared by the producer and the two connection tasks.
#[derive(Debug)]
struct Shared {
    ledger: Mutex<Ledger>,
    /// PUBLISH packets written.
    written: AtomicU64,
    acked: AtomicU64,
    last_output_us: AtomicU64,
    /// Connection errors after the start (each reconnection attempt).
    errors: AtomicU64,
    stop: AtomicBool,
}

impl Shared {
    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Runs one bench: connects, subscribes, publishes `count` messages, waits
/// for the outputs (up to `settle` after the last send) and reports.
/// `shutdown` ends the sending early; what was sent is still reported.
pub async fn run(
    options: Options,
    shutdown: impl Future<Output = ()>,
) -> Result<Report, BenchError> {
    options.validate()?;
    let broker = options.broker();
    let clock = Clock::new();
    let mut fleet_config = options.fleet.clone();
    fleet_config.sent_us = true;
    let mut fleet = Fleet::new(&fleet_config);
    let shared = Arc::new(Shared {
        ledger: Mutex::new(Ledger::new(
            (0..fleet.len()).map(|i| fleet.id(i).to_owned()),
        )),
        written: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        last_output_us: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });

    // Subscribe first, so no output is missed.
    let (subscriber, mut sub_loop) =
        connect(options.mqtt_options("sub"), &broker, "subscriber", 1024).await?;
    subscriber
        .subscribe(options.results.clone(), options.mqtt_qos())
        .await
        .map_err(|_| BenchError::Timeout {
            role: "subscriber",
            broker: broker.clone(),
            what: "SUBSCRIBE",
            timeout: HANDSHAKE_TIMEOUT,
        })?;
    wait_suback(&mut sub_loop, &broker, &options.results).await?;
    let sub_task = tokio::spawn(receive(sub_loop, shared.clone(), clock));

    let (publisher, pub_loop) = connect(
        options.mqtt_options("pub"),
        &broker,
        "publisher",
        CLIENT_CAPACITY,
    )
    .await?;
    let pub_task = tokio::spawn(drive_publisher(pub_loop, shared.clone()));

    let mut samplers: Vec<Sampler> = options.pids.iter().map(|&pid| Sampler::new(pid)).collect();
    samplers.push(Sampler::new(std::process::id()));
    let samplers = Arc::new(Mutex::new(samplers));
    let sampling = tokio::spawn(sample(samplers.clone(), options.sample_every));

    // Send.
    let start_us = clock.now_us();
    let start = Instant::now();
    let interval = (options.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / options.rate));
    let mut due = start;
    let mut sent = 0u64;
    let qos = options.mqtt_qos();
    tokio::pin!(shutdown);
    let mut interrupted = false;
    while sent < options.count {
        if let Some(interval) = interval {
            let now = Instant::now();
            if due > now {
                tokio::select! {
                    () = tokio::time::sleep_until(due.into()) => {}
                    () = &mut shutdown => { interrupted = true; break; }
                }
            } else if now - due > Duration::from_secs(1) {
                // Stalled (broker gone): carry on at the rate from here, no burst.
                due = now;
            }
            due += interval;
        }
        let now_us = clock.now_us();
        let message = fleet.next_message_us(now_us);
        shared
            .ledger()
            .record(message.device, message.seq, message.ts, now_us);
        tokio::select! {
            biased;
            () = &mut shutdown => { interrupted = true; break; }
            result = publisher.publish(message.topic, qos, false, message.payload) => {
                if result.is_err() {
                    break;
                }
            }
        }
        sent += 1;
    }
    let last_send_us = clock.now_us();

    // Wait for the broker to take everything (QoS 1), then for the outputs.
    let settle_until = Instant::now() + options.settle;
    loop {
        let all_written = shared.written.load(Ordering::Relaxed) >= sent;
        let all_acked = options.qos == 0 || shared.acked.load(Ordering::Relaxed) >= sent;
        let counts = shared.ledger().counts();
        if (all_written && all_acked && counts.matched >= counts.sent)
            || Instant::now() >= settle_until
        {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(5)) => {}
            () = &mut shutdown, if !interrupted => { interrupted = true; }
        }
    }
    shared.stop.store(true, Ordering::Relaxed);
    let end_us = clock.now_us();
    sampling.abort();
    let mut usage: Vec<procfs::Usage> = {
        let mut samplers = samplers.lock().unwrap_or_else(PoisonError::into_inner);
        samplers.iter_mut().for_each(Sampler::sample);
        samplers.iter().map(Sampler::usage).collect()
    };
    let bench_usage = usage.pop().unwrap_or_default();

    let _ = publisher.try_disconnect();
    let _ = subscriber.try_disconnect();
    for task in [pub_task, sub_task] {
        let mut task = task;
        if tokio::time::timeout(Duration::from_secs(1), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }

    let (counts, latency) = {
        let mut ledger = shared.ledger();
        (ledger.counts(), ledger.latency())
    };
    let acked = shared.acked.load(Ordering::Relaxed);
    // The sending time, not the last PUBACK: a broker may hold its last ack
    // back (delayed TCP acks) for tens of milliseconds, which on a short run
    // would read as a lower rate than the broker sustained.
    let in_end_us = last_send_us;
    let last_output_us = shared.last_output_us.load(Ordering::Relaxed);
    Ok(Report {
        label: options.label.clone(),
        broker,
        results: options.results.clone(),
        qos: options.qos,
        rate_target: options.rate,
        devices: fleet.len() as u32,
        sent: counts.sent,
        acked: if options.qos == 1 { Some(acked) } else { None },
        outputs: counts.matched,
        lost: counts.missing(),
        duplicates: counts.duplicates,
        unmatched: counts.unmatched,
        connection_errors: shared.errors.load(Ordering::Relaxed),
        interrupted,
        send_s: secs(in_end_us - start_us),
        in_rate: per_second(counts.sent, in_end_us - start_us),
        out_rate: per_second(counts.matched, last_output_us.saturating_sub(start_us)),
        wall_s: secs(end_us - start_us),
        settle_s: options.settle.as_secs_f64(),
        latency,
        processes: usage,
        bench: bench_usage,
    })
}

fn secs(us: u64) -> f64 {
    us as f64 / 1e6
}

fn per_second(n: u64, us: u64) -> f64 {
    if us == 0 {
        0.0
    } else {
        n as f64 * 1e6 / us as f64
    }
}

/// A client and its event loop, polled until the broker's CONNACK.
pub(crate) async fn connect(
    options: MqttOptions,
    broker: &str,
    role: &'static str,
    capacity: usize,
) -> Result<(AsyncClient, EventLoop), BenchError> {
    let (client, mut eventloop) = AsyncClient::new(options, capacity);
    let handshake = async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Incoming::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(error) => {
                    return Err(BenchError::Connect {
                        role,
                        broker: broker.to_owned(),
                        error: Box::new(error),
                    })
                }
            }
        }
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(result) => result.map(|()| (client, eventloop)),
        Err(_) => Err(BenchError::Timeout {
            role,
            broker: broker.to_owned(),
            what: "CONNECT",
            timeout: HANDSHAKE_TIMEOUT,
        }),
    }
}

async fn wait_suback(
    eventloop: &mut EventLoop,
    broker: &str,
    filter: &str,
) -> Result<(), BenchError> {
    let wait = async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Incoming::SubAck(ack))) => {
                    let refused = ack
                        .return_codes
                        .iter()
                        .any(|code| matches!(code, rumqttc::SubscribeReasonCode::Failure));
                    return if refused {
                        Err(BenchError::SubscribeRefused {
                            broker: broker.to_owned(),
                            filter: filter.to_owned(),
                        })
                    } else {
                        Ok(())
                    };
                }
                Ok(_) => {}
                Err(error) => {
                    return Err(BenchError::Connect {
                        role: "subscriber",
                        broker: broker.to_owned(),
                        error: Box::new(error),
                    })
                }
            }
        }
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, wait)
        .await
        .unwrap_or_else(|_| {
            Err(BenchError::Timeout {
                role: "subscriber",
                broker: broker.to_owned(),
                what: "SUBSCRIBE",
                timeout: HANDSHAKE_TIMEOUT,
            })
        })
}

/// Polls the publisher's event loop, counting writes and PUBACKs.
async fn drive_publisher(mut eventloop: EventLoop, shared: Arc<Shared>) {
    loop {
        match eventloop.poll().await {
            Ok(Event::Outgoing(Outgoing::Publish(_))) => {
                shared.written.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Event::Incoming(Incoming::PubAck(_))) => {
                shared.acked.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(ConnectionError::RequestsDone) => {
                return
            }
            Ok(_) => {}
            Err(error) => {
                if shared.stop.load(Ordering::Relaxed) {
                    return;
                }
                shared.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "bench publisher: connection lost; reconnecting");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Polls the subscriber's event loop, stamping and matching each output.
async fn receive(mut eventloop: EventLoop, shared: Arc<Shared>, clock: Clock) {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Incoming::Publish(publish))) => {
                let now_us = clock.now_us();
                let outcome = shared.ledger().answer(&publish.payload, now_us);
                if matches!(outcome, Outcome::Matched { .. }) {
                    shared.last_output_us.store(now_us, Ordering::Relaxed);
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(ConnectionError::RequestsDone) => {
                return
            }
            Ok(_) => {}
            Err(error) => {
                if shared.stop.load(Ordering::Relaxed) {
                    return;
                }
                shared.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "bench subscriber: connection lost; reconnecting");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Samples every process until aborted.
async fn sample(samplers: Arc<Mutex<Vec<Sampler>>>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    loop {
        ticks.tick().await;
        samplers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter_mut()
            .for_each(Sampler::sample);
    }
}
