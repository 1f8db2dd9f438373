//! MQTT clients as the tests use them: a device that publishes and a
//! subscriber that collects, both plain rumqttc against a real broker.
//!
//! Each client owns a thread that drives its connection, reconnects after a
//! broker restart (re-subscribing, since its session is clean), and hands
//! what arrives to the test through a channel. Every wait is bounded.

use rumqttc::{Client, Connection, Event, Incoming, MqttOptions, Outgoing, QoS};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A client id no other client in this test run uses.
pub fn unique_id(what: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "e2e-{what}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Polls `done` every few milliseconds until it holds or `timeout` passes;
/// returns whether it held.
pub fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A message as a subscriber received it.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
}

impl Message {
    /// The payload as JSON; panics (failing the test) if it is not.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or_else(|e| {
            panic!(
                "payload on {} is not JSON ({e}): {}",
                self.topic,
                String::from_utf8_lossy(&self.payload)
            )
        })
    }
}

#[derive(Debug, Default)]
struct Counters {
    connacks: AtomicUsize,
    subacks: AtomicUsize,
    pubacks: AtomicUsize,
}

/// One MQTT 3.1.1 connection, QoS 1 both ways; a clean session unless made
/// with [`MqttClient::connect_persistent`].
pub struct MqttClient {
    client: Client,
    counters: Arc<Counters>,
    published: AtomicUsize,
    filters: Arc<Mutex<Vec<String>>>,
    messages: Receiver<Message>,
    stop: Arc<AtomicBool>,
    driver: Option<JoinHandle<()>>,
}

impl MqttClient {
    /// Connects to the broker on `port`; waits (bounded) for the CONNACK.
    #[track_caller]
    pub fn connect(port: u16, name: &str) -> MqttClient {
        Self::connect_session(port, name, &unique_id(name), true)
    }

    /// A persistent session under a fixed `client_id`: the broker queues
    /// QoS 1 messages for it while it is away (or while the broker itself
    /// was stopped, if it persists), and delivers them on the next connect
    /// with the same id. For subscribers that must not miss what arrives
    /// while they reconnect.
    #[track_caller]
    pub fn connect_persistent(port: u16, client_id: &str) -> MqttClient {
        Self::connect_session(port, client_id, client_id, false)
    }

