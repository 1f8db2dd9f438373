//! The embedded MQTT broker: rumqttd, in a child process of the gateway, so
//! that a fresh board needs nothing else and devices connect straight to it.
//!
//! Why a child process and not a thread: release builds abort on a panic,
//! and rumqttd is a large body of code that devices' bytes and timing reach
//! (its router alone has dozens of `unwrap`s on connection state). In its
//! own process a broker crash takes down only the broker: the
//! [`EmbeddedBroker`] supervisor starts a new one within a fraction of a
//! second, on the same ports, and the gateway's sessions reconnect as they
//! would to an external broker. Devices reconnect too. What the broker held
//! in memory (retained messages, queued QoS 1 messages of absent sessions)
//! is gone with it, as it would be after any restart of rumqttd: where that
//! matters, run mosquitto with persistence and `mode = "external"`. Nothing
//! the gateway acknowledged is at risk: its effects are in SQLite first.
//!
//! The child is `wasmgate embedded-broker` (the same binary; its pages are
//! shared with the gateway's). It reads its [`BrokerSettings`] as one JSON
//! line on stdin, answers `ready <port>` on stdout once both listeners take
//! connections, and exits when its stdin closes: when the gateway stops,
//! and also when it is killed, so a broker never outlives its gateway and
//! holds the port. It runs in its own process group and ignores SIGINT and
//! SIGTERM, so a Ctrl-C or `systemctl stop` lets the gateway finish its
//! in-flight work and acknowledgements through the broker before it goes.
//!
//! A new broker knows no sessions, so a device that published before the
//! gateway's sessions had subscribed again would have its message
//! acknowledged and dropped. So the device listener opens only when the
//! gateway says `open` on the broker's stdin: at the first start once its
//! sessions are subscribed, after a restart once they have subscribed again
//! (or 10 s have passed). Until then devices wait in the listen backlog.
//!
//! Two listeners, or three: devices connect to `broker.listen`, and with
//! `broker.tls_listener` over TLS too (mutual TLS with a device CA); the
//! gateway's own sessions to a loopback port with a user and password made at
//! each start. Each listener has its own connection cap, so devices (or a
//! flood of connections from the LAN) can never take the gateway's own
//! sessions' room. The TLS handshake is rustls, the gateway's own (the same
//! one the upstream link uses), run in each connection's task within the
//! CONNECT timeout, so a peer that stalls halfway through a handshake holds
//! up no one else.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

pub use crate::config::{
    EMBEDDED_MAX_EMIT_BYTES as MAX_EMIT_BYTES, EMBEDDED_MAX_PAYLOAD_BYTES as MAX_PAYLOAD_BYTES,
};

/// How long a device may take from TCP connect to its CONNECT packet. A
/// real device sends it at once; a connection that sends nothing holds a
/// file descriptor until then.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Devices connected at once, at most (the device listener's own cap).
pub const MAX_DEVICE_CONNECTIONS: usize = 1_024;

/// How long a first start waits for the broker to listen.
const READY_WAIT: Duration = Duration::from_secs(10);

/// How long a restarted broker keeps devices out waiting for the gateway's
/// sessions to subscribe again.
const RESUBSCRIBE_WAIT: Duration = Duration::from_secs(10);

/// Whether the gateway's sessions have all subscribed since this instant.
type Resubscribed = Box<dyn Fn(Instant) -> bool + Send + Sync>;

/// Name of the gateway's own user on the internal listener.
const INTERNAL_USER: &str = "wasmgate-gateway";

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("embedded broker: cannot listen on {addr}: {error} (is another broker running there? set broker.listen or use mode = \"external\")")]
    Bind { addr: SocketAddr, error: String },
    #[error("embedded broker: did not start listening on {addr} within {waited:?}")]
    NotReady { addr: SocketAddr, waited: Duration },
    #[error("embedded broker: cannot start its process ({exe}): {error}")]
    Spawn { exe: String, error: String },
    #[error("embedded broker: {0}")]
    Start(String),
}

