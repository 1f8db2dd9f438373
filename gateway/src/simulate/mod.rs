//! `wasmgate simulate`: a fleet of fake devices publishing telemetry to a
//! broker, to demo the gateway and to load it.
//!
//! [`fleet`] makes the messages (pure, seeded); [`run`] publishes them at a
//! steady rate over one or more MQTT connections and counts what the broker
//! took. Each connection's rumqttc `EventLoop` is polled by its own task:
//! nothing leaves the client unless the loop is polled, and the loop is also
//! what reconnects after the broker restarts.

pub mod cli;
pub mod fleet;

pub use cli::{SimulateArgs, SIMULATE_HELP};
pub use fleet::{Fleet, FleetConfig, Kind, Message, Mix};

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, Outgoing,
    Packet, QoS,
};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// How to reach the broker and what to send it.
#[derive(Debug, Clone)]
pub struct Options {
    /// Broker host name or address.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Client id; connection `k` of several is `<client_id>-<k>`. `None`:
    /// `wasmgate-sim-<pid>`, so two simulators do not kick each other off.
    pub client_id: Option<String>,
    /// Username and password, if the broker wants them.
    pub credentials: Option<(String, String)>,
    /// QoS of every publish: 0 or 1.
    pub qos: u8,
    /// The devices.
    pub fleet: FleetConfig,
    /// Messages per second over the whole fleet; 0 is as fast as the broker takes them.
    pub rate: f64,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Stop after this many messages.
    pub count: Option<u64>,
    /// MQTT connections to spread the devices over (device `i` uses connection `i % K`).
    pub connections: u32,
    /// QoS 1 publishes in flight per connection, waiting for their PUBACK.
    pub inflight: u16,
    /// How often to log progress.
    pub progress_every: Duration,
    /// At the end, how long to wait for the last messages to be written (and acked, at QoS 1).
    pub drain_timeout: Duration,
}

impl Options {
    pub const DEFAULT_PORT: u16 = 1883;
    pub const DEFAULT_RATE: f64 = 10.0;
    pub const DEFAULT_INFLIGHT: u16 = 100;
    pub const DEFAULT_PROGRESS_EVERY: Duration = Duration::from_secs(5);
    pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

    /// The defaults, against a broker at `host:port`: 10 devices, 10 msg/s,
    /// QoS 1, until shut down.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
            client_id: None,
            credentials: None,
            qos: 1,
            fleet: FleetConfig::default(),
            rate: Self::DEFAULT_RATE,
            duration: None,
            count: None,
            connections: 1,
            inflight: Self::DEFAULT_INFLIGHT,
            progress_every: Self::DEFAULT_PROGRESS_EVERY,
            drain_timeout: Self::DEFAULT_DRAIN_TIMEOUT,
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
    pub fn validate(&self) -> Result<(), SimulateError> {
        let mut problems = Vec::new();
        if self.host.is_empty() {
            problems.push("the broker host is empty".to_owned());
        }
        if self.qos > 1 {
            problems.push(format!("qos must be 0 or 1, not {}", self.qos));
        }
        if self.fleet.devices == 0 {
            problems.push("there must be at least one device".to_owned());
        }
        if self.fleet.mix.vending == 0 && self.fleet.mix.robot == 0 {
            problems.push("the mix has no devices".to_owned());
        }
        if !(self.rate.is_finite() && self.rate >= 0.0) {
            problems.push(format!(
                "the rate must be 0 or more messages per second, not {}",
                self.rate
            ));
        }
        if self.connections == 0 {
            problems.push("there must be at least one connection".to_owned());
        }
        if self.inflight == 0 {
            problems.push("inflight must be at least 1".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(SimulateError::Invalid(problems.join("\n")))
        }
    }

    fn mqtt_qos(&self) -> QoS {
        if self.qos == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        }
    }

    fn mqtt_options(&self, connection: u32) -> MqttOptions {
        let prefix = self
            .client_id
            .clone()
            .unwrap_or_else(|| format!("wasmgate-sim-{}", std::process::id()));
        let id = if self.connections > 1 {
            format!("{prefix}-{connection}")
        } else {
            prefix
        };
        let mut options = MqttOptions::new(id, self.host.clone(), self.port);
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_clean_session(true)
            .set_inflight(self.inflight);
        if let Some((user, password)) = &self.credentials {
            options.set_credentials(user.clone(), password.clone());
        }
        options
    }
}