    #[track_caller]
    fn connect_session(port: u16, name: &str, client_id: &str, clean: bool) -> MqttClient {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(30));
        // Room for the 1 MB payload test; rumqttc's default is 10 KiB.
        options.set_max_packet_size(4 << 20, 4 << 20);
        options.set_clean_session(clean);
        let (client, connection) = Client::new(options, 20_000);
        let counters = Arc::new(Counters::default());
        let filters = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, messages) = mpsc::channel();
        let driver = std::thread::Builder::new()
            .name(format!("mqtt-{name}"))
            .spawn({
                let (client, counters, filters, stop) = (
                    client.clone(),
                    counters.clone(),
                    filters.clone(),
                    stop.clone(),
                );
                move || drive(connection, client, counters, filters, stop, tx)
            })
            .expect("spawn the client thread");
        let this = MqttClient {
            client,
            counters,
            published: AtomicUsize::new(0),
            filters,
            messages,
            stop,
            driver: Some(driver),
        };
        assert!(
            wait_until(Duration::from_secs(10), || this.connacks() > 0),
            "test client {name} could not connect to the broker on port {port}"
        );
        this
    }

    /// How many times this client has connected (more than 1 after a broker restart).
    pub fn connacks(&self) -> usize {
        self.counters.connacks.load(Ordering::SeqCst)
    }

    /// Subscribes at QoS 1 and waits for the SUBACK; the subscription is
    /// renewed whenever the client reconnects.
    #[track_caller]
    pub fn subscribe(&self, filter: &str) {
        let before = self.counters.subacks.load(Ordering::SeqCst);
        self.filters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(filter.to_owned());
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .expect("queue the subscription");
        assert!(
            wait_until(Duration::from_secs(10), || self
                .counters
                .subacks
                .load(Ordering::SeqCst)
                > before),
            "no SUBACK for {filter}"
        );
    }

    /// Publishes at QoS 1 (the broker acknowledges it; see [`Self::wait_acked`]).
    pub fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.published.fetch_add(1, Ordering::SeqCst);
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .expect("queue the publish");
    }

    /// Publishes a retained message at QoS 1.
    pub fn publish_retained(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.published.fetch_add(1, Ordering::SeqCst);
        self.client
            .publish(topic, QoS::AtLeastOnce, true, payload.into())
            .expect("queue the publish");
    }

    /// Waits until the broker has acknowledged every publish so far.
    #[track_caller]
    pub fn wait_acked(&self, timeout: Duration) {
        let published = self.published.load(Ordering::SeqCst);
        assert!(
            wait_until(timeout, || self.counters.pubacks.load(Ordering::SeqCst)
                >= published),
            "the broker acknowledged {} of {published} publishes within {timeout:?}",
            self.counters.pubacks.load(Ordering::SeqCst)
        );
    }

    /// The next message, or `None` after `timeout`.
    pub fn next_message(&self, timeout: Duration) -> Option<Message> {
        self.messages.recv_timeout(timeout).ok()
    }

    /// Every message that arrives within `window` (for asserting that
    /// nothing more comes).
    pub fn drain_for(&self, window: Duration) -> Vec<Message> {
        let deadline = Instant::now() + window;
        let mut out = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.next_message(left) {
                Some(message) => out.push(message),
                None => break,
            }
        }
        out
    }

    /// Hands each message to `keep` until it returns `true` (done); gives
    /// up when nothing arrives for `idle`, or after ten minutes in all.
    /// Returns whether it finished.
    ///
    /// A stall, not a slow machine, is what fails: thousands of messages
    /// through a debug build on a busy CI runner take a while, but never
    /// `idle` without a single one.
    pub fn collect_until(&self, idle: Duration, mut keep: impl FnMut(Message) -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(600);
        while Instant::now() < deadline {
            match self.next_message(idle) {
                Some(message) => {
                    if keep(message) {
                        return true;
                    }
                }
                None => return false,
            }
        }
        false
    }
}

impl std::fmt::Debug for MqttClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttClient")
            .field("counters", &self.counters)
            .field("published", &self.published)
            .finish_non_exhaustive()
    }
}

impl Drop for MqttClient {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.client.try_disconnect();
        if let Some(driver) = self.driver.take() {
            // The thread sees `stop` within one poll; do not hang a failing test on it.
            let deadline = Instant::now() + Duration::from_secs(2);
            while !driver.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn drive(
    mut connection: Connection,
    client: Client,
    counters: Arc<Counters>,
    filters: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    tx: mpsc::Sender<Message>,
) {
    while !stop.load(Ordering::SeqCst) {
        // `recv`, not `recv_timeout`: cancelling a poll mid-write could tear
        // a large packet. `stop` is seen at the next event; `Drop` makes one.
        match connection.recv() {
            Ok(Ok(Event::Incoming(Incoming::ConnAck(_)))) => {
                // A clean session forgets subscriptions with the connection.
                let filters = filters.lock().unwrap_or_else(PoisonError::into_inner);
                for filter in filters.iter() {
                    let _ = client.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                }
                counters.connacks.fetch_add(1, Ordering::SeqCst);
            }
            Ok(Ok(Event::Incoming(Incoming::SubAck(_)))) => {
                counters.subacks.fetch_add(1, Ordering::SeqCst);
            }
            Ok(Ok(Event::Incoming(Incoming::PubAck(_)))) => {
                counters.pubacks.fetch_add(1, Ordering::SeqCst);
            }
            Ok(Ok(Event::Incoming(Incoming::Publish(publish)))) => {
                let _ = tx.send(Message {
                    topic: publish.topic,
                    payload: publish.payload.to_vec(),
                });
            }
            Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) => return,
            Ok(Ok(_)) => {}
            // The broker went away: back off a little, then the next poll reconnects.
            Ok(Err(_)) => std::thread::sleep(Duration::from_millis(100)),
            Err(rumqttc::RecvError) => return,
        }
    }
}