/// What the broker process runs with; the gateway sends it as JSON. The
/// bounds are what devices, one listener and retained messages may take of
/// the gateway (see vendor/rumqttd/UPSTREAM.md for the rumqttd settings
/// behind them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerSettings {
    /// Where devices connect.
    pub listen: SocketAddr,
    /// The gateway's own listener, on loopback; port 0 until the first
    /// start has picked one (restarts keep it).
    pub internal: SocketAddr,
    /// The user and password the internal listener requires; `None`
    /// requires none (tests).
    pub internal_credentials: Option<(String, String)>,
    /// Sessions the broker holds at once, over both listeners. What is left
    /// beyond `max_device_connections` is the gateway's own sessions' room
    /// (and the internal listener's cap).
    pub max_connections: usize,
    /// Connections the device listener holds at once, counted from the TCP
    /// accept (before CONNECT too): past it a new one is accepted and closed
    /// at once, and counted.
    pub max_device_connections: usize,
    /// How long a new connection may stay silent before its CONNECT arrives
    /// (see [`CONNECT_TIMEOUT`]).
    pub connect_timeout_ms: u16,
    pub max_payload_bytes: usize,
    /// Retained messages kept at once; past it a retained PUBLISH is still
    /// delivered but not retained (a warning, and counted).
    pub max_retained_count: usize,
    /// Bytes of retained topics and payloads kept at once; as above.
    pub max_retained_bytes: usize,
    /// Devices must log in with a user and password from this file
    /// (mosquitto_passwd's format, see [`crate::passwords`]); none: any
    /// device may connect.
    pub passwords: Option<std::path::PathBuf>,
    /// A TLS listener for devices beside `listen`; none by default.
    #[serde(default)]
    pub tls: Option<TlsListenerSettings>,
}

/// The TLS device listener. The files are read by the broker process at
/// each start, as the passwords file is: a renewed certificate takes effect
/// at the next broker start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsListenerSettings {
    pub listen: SocketAddr,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    /// Devices must present a certificate this CA signed (mutual TLS).
    pub client_ca: Option<std::path::PathBuf>,
}

impl Default for BrokerSettings {
    /// Devices on `0.0.0.0:1883`, a loopback listener without a password,
    /// room for 8 sessions of the gateway's own.
    fn default() -> Self {
        BrokerSettings {
            listen: SocketAddr::from(([0, 0, 0, 0], 1883)),
            internal: SocketAddr::from(([127, 0, 0, 1], 0)),
            internal_credentials: None,
            max_connections: MAX_DEVICE_CONNECTIONS + 8,
            max_device_connections: MAX_DEVICE_CONNECTIONS,
            connect_timeout_ms: CONNECT_TIMEOUT.as_millis() as u16,
            max_payload_bytes: MAX_PAYLOAD_BYTES,
            // About one status message per device, and sixteen payloads of
            // the largest size: a Pi does not give more than this to
            // retained state.
            max_retained_count: 4_096,
            max_retained_bytes: 32 << 20,
            passwords: None,
            tls: None,
        }
    }
}

impl BrokerSettings {
    /// Settings for a gateway that needs `sessions` connections of its own,
    /// with a password made now for its listener.
    pub fn new(listen: SocketAddr, sessions: usize) -> Self {
        BrokerSettings {
            listen,
            internal_credentials: Some((INTERNAL_USER.to_owned(), random_password())),
            // The gateway's own, with a margin for sessions that reconnect
            // before the broker saw the old connection go.
            max_connections: MAX_DEVICE_CONNECTIONS + sessions * 2 + 8,
            ..BrokerSettings::default()
        }
    }
}