/// Why a simulation could not run (or stopped).
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    /// Options that cannot work, one problem per line.
    #[error("invalid simulate options:\n{0}")]
    Invalid(String),
    /// The first connection failed: nothing listening, no route, no answer.
    #[error("cannot connect to the MQTT broker at {broker}: {reason}; is it running? (`wasmgate demo` starts one)", reason = connect_reason(error))]
    Connect {
        broker: String,
        error: Box<ConnectionError>,
    },
    /// The broker answered CONNECT with a refusal (credentials, client id).
    #[error("the MQTT broker at {broker} rejected client {client_id}: {code:?}{hint}", hint = rejection_hint(*.code))]
    Rejected {
        broker: String,
        client_id: String,
        code: ConnectReturnCode,
    },
}

/// The cause without rumqttc's wrapping ("I/O: ..."), for one readable line.
fn connect_reason(error: &ConnectionError) -> String {
    match error {
        ConnectionError::Io(io) => io.to_string(),
        ConnectionError::NetworkTimeout => "no answer in time".to_owned(),
        other => other.to_string(),
    }
}

fn rejection_hint(code: ConnectReturnCode) -> &'static str {
    match code {
        ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized => {
            " (check --username and --password)"
        }
        ConnectReturnCode::BadClientId => " (try another --client-id)",
        _ => "",
    }
}

/// What a simulation did.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Devices simulated.
    pub devices: u32,
    /// QoS of the publishes.
    pub qos: u8,
    /// Messages generated and handed to the MQTT client.
    pub messages: u64,
    /// PUBLISH packets written to the broker (a retransmission after a reconnect counts again).
    pub sent: u64,
    /// PUBACKs received (QoS 1).
    pub acked: u64,
    /// Connection errors (each failed connection or reconnection attempt).
    pub errors: u64,
    /// Successful reconnections after a lost connection.
    pub reconnects: u64,
    /// From the first message to the end of the drain.
    pub elapsed: Duration,
}

impl Summary {
    /// Messages sent per second.
    pub fn rate(&self) -> f64 {
        per_second(self.sent, self.elapsed)
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sent {} messages from {} devices in {:.2} s ({:.0} msg/s, QoS {})",
            self.sent,
            self.devices,
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.qos
        )?;
        if self.qos == 1 {
            write!(f, ", {} acked", self.acked)?;
        }
        if self.messages > self.sent {
            write!(f, ", {} not sent", self.messages - self.sent)?;
        }
        write!(
            f,
            ", {} errors, {} reconnects",
            self.errors, self.reconnects
        )
    }
}