/// 128 bits from the kernel, as hex; the time and pid if that fails (the
/// listener is on loopback: this keeps out other local users' processes,
/// not an attacker with the gateway's own privileges).
fn random_password() -> String {
    let mut bytes = [0u8; 16];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if read.is_err() {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
            ^ u128::from(std::process::id()) << 64;
        bytes = seed.to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A running embedded broker and its supervisor; stopped on drop.
#[derive(Debug)]
pub struct EmbeddedBroker {
    settings: BrokerSettings,
    shared: Arc<Shared>,
    supervisor: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct Shared {
    stopping: AtomicBool,
    /// Set once the gateway opened the device listener the first time;
    /// restarts open it again when this says so.
    resubscribed: Mutex<Option<Resubscribed>>,
    /// The current broker process: its stdin (closing it stops the process)
    /// and the process, for a kill when it does not stop.
    stdin: Mutex<Option<ChildStdin>>,
    child: Mutex<Option<Child>>,
    pid: AtomicU32,
    restarts: AtomicU64,
    /// The broker process's last report of its counts.
    counts: Mutex<Option<BrokerCounts>>,
}

pub use crate::metrics::BrokerCounts;

/// What the broker process reports each second.
fn read_counts(stats: &rumqttd::BrokerStats) -> BrokerCounts {
    let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    BrokerCounts {
        connections: lock(&stats.listeners)
            .iter()
            .map(|(name, n)| (name.clone(), n.load(Ordering::Relaxed) as u64))
            .collect(),
        connections_refused: get(&stats.connections_refused),
        retained: get(&stats.retained_count),
        retained_bytes: get(&stats.retained_bytes),
        retained_refused: get(&stats.retained_refused),
        restarts: 0,
    }
}

impl EmbeddedBroker {
    /// Starts the broker process and waits until it listens. A port still
    /// held by a broker that is going away (a gateway restarted at once
    /// after a kill) is retried for a few seconds.
    pub fn start(mut settings: BrokerSettings) -> Result<Self, BrokerError> {
        let shared = Arc::new(Shared::default());
        let deadline = Instant::now() + Duration::from_secs(5);
        let (child, stdin, stdout, port) = loop {
            match launch(&settings) {
                Ok(started) => break started,
                Err(BrokerError::Bind { .. }) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e),
            }
        };
        settings.internal.set_port(port);
        shared.pid.store(child.id(), Ordering::Relaxed);
        *lock(&shared.stdin) = Some(stdin);
        *lock(&shared.child) = Some(child);
        tracing::info!(listen = %settings.listen, pid = shared.pid.load(Ordering::Relaxed), "embedded broker listening");
        let supervisor = {
            let (settings, shared) = (settings.clone(), shared.clone());
            std::thread::Builder::new()
                .name("broker-supervisor".into())
                .spawn(move || supervise(settings, shared, stdout))
                .map_err(|e| BrokerError::Start(format!("cannot start its supervisor: {e}")))?
        };
        Ok(EmbeddedBroker {
            settings,
            shared,
            supervisor: Some(supervisor),
        })
    }

    /// Where the gateway's own clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.settings.internal
    }

    /// The gateway's user name and password on [`EmbeddedBroker::addr`].
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.settings
            .internal_credentials
            .as_ref()
            .map(|(user, password)| (user.as_str(), password.as_str()))
    }

    /// The broker process's id (changes with each restart).
    pub fn pid(&self) -> u32 {
        self.shared.pid.load(Ordering::Relaxed)
    }

    /// How many times the broker process died and was started again.
    pub fn restarts(&self) -> u64 {
        self.shared.restarts.load(Ordering::Relaxed)
    }

    /// The broker process's counts, as of its last report (at most a
    /// second old); `None` before its first, and while it restarts.
    pub fn counts(&self) -> Option<BrokerCounts> {
        lock(&self.shared.counts).clone()
    }

    /// [`EmbeddedBroker::counts`] for whoever outlives a borrow (`/metrics`).
    pub fn counter(&self) -> impl Fn() -> Option<BrokerCounts> + Send + Sync + 'static {
        let shared = self.shared.clone();
        move || {
            // While it restarts its counts are gone, but its restarts are
            // what an alert on a crash-looping broker needs most.
            let restarts = shared.restarts.load(Ordering::Relaxed);
            let counts = lock(&shared.counts).clone();
            (counts.is_some() || restarts > 0).then(|| BrokerCounts {
                restarts,
                ..counts.unwrap_or_default()
            })
        }
    }

    /// Where devices connect.
    pub fn listen(&self) -> SocketAddr {
        self.settings.listen
    }

    /// Lets devices in, now that the gateway's sessions are subscribed;
    /// `resubscribed` tells a restarted broker when they are again.
    pub fn open_devices(&self, resubscribed: impl Fn(Instant) -> bool + Send + Sync + 'static) {
        *lock(&self.shared.resubscribed) = Some(Box::new(resubscribed));
        self.shared.open();
    }
}

impl Shared {
    fn open(&self) {
        if let Some(stdin) = lock(&self.stdin).as_mut() {
            if let Err(e) = writeln!(stdin, "open").and_then(|()| stdin.flush()) {
                tracing::warn!(error = %e, "cannot tell the embedded broker to let devices in");
            }
        }
    }

    /// After a restart: devices in once the sessions have subscribed again.
    fn open_when_resubscribed(&self, since: Instant) {
        let deadline = since + RESUBSCRIBE_WAIT;
        loop {
            let ready = match lock(&self.resubscribed).as_ref() {
                Some(resubscribed) => resubscribed(since),
                // The first start has not opened it yet; it will.
                None => return,
            };
            if ready || self.stopping.load(Ordering::SeqCst) {
                break;
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    waited = ?RESUBSCRIBE_WAIT,
                    "the gateway's sessions have not all subscribed again; letting devices in anyway"
                );
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.open();
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("pid", &self.pid)
            .field("restarts", &self.restarts)
            .finish_non_exhaustive()
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Closing stdin is the stop signal; the supervisor sees the exit.
        drop(lock(&self.shared.stdin).take());
        let Some(supervisor) = self.supervisor.take() else {
            return;
        };
        let (done_tx, done) = mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let _ = supervisor.join();
            let _ = done_tx.send(());
        });
        if done.recv_timeout(Duration::from_secs(3)).is_err() {
            if let Some(child) = lock(&self.shared.child).as_mut() {
                tracing::warn!(pid = child.id(), "embedded broker did not stop; killing it");
                let _ = child.kill();
            }
            let _ = done.recv_timeout(Duration::from_secs(2));
        }
        drop(waiter);
    }
}

/// Restarts the broker whenever it dies, until the gateway stops it.
fn supervise(
    mut settings: BrokerSettings,
    shared: Arc<Shared>,
    mut stdout: BufReader<ChildStdout>,
) {
    let mut delay = Duration::from_millis(50);
    loop {
        // After `ready` the child writes only its counts, each second
        // (`stats {json}`); EOF means it is gone.
        let mut line = String::new();
        while matches!(stdout.read_line(&mut line), Ok(n) if n > 0) {
            if let Some(counts) = line
                .strip_prefix("stats ")
                .and_then(|json| serde_json::from_str::<BrokerCounts>(json).ok())
            {
                *lock(&shared.counts) = Some(counts);
            }
            line.clear();
        }
        // A new process counts from nothing.
        *lock(&shared.counts) = None;
        let status = reap(&shared);
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let status = match status {
            Some(Ok(status)) => status.to_string(),
            Some(Err(e)) => e.to_string(),
            None => "gone".into(),
        };
        tracing::error!(
            pid = shared.pid.load(Ordering::Relaxed),
            %status,
            "embedded broker exited; starting it again (devices and the gateway's sessions reconnect)"
        );
        // Restart until it works or the gateway stops.
        loop {
            std::thread::sleep(delay);
            if shared.stopping.load(Ordering::SeqCst) {
                return;
            }
            // A subscription acknowledged after this is the new broker's.
            let since = Instant::now();
            match launch(&settings) {
                Ok((child, stdin, out, port)) => {
                    settings.internal.set_port(port);
                    shared.pid.store(child.id(), Ordering::Relaxed);
                    shared.restarts.fetch_add(1, Ordering::Relaxed);
                    *lock(&shared.stdin) = Some(stdin);
                    *lock(&shared.child) = Some(child);
                    if shared.stopping.load(Ordering::SeqCst) {
                        // Stopped while starting: close the new one too.
                        drop(lock(&shared.stdin).take());
                    }
                    tracing::info!(
                        pid = shared.pid.load(Ordering::Relaxed),
                        "embedded broker running again"
                    );
                    shared.open_when_resubscribed(since);
                    stdout = out;
                    delay = Duration::from_millis(50);
                    break;
                }
                Err(e) => {
                    delay = (delay * 2).min(Duration::from_secs(5));
                    tracing::error!(error = %e, retry_in = ?delay, "embedded broker did not start");
                }
            }
        }
    }
}