fn per_second(n: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

/// Counters shared by the producer, the event loop tasks and the progress task.
#[derive(Debug, Default)]
struct Shared {
    messages: AtomicU64,
    sent: AtomicU64,
    acked: AtomicU64,
    errors: AtomicU64,
    reconnects: AtomicU64,
    /// An event loop hit an error that retrying will not fix.
    failed: AtomicBool,
    fatal: Mutex<Option<SimulateError>>,
}

impl Shared {
    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn fail(&self, error: SimulateError) {
        self.fatal
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get_or_insert(error);
        self.failed.store(true, Ordering::Release);
    }

    fn take_fatal(&self) -> Option<SimulateError> {
        self.fatal
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }
}

/// One MQTT connection: the client the producer publishes through and the
/// task polling its event loop.
struct Connection {
    client: AsyncClient,
    task: JoinHandle<()>,
}

/// Requests the producer may queue ahead of the event loop.
const CLIENT_CAPACITY: usize = 1024;

/// Runs the fleet until `duration`, `count` or `shutdown`, whichever comes first.
///
/// Fails if a connection cannot be made at the start (nothing listening,
/// credentials refused) or the broker later refuses credentials; a broker
/// that goes away mid-run is retried until it is back, and counted.
pub async fn run(
    options: Options,
    shutdown: impl Future<Output = ()>,
) -> Result<Summary, SimulateError> {
    options.validate()?;
    let shared = Arc::new(Shared::default());
    let broker = options.broker();
    let qos = options.mqtt_qos();

    let mut connections = Vec::new();
    let mut ready = Vec::new();
    for k in 0..options.connections {
        let mqtt_options = options.mqtt_options(k);
        let (client, eventloop) = AsyncClient::new(mqtt_options, CLIENT_CAPACITY);
        let (ready_tx, ready_rx) = oneshot::channel();
        let task = tokio::spawn(drive(eventloop, broker.clone(), shared.clone(), ready_tx));
        connections.push(Connection { client, task });
        ready.push(ready_rx);
    }
    tokio::pin!(shutdown);
    for ready in ready {
        let connected = tokio::select! {
            result = ready => result.unwrap_or(Ok(())),
            () = &mut shutdown => Ok(()),
        };
        if let Err(error) = connected {
            stop(connections).await;
            return Err(error);
        }
    }
    info!(
        broker = %broker,
        devices = options.fleet.devices,
        rate = options.rate,
        qos = options.qos,
        connections = options.connections,
        "simulating"
    );

    let start = Instant::now();
    let progress = tokio::spawn(report_progress(
        shared.clone(),
        options.qos,
        options.progress_every,
    ));
    produce(&options, &connections, qos, &shared, start, &mut shutdown).await;

    // Let the last messages out (and their acks in) before hanging up.
    let target = Shared::get(&shared.messages);
    let drained = tokio::time::timeout(options.drain_timeout, async {
        loop {
            let done = if options.qos == 0 {
                Shared::get(&shared.sent)
            } else {
                Shared::get(&shared.acked)
            };
            if done >= target || shared.failed.load(Ordering::Acquire) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    if drained.is_err() {
        warn!(
            broker = %broker,
            timeout_s = options.drain_timeout.as_secs_f64(),
            "gave up waiting for the last messages to be sent"
        );
    }
    let elapsed = start.elapsed();
    progress.abort();
    stop(connections).await;

    if let Some(error) = shared.take_fatal() {
        return Err(error);
    }
    Ok(Summary {
        devices: options.fleet.devices,
        qos: options.qos,
        messages: Shared::get(&shared.messages),
        sent: Shared::get(&shared.sent),
        acked: Shared::get(&shared.acked),
        errors: Shared::get(&shared.errors),
        reconnects: Shared::get(&shared.reconnects),
        elapsed,
    })
}

/// Generates and publishes until a stop condition.
async fn produce(
    options: &Options,
    connections: &[Connection],
    qos: QoS,
    shared: &Shared,
    start: Instant,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) {
    let mut fleet = Fleet::new(&options.fleet);
    let interval = (options.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / options.rate));
    let deadline = options.duration.map(|d| start + d);
    let mut due = start;
    let mut produced = 0u64;
    loop {
        if options.count.is_some_and(|count| produced >= count)
            || shared.failed.load(Ordering::Acquire)
        {
            return;
        }
        let now = Instant::now();
        if deadline.is_some_and(|deadline| now >= deadline) {
            return;
        }
        if let Some(interval) = interval {
            if due > now {
                let wake = deadline.map_or(due, |deadline| due.min(deadline));
                tokio::select! {
                    () = tokio::time::sleep_until(wake.into()) => continue,
                    () = &mut *shutdown => return,
                }
            }
            // After a stall (broker down, publish blocked) carry on at the
            // rate from now rather than bursting to catch up.
            if now - due > Duration::from_secs(1) {
                due = now;
            }
            due += interval;
        }
        let message = fleet.next_message(unix_ms());
        let connection = &connections[message.device % connections.len()];
        let publish = connection
            .client
            .publish(message.topic, qos, false, message.payload);
        tokio::select! {
            biased;
            () = &mut *shutdown => return,
            result = publish => {
                if let Err(error) = result {
                    // The event loop is gone: it recorded why.
                    debug!(%error, "publish refused by the client");
                    return;
                }
            }
        }
        produced += 1;
        Shared::bump(&shared.messages);
    }
}

/// Polls one connection's event loop until it is told to disconnect (or
/// every client handle is gone), counting what flows through it.
async fn drive(
    mut eventloop: EventLoop,
    broker: String,
    shared: Arc<Shared>,
    ready: oneshot::Sender<Result<(), SimulateError>>,
) {
    let client_id = eventloop.mqtt_options.client_id();
    let mut ready = Some(ready);
    let mut failures = 0u32;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                if let Some(ready) = ready.take() {
                    debug!(broker = %broker, client_id = %client_id, "connected");
                    let _ = ready.send(Ok(()));
                } else {
                    Shared::bump(&shared.reconnects);
                    info!(broker = %broker, client_id = %client_id, attempts = failures, "reconnected");
                }
                failures = 0;
            }
            Ok(Event::Incoming(Packet::PubAck(_))) => Shared::bump(&shared.acked),
            Ok(Event::Outgoing(Outgoing::Publish(_))) => Shared::bump(&shared.sent),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(ConnectionError::RequestsDone) => return,
            Err(ConnectionError::ConnectionRefused(code)) => {
                let error = SimulateError::Rejected {
                    broker,
                    client_id,
                    code,
                };
                match ready.take() {
                    Some(ready) => {
                        let _ = ready.send(Err(error));
                    }
                    None => shared.fail(error),
                }
                return;
            }
            Err(source) => {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Err(SimulateError::Connect {
                        broker,
                        error: Box::new(source),
                    }));
                    return;
                }
                Shared::bump(&shared.errors);
                failures += 1;
                if failures == 1 {
                    warn!(broker = %broker, client_id = %client_id, error = %source, "connection lost; reconnecting");
                } else {
                    debug!(broker = %broker, client_id = %client_id, error = %source, attempt = failures, "reconnect failed");
                }
                // rumqttc reconnects on the next poll; do not spin while the broker is down.
                let backoff = Duration::from_millis(100 << failures.min(4));
                tokio::time::sleep(backoff).await;
            }
        }
    }
}