/// Waits for the broker process to end, without holding the lock across
/// the wait: a stopping gateway may need it to kill a broker that hangs.
fn reap(shared: &Shared) -> Option<std::io::Result<std::process::ExitStatus>> {
    loop {
        match lock(&shared.child).as_mut().map(Child::try_wait) {
            None => return None,
            Some(Ok(None)) => {}
            Some(Ok(Some(status))) => return Some(Ok(status)),
            Some(Err(e)) => return Some(Err(e)),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The program to run as the broker: this one, unless `WASMGATE_EXE` says
/// otherwise (a program embedding the library under another name).
fn broker_exe() -> Result<std::path::PathBuf, BrokerError> {
    if let Some(exe) = std::env::var_os("WASMGATE_EXE") {
        return Ok(exe.into());
    }
    std::env::current_exe().map_err(|e| BrokerError::Spawn {
        exe: "the current executable".into(),
        error: e.to_string(),
    })
}

/// Starts one broker process and waits for its `ready` line: the process,
/// its stdin and stdout, and the internal listener's port.
fn launch(
    settings: &BrokerSettings,
) -> Result<(Child, ChildStdin, BufReader<ChildStdout>, u16), BrokerError> {
    let exe = broker_exe()?;
    let spawn_error = |error: std::io::Error| BrokerError::Spawn {
        exe: exe.display().to_string(),
        error: error.to_string(),
    };
    let mut command = Command::new(&exe);
    command
        .arg("embedded-broker")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        // systemd's readiness protocol is the gateway's, not the broker's.
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID");
    #[cfg(unix)]
    {
        // Out of the terminal's process group: a Ctrl-C is for the gateway,
        // which then stops the broker after its last acknowledgements.
        use std::os::unix::process::CommandExt;
        command.process_group(0);
    }
    let mut child = command.spawn().map_err(spawn_error)?;
    let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(BrokerError::Start("no pipes to the broker process".into()));
    };
    let fail = |mut child: Child, error: BrokerError| {
        let _ = child.kill();
        let _ = child.wait();
        Err(error)
    };
    let line = serde_json::to_string(settings).unwrap_or_default();
    if let Err(e) = writeln!(stdin, "{line}").and_then(|()| stdin.flush()) {
        // Most often the process is already gone: it could not run at all
        // (another architecture's binary without binfmt, a missing loader).
        std::thread::sleep(Duration::from_millis(100));
        let why = match child.try_wait() {
            Ok(Some(status)) => format!(
                "the broker process ({}) exited before it was configured: {status}",
                exe.display()
            ),
            _ => format!("cannot send the broker process its settings: {e}"),
        };
        return fail(child, BrokerError::Start(why));
    }
    // Read the answer on a thread of its own, so that a broker that hangs
    // cannot hold the gateway's start for longer than READY_WAIT.
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = tx.send(line);
        // The reader, not its stream: what it read past `ready` (a stats
        // line) stays in its buffer for the supervisor.
        reader
    });
    let answer = rx.recv_timeout(READY_WAIT);
    let answer = match answer {
        Ok(answer) => answer,
        Err(_) => {
            return fail(
                child,
                BrokerError::NotReady {
                    addr: settings.listen,
                    waited: READY_WAIT,
                },
            )
        }
    };
    let Ok(stdout) = reader.join() else {
        return fail(child, BrokerError::Start("lost its output".into()));
    };
    match parse_answer(answer.trim(), settings.listen) {
        Ok(port) => Ok((child, stdin, stdout, port)),
        Err(e) => fail(child, e),
    }
}

/// The child's first line: `ready PORT`, or why it could not start.
fn parse_answer(answer: &str, listen: SocketAddr) -> Result<u16, BrokerError> {
    if let Some(port) = answer.strip_prefix("ready ") {
        return port
            .parse()
            .map_err(|_| BrokerError::Start(format!("unexpected answer {answer:?}")));
    }
    if let Some(error) = answer.strip_prefix("bind-error ") {
        return Err(BrokerError::Bind {
            addr: listen,
            error: error.to_owned(),
        });
    }
    if let Some(error) = answer.strip_prefix("error ") {
        return Err(BrokerError::Start(error.to_owned()));
    }
    Err(BrokerError::Start(if answer.is_empty() {
        "the broker process exited before it was ready (its log is above)".into()
    } else {
        format!("unexpected answer {answer:?}")
    }))
}

/// `wasmgate embedded-broker`: the broker process's side. Returns when the
/// gateway closes stdin (or the broker could not start: the reason went to
/// stdout for the gateway).
pub fn child_main() -> std::process::ExitCode {
    // A panic on any of rumqttd's threads or tasks ends the process, in
    // every build: a broker with its router thread gone still accepts
    // connections and answers none of them, which is worse than a restart.
    // (Release builds abort on panic anyway; this makes debug builds, and
    // so the tests, behave the same.)
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        std::process::abort();
    }));
    let stdin = std::io::stdin();
    let mut line = String::new();
    let mut out = std::io::stdout();
    let answer = |out: &mut std::io::Stdout, text: String| {
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    };
    if stdin.lock().read_line(&mut line).is_err() {
        return std::process::ExitCode::FAILURE;
    }
    let mut settings: BrokerSettings = match serde_json::from_str(&line) {
        Ok(settings) => settings,
        Err(e) => {
            answer(&mut out, format!("error bad settings: {e}"));
            return std::process::ExitCode::FAILURE;
        }
    };
    ignore_stop_signals();
    // Devices wait until the gateway says `open` (see the module's docs).
    let (open_devices, devices_gate) = tokio::sync::watch::channel(false);
    let broker = match InProcessBroker::start(&settings, Some(devices_gate)) {
        Ok(broker) => broker,
        Err(BrokerError::Bind { error, .. }) => {
            answer(&mut out, format!("bind-error {error}"));
            return std::process::ExitCode::FAILURE;
        }
        Err(e) => {
            answer(&mut out, format!("error {e}"));
            return std::process::ExitCode::FAILURE;
        }
    };
    settings.internal = broker.internal();
    answer(&mut out, format!("ready {}", settings.internal.port()));
    let stats = broker.stats.clone();
    {
        // Counts for the gateway's /metrics, each second; a write that
        // fails means the gateway is gone, and stdin's EOF ends us too.
        let stats = stats.clone();
        let _ = std::thread::Builder::new()
            .name("broker-stats".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_secs(1));
                let line = serde_json::to_string(&read_counts(&stats)).unwrap_or_default();
                let mut out = std::io::stdout().lock();
                if writeln!(out, "stats {line}")
                    .and_then(|()| out.flush())
                    .is_err()
                {
                    return;
                }
            });
    }
    // Runs until the gateway closes our stdin (it stopped, or died); `open`
    // lets devices in.
    for line in stdin.lock().lines() {
        match line.as_deref().map(str::trim) {
            Ok("open") => {
                let _ = open_devices.send(true);
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let get = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
    tracing::info!(
        connections_refused = get(&stats.connections_refused),
        retained_refused = get(&stats.retained_refused),
        retained = get(&stats.retained_count),
        retained_bytes = get(&stats.retained_bytes),
        "embedded broker totals"
    );
    std::process::ExitCode::SUCCESS
}

/// A broker process outlives SIGINT and SIGTERM: the gateway stops it by
/// closing its stdin once the gateway's last acknowledgements are out.
fn ignore_stop_signals() {
    #[cfg(unix)]
    {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build();
        let Ok(runtime) = runtime else { return };
        std::thread::spawn(move || {
            runtime.block_on(async {
                use tokio::signal::unix::{signal, SignalKind};
                let (Ok(mut int), Ok(mut term)) = (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                ) else {
                    return;
                };
                loop {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                    tracing::debug!(
                        "embedded broker: stop signal ignored; it stops with the gateway"
                    );
                }
            })
        });
    }
}

/// The broker process's log filter: the gateway's (`RUST_LOG`, or its
/// default), with rumqttd's own lines held to warnings unless the filter
/// names rumqttd itself. At info rumqttd logs every connect, subscription
/// and disconnect, and `RUST_LOG=info` (the package's default) would fill
/// the journal with them.
pub fn log_filter(filter: &str) -> String {
    if filter.contains("rumqttd") {
        filter.to_owned()
    } else if filter.trim().is_empty() {
        "rumqttd=warn".to_owned()
    } else {
        format!("{filter},rumqttd=warn")
    }
}

/// `0.0.0.0:p` is where to listen, not where to connect.
fn connect_addr(listen: SocketAddr) -> SocketAddr {
    let mut addr = listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    addr
}

/// rumqttd on threads of this process: what the broker process runs, and
/// what the broker's own tests drive. It runs until the process ends
/// (rumqttd has no shutdown).
#[derive(Debug)]
pub struct InProcessBroker {
    internal: SocketAddr,
    stats: std::sync::Arc<rumqttd::BrokerStats>,
}

impl InProcessBroker {
    /// Starts rumqttd and waits until both listeners take connections. With
    /// a `devices_gate`, the device listener is bound but accepts only once
    /// the gate turns `true`.
    pub fn start(
        settings: &BrokerSettings,
        devices_gate: Option<tokio::sync::watch::Receiver<bool>>,
    ) -> Result<InProcessBroker, BrokerError> {
        // rumqttd reports a failed bind only in a log line from its own
        // thread, so find out first, while the error can still be returned.
        TcpListener::bind(settings.listen).map_err(|error| BrokerError::Bind {
            addr: settings.listen,
            error: error.to_string(),
        })?;
        if let Some(tls) = &settings.tls {
            TcpListener::bind(tls.listen).map_err(|error| BrokerError::Bind {
                addr: tls.listen,
                error: error.to_string(),
            })?;
        }
        let mut settings = settings.clone();
        if settings.internal.port() == 0 {
            settings.internal = TcpListener::bind(settings.internal)
                .and_then(|l| l.local_addr())
                .map_err(|error| BrokerError::Bind {
                    addr: settings.internal,
                    error: error.to_string(),
                })?;
        }
        // Read at each (re)start: a changed file takes effect when the broker
        // process starts again.
        let passwords = match &settings.passwords {
            Some(path) => Some(std::sync::Arc::new(
                crate::passwords::Passwords::load(path)
                    .map_err(|e| BrokerError::Start(e.to_string()))?,
            )),
            None => None,
        };
        let tls = match &settings.tls {
            Some(tls) => Some(tls_handshake(tls)?),
            None => None,
        };
        let mut broker = rumqttd::Broker::new(config(&settings, devices_gate, passwords, tls));
        let stats = broker.stats();
        let thread = std::thread::Builder::new()
            .name("rumqttd".into())
            .spawn(move || broker.start().map_err(|e| e.to_string()))
            .map_err(|e| BrokerError::Start(format!("cannot start a thread: {e}")))?;
        let deadline = Instant::now() + READY_WAIT;
        // The device listener is bound, so a connect completes even while
        // its gate holds accepting back.
        let mut addrs = vec![connect_addr(settings.listen), settings.internal];
        addrs.extend(settings.tls.as_ref().map(|tls| connect_addr(tls.listen)));
        loop {
            if thread.is_finished() {
                let reason = match thread.join() {
                    Ok(Err(e)) => e,
                    _ => "stopped unexpectedly".into(),
                };
                return Err(BrokerError::Start(reason));
            }
            let listening = addrs
                .iter()
                .all(|a| TcpStream::connect_timeout(a, Duration::from_millis(100)).is_ok());
            if listening {
                return Ok(InProcessBroker {
                    internal: settings.internal,
                    stats,
                });
            }
            if Instant::now() >= deadline {
                return Err(BrokerError::NotReady {
                    addr: settings.listen,
                    waited: READY_WAIT,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Where the gateway's own sessions connect.
    pub fn internal(&self) -> SocketAddr {
        self.internal
    }

    /// What the broker refused to hold: connections past a listener's cap,
    /// retained messages past the bounds.
    pub fn stats(&self) -> &rumqttd::BrokerStats {
        &self.stats
    }
}

/// The TLS listener's handshake: rustls with the listener's certificate and,
/// for mutual TLS, the device CA. A device refused here (a certificate from
/// another CA, or none) is logged with why, as a refused password is.
#[cfg(feature = "tls")]
fn tls_handshake(tls: &TlsListenerSettings) -> Result<rumqttd::Handshake, BrokerError> {
    let config = crate::tls::server_config(&tls.cert, &tls.key, tls.client_ca.as_deref())
        .map_err(|e| BrokerError::Start(format!("broker.tls_listener: {e}")))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    Ok(rumqttd::Handshake(Arc::new(
        move |stream: tokio::net::TcpStream| {
            let acceptor = acceptor.clone();
            Box::pin(async move {
                let peer = stream
                    .peer_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                match acceptor.accept(stream).await {
                    Ok(stream) => Ok(Box::new(stream) as Box<dyn rumqttd::Stream>),
                    // Connected and closed without a word: a port scan or a
                    // health check, not a device.
                    Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
                        tracing::debug!(peer, %error, "TLS connection closed before its handshake");
                        Err(error)
                    }
                    Err(error) => {
                        tracing::warn!(peer, %error, "device refused: TLS handshake failed");
                        Err(error)
                    }
                }
            })
        },
    )))
}

#[cfg(not(feature = "tls"))]
fn tls_handshake(_: &TlsListenerSettings) -> Result<rumqttd::Handshake, BrokerError> {
    Err(BrokerError::Start(
        "broker.tls_listener: this build has no TLS (feature `tls`)".into(),
    ))
}

/// Sized for a gateway, not a cloud broker: segments bound the memory each
/// topic's log may use, `settings` the rest.
pub fn config(
    settings: &BrokerSettings,
    devices_gate: Option<tokio::sync::watch::Receiver<bool>>,
    passwords: Option<std::sync::Arc<crate::passwords::Passwords>>,
    tls: Option<rumqttd::Handshake>,
) -> rumqttd::Config {
    let connections = |auth: Option<HashMap<String, String>>| rumqttd::ConnectionSettings {
        connection_timeout_ms: settings.connect_timeout_ms,
        max_payload_size: settings.max_payload_bytes,
        max_inflight_count: 100,
        auth,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = |name: &str, listen, auth, max_connections, accept_gate| rumqttd::ServerSettings {
        name: name.into(),
        listen,
        tls: None,
        // A pause after each accept would slow a reconnect storm's
        // legitimate reconnects; the per-listener cap bounds a flood.
        next_connection_delay_ms: 0,
        connections: connections(auth),
        max_connections,
        accept_gate,
        handshake: None,
    };
    let internal_auth = settings
        .internal_credentials
        .clone()
        .map(|(user, password)| HashMap::from([(user, password)]));
    let device_listener = |name: &str, listen, gate| {
        let mut listener = server(
            name,
            listen,
            None,
            Some(settings.max_device_connections),
            gate,
        );
        if let Some(passwords) = passwords.clone() {
            listener.set_auth_handler(move |_client_id, user: String, password: String| {
                let ok = passwords.check(&user, &password);
                async move { ok }
            });
        }
        listener
    };
    let mut servers = HashMap::from([(
        "devices".to_owned(),
        device_listener("devices", settings.listen, devices_gate.clone()),
    )]);
    // Each device listener has the device cap of its own, so the router has
    // room for both and the gateway's sessions.
    let mut max_connections = settings.max_connections;
    if let (Some(listener), Some(handshake)) = (&settings.tls, tls) {
        let mut tls = device_listener("devices-tls", listener.listen, devices_gate);
        tls.handshake = Some(handshake);
        servers.insert("devices-tls".to_owned(), tls);
        max_connections += settings.max_device_connections;
    }
    servers.insert(
        "gateway".to_owned(),
        server(
            "gateway",
            settings.internal,
            internal_auth,
            // Bounded (connections before CONNECT count), but it may use
            // every session the devices leave.
            Some(settings.max_connections),
            None,
        ),
    );
    rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections,
            max_outgoing_packet_count: 200,
            max_segment_size: settings.max_payload_bytes,
            max_segment_count: 4,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
            max_retained_count: Some(settings.max_retained_count),
            max_retained_bytes: Some(settings.max_retained_bytes),
        },
        v4: Some(servers),
        ..Default::default()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_listen_address_connects_over_loopback() {
        let addr: SocketAddr = "0.0.0.0:1883".parse().unwrap();
        assert_eq!(connect_addr(addr), "127.0.0.1:1883".parse().unwrap());
        let addr: SocketAddr = "192.0.2.1:1883".parse().unwrap();
        assert_eq!(connect_addr(addr), addr);
    }

    #[test]
    fn rumqttd_is_held_to_warnings_unless_asked_for() {
        assert_eq!(log_filter("info"), "info,rumqttd=warn");
        assert_eq!(log_filter(""), "rumqttd=warn");
        assert_eq!(log_filter("info,rumqttd=debug"), "info,rumqttd=debug");
    }

    #[test]
    fn the_broker_process_answers_ready_or_why_not() {
        let listen: SocketAddr = "0.0.0.0:1883".parse().unwrap();
        assert_eq!(parse_answer("ready 40123", listen).unwrap(), 40123);
        let error = parse_answer("bind-error Address in use", listen).unwrap_err();
        assert!(matches!(error, BrokerError::Bind { .. }), "{error}");
        assert!(error.to_string().contains("another broker"), "{error}");
        let error = parse_answer("", listen).unwrap_err().to_string();
        assert!(error.contains("exited before it was ready"), "{error}");
    }

    #[test]
    fn settings_travel_to_the_broker_process_as_one_line() {
        let settings = BrokerSettings::new("127.0.0.1:1883".parse().unwrap(), 3);
        let line = serde_json::to_string(&settings).unwrap();
        assert!(!line.contains('\n'));
        assert_eq!(
            serde_json::from_str::<BrokerSettings>(&line).unwrap(),
            settings
        );
        let password = |s: &BrokerSettings| s.internal_credentials.clone().unwrap().1;
        assert_eq!(password(&settings).len(), 32);
        assert_ne!(
            password(&settings),
            password(&BrokerSettings::new(settings.listen, 3))
        );
    }

    #[test]
    fn the_gateway_has_a_listener_of_its_own_with_a_password() {
        let settings = BrokerSettings::new("0.0.0.0:1883".parse().unwrap(), 10);
        let config = config(&settings, None, None, None);
        let servers = config.v4.unwrap();
        assert!(servers["devices"].connections.auth.is_none());
        let auth = servers["gateway"].connections.auth.clone().unwrap();
        assert_eq!(
            auth[INTERNAL_USER],
            settings.internal_credentials.unwrap().1
        );
        assert!(servers["gateway"].listen.ip().is_loopback());
        assert_eq!(config.router.max_connections, MAX_DEVICE_CONNECTIONS + 28);
        // Each listener has a cap of its own; retained state is bounded.
        assert_eq!(
            servers["devices"].max_connections,
            Some(MAX_DEVICE_CONNECTIONS)
        );
        assert_eq!(
            servers["gateway"].max_connections,
            Some(MAX_DEVICE_CONNECTIONS + 28)
        );
        assert_eq!(servers["devices"].connections.connection_timeout_ms, 5_000);
        assert_eq!(config.router.max_retained_count, Some(4_096));
        assert_eq!(config.router.max_retained_bytes, Some(32 << 20));
    }
}