/// Asks every connection to disconnect, and stops waiting after a second.
async fn stop(connections: Vec<Connection>) {
    for connection in &connections {
        // Fails only if the event loop is already gone or busy; either way the abort below ends it.
        let _ = connection.client.try_disconnect();
    }
    for connection in connections {
        let mut task = connection.task;
        if tokio::time::timeout(Duration::from_secs(1), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

/// Logs a progress line every `every`.
async fn report_progress(shared: Arc<Shared>, qos: u8, every: Duration) {
    let mut ticks = tokio::time::interval_at((Instant::now() + every).into(), every);
    let mut last = (Instant::now(), 0u64);
    loop {
        ticks.tick().await;
        let now = Instant::now();
        let sent = Shared::get(&shared.sent);
        let rate = per_second(sent - last.1, now - last.0);
        last = (now, sent);
        if qos == 1 {
            info!(
                sent,
                acked = Shared::get(&shared.acked),
                rate = format_args!("{rate:.0}/s"),
                errors = Shared::get(&shared.errors),
                reconnects = Shared::get(&shared.reconnects),
                "progress"
            );
        } else {
            info!(
                sent,
                rate = format_args!("{rate:.0}/s"),
                errors = Shared::get(&shared.errors),
                reconnects = Shared::get(&shared.reconnects),
                "progress"
            );
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Parses `HOST:PORT`, `HOST` (port 1883), `[V6]:PORT` or `[V6]`.
pub fn parse_broker(s: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("missing ] in {s:?}"))?;
        match after {
            "" => (host, None),
            _ => (
                host,
                Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| format!("expected :PORT after ] in {s:?}"))?,
                ),
            ),
        }
    } else {
        match s.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (s, None),
        }
    };
    if host.is_empty() {
        return Err(format!("no host in {s:?}; expected HOST:PORT"));
    }
    let port = match port {
        None => Options::DEFAULT_PORT,
        Some(port) => port
            .parse()
            .map_err(|_| format!("invalid port {port:?} in {s:?}; expected HOST:PORT"))?,
    };
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_addresses_parse_with_or_without_a_port() {
        assert_eq!(
            parse_broker("127.0.0.1:1884"),
            Ok(("127.0.0.1".into(), 1884))
        );
        assert_eq!(
            parse_broker("gateway.local"),
            Ok(("gateway.local".into(), 1883))
        );
        assert_eq!(parse_broker("[::1]:1885"), Ok(("::1".into(), 1885)));
        assert_eq!(parse_broker("[::1]"), Ok(("::1".into(), 1883)));
        assert!(parse_broker("host:port")
            .unwrap_err()
            .contains("invalid port"));
        assert!(parse_broker(":1883").is_err());
        assert!(parse_broker("host:70000").is_err());
    }

    #[test]
    fn every_invalid_option_is_reported_at_once() {
        let mut options = Options::new("", 1883);
        options.qos = 2;
        options.rate = -1.0;
        options.fleet.devices = 0;
        options.connections = 0;
        let message = options.validate().unwrap_err().to_string();
        for problem in [
            "host is empty",
            "qos must be 0 or 1",
            "at least one device",
            "rate must be",
            "one connection",
        ] {
            assert!(
                message.contains(problem),
                "{problem:?} missing from {message}"
            );
        }
        assert!(Options::new("localhost", 1883).validate().is_ok());
    }

    #[test]
    fn the_summary_reads_as_a_sentence() {
        let summary = Summary {
            devices: 10,
            qos: 1,
            messages: 1000,
            sent: 1000,
            acked: 998,
            errors: 1,
            reconnects: 1,
            elapsed: Duration::from_secs(2),
        };
        assert_eq!(
            summary.to_string(),
            "sent 1000 messages from 10 devices in 2.00 s (500 msg/s, QoS 1), 998 acked, 1 errors, 1 reconnects"
        );
    }

    #[tokio::test]
    async fn nothing_listening_is_a_clear_error() {
        // Bind then drop: a loopback port with nothing behind it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut options = Options::new("127.0.0.1", port);
        options.count = Some(1);
        let error = run(options, std::future::pending()).await.unwrap_err();
        assert!(matches!(error, SimulateError::Connect { .. }), "{error:?}");
        let message = error.to_string();
        assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
        assert!(message.to_lowercase().contains("refused"), "{message}");
    }
}
