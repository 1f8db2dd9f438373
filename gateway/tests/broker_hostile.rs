//! The embedded broker (rumqttd, vendor/rumqttd) against hostile and unlucky
//! peers: malformed, truncated and out-of-order packets, reconnect storms
//! with one client id, connection floods that never send CONNECT, retained
//! messages past the bounds, and a fuzz of the packet parsers.
//!
//! Each test starts its own broker in this process, with the gateway's
//! config (`wasmgate::broker::config` through `InProcessBroker::start`, as the
//! broker process runs it),
//! speaks raw MQTT 3.1.1 over TCP, and ends by checking that a well-behaved
//! client can still connect, subscribe, publish at QoS 1 and receive it
//! ([`assert_serving`]), and that no rumqttd thread panicked: in the release
//! build (`panic = "abort"`) any such panic is a gateway crash. Tests run one
//! at a time (a lock), so that a panic is the running test's.
//! vendor/rumqttd/UPSTREAM.md says which test reproduces which bug.

#![cfg(feature = "embedded-broker")]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

use wasmgate::broker::{BrokerSettings, InProcessBroker};

// ---------------------------------------------------------------- harness

/// Panics seen on any thread since the running test started.
static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// One test at a time, with the panic record cleared.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current().name().unwrap_or("?").to_owned();
            lock(&PANICS).push(format!("thread {thread}: {info}"));
            default(info);
        }));
    });
    let guard = lock(&SERIAL);
    lock(&PANICS).clear();
    guard
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[track_caller]
fn assert_no_panic() {
    let panics = lock(&PANICS);
    assert!(panics.is_empty(), "rumqttd panicked: {panics:#?}");
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// A broker with `settings`, devices on `devices`.
struct TestBroker {
    devices: SocketAddr,
    broker: InProcessBroker,
}

/// rumqttd as the broker process runs it, on threads of this test.
fn start(settings: BrokerSettings) -> TestBroker {
    let devices = free_addr();
    let settings = BrokerSettings {
        listen: devices,
        ..settings
    };
    let broker = InProcessBroker::start(&settings, None).expect("broker starts");
    TestBroker { devices, broker }
}

// ---------------------------------------------------------------- raw MQTT 3.1.1

fn frame(byte1: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![byte1];
    push_varint(&mut out, body.len());
    out.extend_from_slice(body);
    out
}

/// MQTT's variable byte integer (the remaining length).
fn push_varint(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            break;
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// CONNECT, keep alive 30 s; a will at QoS 1 if given.
fn connect(id: &str, clean: bool, will: Option<(&str, &[u8])>) -> Vec<u8> {
    let mut body = Vec::new();
    put_str(&mut body, b"MQTT");
    body.push(4);
    let mut flags = if clean { 0x02 } else { 0 };
    if will.is_some() {
        flags |= 0x04 | (1 << 3);
    }
    body.push(flags);
    body.extend_from_slice(&30u16.to_be_bytes());
    put_str(&mut body, id.as_bytes());
    if let Some((topic, message)) = will {
        put_str(&mut body, topic.as_bytes());
        put_str(&mut body, message);
    }
    frame(0x10, &body)
}

fn subscribe(pkid: u16, filter: &[u8], qos: u8) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    put_str(&mut body, filter);
    body.push(qos);
    frame(0x82, &body)
}

fn publish(topic: &[u8], payload: &[u8], qos: u8, pkid: u16, retain: bool) -> Vec<u8> {
    let mut body = Vec::new();
    put_str(&mut body, topic);
    if qos > 0 {
        body.extend_from_slice(&pkid.to_be_bytes());
    }
    body.extend_from_slice(payload);
    frame(0x30 | (qos << 1) | u8::from(retain), &body)
}

fn puback(pkid: u16) -> Vec<u8> {
    let [hi, lo] = pkid.to_be_bytes();
    vec![0x40, 2, hi, lo]
}

const DISCONNECT: [u8; 2] = [0xE0, 0];

#[derive(Debug, PartialEq)]
enum End {
    Closed,
    Timeout,
}

/// A received PUBLISH.
#[derive(Debug)]
struct Message {
    topic: Vec<u8>,
    payload: Vec<u8>,
    pkid: u16,
    retain: bool,
}

fn parse_publish(byte1: u8, body: &[u8]) -> Message {
    let qos = (byte1 >> 1) & 3;
    let len = usize::from(u16::from_be_bytes([body[0], body[1]]));
    let topic = body[2..2 + len].to_vec();
    let (pkid, rest) = if qos > 0 {
        let at = 2 + len;
        (
            u16::from_be_bytes([body[at], body[at + 1]]),
            &body[at + 2..],
        )
    } else {
        (0, &body[2 + len..])
    };
    Message {
        topic,
        payload: rest.to_vec(),
        pkid,
        retain: byte1 & 1 == 1,
    }
}

struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    fn open(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        stream.set_nodelay(true).ok();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    /// A client whose receive buffer is a few KB: the broker's writes to it
    /// block soon when it does not read.
    fn open_small_window(addr: SocketAddr) -> Client {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        socket
            .connect_timeout(&addr.into(), Duration::from_secs(2))
            .expect("connect");
        Client {
            stream: socket.into(),
            buf: Vec::new(),
        }
    }

    /// CONNECT and its CONNACK (accepted).
    #[track_caller]
    fn connect(addr: SocketAddr, id: &str, clean: bool) -> Client {
        let mut client = Client::open(addr);
        client.send(&connect(id, clean, None));
        client.expect_connack(id);
        client
    }

    #[track_caller]
    fn expect_connack(&mut self, id: &str) {
        match self.read_packet(Duration::from_secs(5)) {
            Ok((0x20, body)) => assert_eq!(body[1], 0, "{id}: CONNACK refused: {body:?}"),
            other => panic!("{id}: no CONNACK: {other:?}"),
        }
    }

    /// Sends, ignoring errors: the broker may have closed the connection,
    /// which is what some tests expect of it.
    fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }

    /// The next packet: (first byte, body).
    fn read_packet(&mut self, wait: Duration) -> Result<(u8, Vec<u8>), End> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some((byte1, body, used)) = split_packet(&self.buf) {
                self.buf.drain(..used);
                return Ok((byte1, body));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(End::Timeout);
            }
            self.stream.set_read_timeout(Some(left)).ok();
            let mut chunk = [0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(End::Closed),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(End::Timeout)
                }
                Err(_) => return Err(End::Closed),
            }
        }
    }

    /// Whether the broker closes the connection within `wait` (packets it
    /// sends before are skipped).
    fn closed_within(&mut self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_packet(left) {
                Ok(_) => continue,
                Err(End::Closed) => return true,
                Err(End::Timeout) => return false,
            }
        }
    }

    /// Every PUBLISH that arrives within `wait`, acknowledged.
    fn messages(&mut self, wait: Duration) -> Vec<Message> {
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        while let Ok((byte1, body)) =
            self.read_packet(deadline.saturating_duration_since(Instant::now()))
        {
            if byte1 >> 4 == 3 {
                let message = parse_publish(byte1, &body);
                if message.pkid != 0 {
                    self.send(&puback(message.pkid));
                }
                out.push(message);
            }
        }
        out
    }

    /// Ends the connection with a TCP reset, as a peer that vanished does
    /// (power loss, Wi-Fi gone, a NAT dropping state).
    fn reset(self) {
        let socket = socket2::SockRef::from(&self.stream);
        socket.set_linger(Some(Duration::ZERO)).ok();
        drop(self);
    }
}

fn split_packet(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    let (&byte1, rest) = buf.split_first()?;
    let (mut len, mut shift) = (0usize, 0);
    for (i, &byte) in rest.iter().enumerate().take(4) {
        len |= usize::from(byte & 0x7F) << shift;
        if byte & 0x80 == 0 {
            let start = 1 + i + 1;
            let end = start + len;
            return (buf.len() >= end).then(|| (byte1, buf[start..end].to_vec(), end));
        }
        shift += 7;
    }
    None
}

/// A client that subscribes to a topic of its own at QoS 1, publishes to it
/// at QoS 1, and gets both the PUBACK and its message back: the broker is
/// alive and serving on `addr`.
#[track_caller]
fn assert_serving(addr: SocketAddr) {
    static PROBES: AtomicUsize = AtomicUsize::new(0);
    let n = PROBES.fetch_add(1, Ordering::Relaxed);
    let id = format!("probe-{n}");
    let topic = format!("probe/{n}");
    let mut client = Client::connect(addr, &id, true);
    client.send(&subscribe(1, topic.as_bytes(), 1));
    match client.read_packet(Duration::from_secs(5)) {
        Ok((0x90, body)) => assert_eq!(body, [0, 1, 1], "{id}: SUBACK"),
        other => panic!("{id}: no SUBACK: {other:?}"),
    }
    client.send(&publish(topic.as_bytes(), b"alive", 1, 7, false));
    let (mut acked, mut received) = (false, false);
    while !(acked && received) {
        match client.read_packet(Duration::from_secs(5)) {
            Ok((0x40, body)) => {
                assert_eq!(body, [0, 7], "{id}: PUBACK");
                acked = true;
            }
            Ok((byte1, body)) if byte1 >> 4 == 3 => {
                let message = parse_publish(byte1, &body);
                assert_eq!(message.topic, topic.as_bytes());
                assert_eq!(message.payload, b"alive");
                client.send(&puback(message.pkid));
                received = true;
            }
            other => panic!("{id}: expected PUBACK and PUBLISH, got {other:?}"),
        }
    }
    client.send(&DISCONNECT);
}

/// Waits until `done` holds, or panics after `wait` with `what`.
#[track_caller]
fn wait_for(wait: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + wait;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------- reconnects

/// UPSTREAM.md, bug 1: a device turned away at the router's connection limit
/// retries with its own client id. Its first connection ended before its
/// link started and left its will sender behind, receiver dropped; the retry
/// found it and `try_send(..).unwrap()` panicked, holding the will map's lock,
/// so every later CONNECT on the listener panicked too.
#[test]
fn turned_away_at_the_connection_limit_then_retrying() {
    let _serial = serial();
    let broker = start(BrokerSettings {
        max_connections: 2,
        ..BrokerSettings::default()
    });
    let addr = broker.devices;
    let first = Client::connect(addr, "filler-1", true);
    let _second = Client::connect(addr, "filler-2", true);
    for attempt in 0..3 {
        let mut late = Client::open(addr);
        late.send(&connect("late", true, Some(("wills/late", b"gone"))));
        assert!(
            late.closed_within(Duration::from_secs(5)),
            "attempt {attempt}: a connection past the limit is closed"
        );
    }
    drop(first);
    std::thread::sleep(Duration::from_millis(200));
    assert_serving(addr);
    assert_no_panic();
}

/// UPSTREAM.md, bugs 1 and 2: hundreds of connect/reset cycles with one
/// client id, as a device on a flaky link makes; with clean and persistent
/// sessions, with and without a will, reset before and after the CONNACK.
#[test]
fn reconnect_storm_with_one_client_id() {
    let _serial = serial();
    let broker = start(BrokerSettings::default());
    let addr = broker.devices;
    let will: &[u8] = b"offline";
    for (clean, with_will) in [(true, false), (true, true), (false, false), (false, true)] {
        let id = format!("flaky-{clean}-{with_will}");
        let will = with_will.then_some(("wills/flaky", will));
        for cycle in 0..100 {
            let mut client = Client::open(addr);
            client.send(&connect(&id, clean, will));
            if cycle % 2 == 1 {
                // The CONNACK arrived: the session was registered.
                let _ = client.read_packet(Duration::from_secs(2));
            }
            client.reset();
        }
        // The device is back for good, and the broker knows it.
        let mut client = Client::connect(addr, &id, clean);
        client.send(&DISCONNECT);
    }
    assert_serving(addr);
    assert_no_panic();
}

/// UPSTREAM.md, bug 2: a peer that resets its connection right after CONNECT
/// makes the CONNACK write fail after the router registered the session;
/// nothing told the router, so the session held a slot of `max_connections`
/// for good. A few hundred such peers (distinct client ids) filled the broker.
#[test]
fn resets_right_after_connect_do_not_leak_sessions() {
    let _serial = serial();
    let broker = start(BrokerSettings {
        max_connections: 4,
        ..BrokerSettings::default()
    });
    let addr = broker.devices;
    for cycle in 0..300 {
        let mut client = Client::open(addr);
        client.send(&connect(&format!("vanishing-{cycle}"), true, None));
        client.reset();
    }
    std::thread::sleep(Duration::from_millis(300));
    let sessions: Vec<Client> = (0..4)
        .map(|i| Client::connect(addr, &format!("after-{i}"), true))
        .collect();
    drop(sessions);
    std::thread::sleep(Duration::from_millis(200));
    assert_serving(addr);
    assert_no_panic();
}

/// UPSTREAM.md, bug 3: a link writes a batch that ended in Unschedule, then
/// sends Ready with its connection id; by then the router had disconnected
/// that id (its client id reconnected, and that session ended too), so
/// `reschedule` unwrapped a vacant tracker and the router thread died.
#[test]
fn stale_ready_from_a_taken_over_session() {
    let _serial = serial();
    let broker = start(BrokerSettings::default());
    let addr = broker.devices;

    // A subscriber on a slow link that does not read: the broker's write of a
    // full batch to it blocks.
    let mut slow = Client::open_small_window(addr);
    slow.send(&connect("slow", true, None));
    slow.expect_connack("slow");
    slow.send(&subscribe(1, b"flood", 0));
    let payload = vec![0x5A; 8 * 1024];
    let mut publisher = Client::connect(addr, "flooder", true);
    for _ in 0..1_200 {
        publisher.send(&publish(b"flood", &payload, 0, 0, false));
    }
    std::thread::sleep(Duration::from_millis(500));

    // The device comes back on another link and leaves: the old id is vacant.
    let mut again = Client::connect(addr, "slow", true);
    again.send(&DISCONNECT);
    assert!(again.closed_within(Duration::from_secs(5)));
    std::thread::sleep(Duration::from_millis(200));

    // The old link's write completes; it sends Ready for the vacant id.
    slow.stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .ok();
    let mut chunk = vec![0u8; 256 * 1024];
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match slow.stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(_) => break,
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_serving(addr);
    assert_no_panic();
}

/// UPSTREAM.md, bug 4: a persistent session with a shared subscription as the
/// group's only member disconnects with a QoS 1 message unacknowledged: the
/// router removed the empty group, then `expect("group must exists")`.
#[test]
fn persistent_shared_subscriber_leaves_with_a_message_unacked() {
    let _serial = serial();
    let broker = start(BrokerSettings::default());
    let addr = broker.devices;
    let mut worker = Client::connect(addr, "worker", false);
    worker.send(&subscribe(1, b"$share/workers/jobs", 1));
    assert!(matches!(
        worker.read_packet(Duration::from_secs(5)),
        Ok((0x90, _))
    ));
    let mut publisher = Client::connect(addr, "dispatcher", true);
    publisher.send(&publish(b"jobs", b"job-1", 1, 1, false));
    match worker.read_packet(Duration::from_secs(5)) {
        Ok((byte1, _)) if byte1 >> 4 == 3 => {}
        other => panic!("the worker gets the job: {other:?}"),
    }
    // No PUBACK: the worker goes away with the job in flight.
    worker.stream.shutdown(Shutdown::Both).ok();
    drop(worker);
    std::thread::sleep(Duration::from_millis(300));
    assert_serving(addr);
    assert_no_panic();
}

/// UPSTREAM.md, bug 5: `protocol::matches` sliced `topic[..1]`, which panics
/// on a topic that starts with a multi-byte character, in the router thread,
/// for the first PUBLISH to such a topic once any subscription exists.
#[test]
fn topic_starting_with_a_multibyte_character() {
    let _serial = serial();
    let broker = start(BrokerSettings::default());
    let addr = broker.devices;
    let mut subscriber = Client::connect(addr, "reader", true);
    subscriber.send(&subscribe(1, "é/#".as_bytes(), 1));
    assert!(matches!(
        subscriber.read_packet(Duration::from_secs(5)),
        Ok((0x90, _))
    ));
    let mut publisher = Client::connect(addr, "writer", true);
    publisher.send(&publish("é/café".as_bytes(), b"1", 1, 1, true));
    publisher.send(&publish("日本/温度".as_bytes(), b"2", 1, 2, false));
    let got = subscriber.messages(Duration::from_millis(500));
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].topic, "é/café".as_bytes());
    assert_serving(addr);
    assert_no_panic();
}

// ---------------------------------------------------------------- malformed

/// One connection per case: each sends its bytes (after a valid CONNECT when
/// `connected`), and the broker closes the connection or ignores the packet;
/// after each, the broker still serves.
#[test]
fn malformed_truncated_and_out_of_order_packets() {
    let _serial = serial();
    let broker = start(BrokerSettings {
        connect_timeout_ms: 1_000,
        ..BrokerSettings::default()
    });
    let addr = broker.devices;

    let mut five_byte_varint = vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01];
    five_byte_varint.extend_from_slice(&[0; 8]);
    let mut bad_utf8_id = Vec::new();
    put_str(&mut bad_utf8_id, b"MQTT");
    bad_utf8_id.extend_from_slice(&[4, 2, 0, 30]);
    put_str(&mut bad_utf8_id, &[0xC3, 0x28]);
    let mut will_flags_without_will = Vec::new();
    put_str(&mut will_flags_without_will, b"MQTT");
    will_flags_without_will.extend_from_slice(&[4, 0x02 | 0x18, 0, 30]);
    put_str(&mut will_flags_without_will, b"will-flags");
    let mut will_qos3 = Vec::new();
    put_str(&mut will_qos3, b"MQTT");
    will_qos3.extend_from_slice(&[4, 0x02 | 0x04 | 0x18, 0, 30]);
    put_str(&mut will_qos3, b"will-qos3");
    put_str(&mut will_qos3, b"w");
    put_str(&mut will_qos3, b"m");
    let mut keepalive_zero = Vec::new();
    put_str(&mut keepalive_zero, b"MQTT");
    keepalive_zero.extend_from_slice(&[4, 2, 0, 0]);
    put_str(&mut keepalive_zero, b"no-keepalive");
    let mut level3 = Vec::new();
    put_str(&mut level3, b"MQIsdp");
    level3.extend_from_slice(&[3, 2, 0, 30]);
    put_str(&mut level3, b"old");
    let mut level5 = Vec::new();
    put_str(&mut level5, b"MQTT");
    level5.extend_from_slice(&[5, 2, 0, 30, 0]);
    put_str(&mut level5, b"v5");
    let mut empty_id_persistent = Vec::new();
    put_str(&mut empty_id_persistent, b"MQTT");
    empty_id_persistent.extend_from_slice(&[4, 0, 0, 30]);
    put_str(&mut empty_id_persistent, b"");
    let huge_string = {
        let mut body = 1u16.to_be_bytes().to_vec();
        body.extend_from_slice(&[0xFF, 0xFF, b'a', 0]);
        frame(0x82, &body)
    };
    let pings: Vec<u8> = [0xC0u8, 0].repeat(1_000);

    let cases: Vec<(&str, bool, Vec<u8>)> = vec![
        ("SUBSCRIBE before CONNECT", false, subscribe(1, b"a/#", 1)),
        (
            "PUBLISH before CONNECT",
            false,
            publish(b"a", b"x", 1, 1, false),
        ),
        ("PINGREQ before CONNECT", false, vec![0xC0, 0]),
        ("a second CONNECT", true, connect("second", true, None)),
        ("PUBACK for an unknown id", true, puback(999)),
        ("PUBREC for an unknown id", true, vec![0x50, 2, 3, 231]),
        ("PUBREL for an unknown id", true, vec![0x62, 2, 3, 231]),
        ("PUBCOMP for an unknown id", true, vec![0x70, 2, 3, 231]),
        (
            "PUBACK with remaining length 3",
            true,
            vec![0x40, 3, 0, 1, 0],
        ),
        ("PUBACK with remaining length 1", true, vec![0x40, 1, 0]),
        ("SUBSCRIBE string past its packet", true, huge_string),
        ("SUBSCRIBE without filters", true, vec![0x82, 2, 0, 1]),
        ("UNSUBSCRIBE without filters", true, vec![0xA2, 2, 0, 1]),
        ("UNSUBSCRIBE remaining length 1", true, vec![0xA2, 1, 0]),
        (
            "remaining length 268,435,455",
            true,
            vec![0x30, 0xFF, 0xFF, 0xFF, 0x7F],
        ),
        ("five-byte remaining length", true, five_byte_varint),
        (
            "truncated PUBLISH, then silence",
            true,
            vec![0x32, 100, 0, 5, b'a'],
        ),
        (
            "zero-length topic, QoS 0",
            true,
            publish(b"", b"x", 0, 0, false),
        ),
        (
            "zero-length topic, QoS 1, retained",
            true,
            publish(b"", b"x", 1, 1, true),
        ),
        (
            "invalid UTF-8 topic",
            true,
            publish(&[0xC3, 0x28], b"x", 1, 1, false),
        ),
        (
            "invalid UTF-8 filter",
            true,
            subscribe(1, &[0xFF, b'/', b'#'], 0),
        ),
        ("invalid UTF-8 client id", false, frame(0x10, &bad_utf8_id)),
        ("PUBLISH at QoS 3", true, vec![0x36, 5, 0, 1, b'a', 0, 1]),
        ("SUBSCRIBE at QoS 3", true, subscribe(1, b"a", 3)),
        (
            "PUBLISH QoS 1 with packet id 0",
            true,
            publish(b"a", b"x", 1, 0, false),
        ),
        (
            "PUBLISH to a wildcard topic",
            true,
            publish(b"a/+/#", b"x", 1, 1, true),
        ),
        ("SUBSCRIBE to $SYS", true, subscribe(1, b"$SYS/#", 0)),
        (
            "SUBSCRIBE to $share without a filter",
            true,
            subscribe(1, b"$share/g", 1),
        ),
        ("reserved packet type 0", true, vec![0x00, 2, 0, 0]),
        ("reserved packet type 15", true, vec![0xF0, 2, 0, 0]),
        (
            "reserved packet type 0, before CONNECT",
            false,
            vec![0x00, 0],
        ),
        ("CONNACK from a client", true, vec![0x20, 2, 0, 0]),
        ("SUBACK from a client", true, vec![0x90, 3, 0, 1, 0]),
        ("UNSUBACK from a client", true, vec![0xB0, 2, 0, 1]),
        ("PINGRESP from a client", true, vec![0xD0, 0]),
        ("DISCONNECT with a body", true, vec![0xE0, 1, 0]),
        ("a thousand PINGREQs", true, pings),
        (
            "will flags without a will",
            false,
            frame(0x10, &will_flags_without_will),
        ),
        ("will at QoS 3", false, frame(0x10, &will_qos3)),
        ("keep alive 0", false, frame(0x10, &keepalive_zero)),
        ("protocol level 3", false, frame(0x10, &level3)),
        (
            "protocol level 5 on the 3.1.1 port",
            false,
            frame(0x10, &level5),
        ),
        (
            "empty client id, persistent",
            false,
            frame(0x10, &empty_id_persistent),
        ),
        (
            "client id with wildcards",
            false,
            connect("dev/+/#", true, None),
        ),
        (
            "truncated CONNECT, then reset",
            false,
            connect("cut", true, None)[..9].to_vec(),
        ),
        (
            "garbage",
            false,
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
    ];
    for (n, (name, connected, bytes)) in cases.into_iter().enumerate() {
        let mut client = if connected {
            Client::connect(addr, &format!("case-{n}"), true)
        } else {
            Client::open(addr)
        };
        client.send(&bytes);
        // Closed, or ignored: either way within the connect timeout.
        let _ = client.closed_within(Duration::from_millis(300));
        client.reset();
        assert_no_panic();
        assert_serving(addr);
        assert_no_panic();
        let _ = name;
    }
}

// ---------------------------------------------------------------- retained

fn publish_acked(client: &mut Client, topic: &str, payload: &[u8], retain: bool, pkid: u16) {
    client.send(&publish(topic.as_bytes(), payload, 1, pkid, retain));
    loop {
        match client.read_packet(Duration::from_secs(5)) {
            Ok((0x40, body)) if body == pkid.to_be_bytes() => return,
            Ok(_) => continue,
            other => panic!("PUBACK for {topic}: {other:?}"),
        }
    }
}

/// The retained messages a new subscriber to `filter` gets, by topic.
fn retained_for(addr: SocketAddr, filter: &str) -> Vec<String> {
    static READERS: AtomicUsize = AtomicUsize::new(0);
    let id = format!(
        "retained-reader-{}",
        READERS.fetch_add(1, Ordering::Relaxed)
    );
    let mut client = Client::connect(addr, &id, true);
    client.send(&subscribe(1, filter.as_bytes(), 1));
    let mut topics: Vec<String> = client
        .messages(Duration::from_millis(400))
        .into_iter()
        .inspect(|m| assert!(m.retain, "a retained message has the retain flag"))
        .map(|m| String::from_utf8(m.topic).unwrap())
        .collect();
    topics.sort();
    client.send(&DISCONNECT);
    topics
}

/// UPSTREAM.md, bound 1: retained messages are bounded in count and bytes;
/// one past the bound is delivered but not retained, and counted; an empty
/// payload still clears a retained message and frees its room.
#[test]
fn retained_messages_stay_within_their_bounds() {
    let _serial = serial();
    let broker = start(BrokerSettings {
        max_retained_count: 5,
        max_retained_bytes: 8_000,
        ..BrokerSettings::default()
    });
    let addr = broker.devices;
    let stats = broker.broker.stats();
    let count = || stats.retained_count.load(Ordering::Relaxed);
    let bytes = || stats.retained_bytes.load(Ordering::Relaxed);
    let refused = || stats.retained_refused.load(Ordering::Relaxed);

    let mut live = Client::connect(addr, "live", true);
    live.send(&subscribe(1, b"r/#", 1));
    assert!(matches!(
        live.read_packet(Duration::from_secs(5)),
        Ok((0x90, _))
    ));
    let mut device = Client::connect(addr, "device", true);
    let kb = vec![b'k'; 1_000];

    for i in 0..5 {
        publish_acked(&mut device, &format!("r/{i}"), &kb, true, 1 + i);
    }
    assert_eq!((count(), bytes(), refused()), (5, 5 * 1_003, 0));

    // Past the count: delivered, not retained.
    publish_acked(&mut device, "r/5", &kb, true, 10);
    assert_eq!((count(), refused()), (5, 1));
    // Clearing frees room.
    publish_acked(&mut device, "r/0", b"", true, 11);
    assert_eq!((count(), bytes()), (4, 4 * 1_003));
    // Past the bytes: 4,012 + 6,005 > 8,000.
    publish_acked(&mut device, "r/big", &[b'b'; 6_000], true, 12);
    assert_eq!((count(), refused()), (4, 2));
    publish_acked(&mut device, "r/5", &kb, true, 13);
    assert_eq!((count(), bytes(), refused()), (5, 5 * 1_003, 2));
    // A replacement past the bound drops the old value too: 5,015 - 1,003 +
    // 4,003 > 8,000, and r/1's old value is not the last one any more.
    publish_acked(&mut device, "r/1", &[b'n'; 4_000], true, 14);
    assert_eq!((count(), bytes(), refused()), (4, 4 * 1_003, 3));

    let delivered: Vec<String> = live
        .messages(Duration::from_millis(400))
        .into_iter()
        .map(|m| String::from_utf8(m.topic).unwrap())
        .collect();
    assert_eq!(
        delivered.len(),
        10,
        "every publish reaches the live subscriber: {delivered:?}"
    );
    assert_eq!(retained_for(addr, "r/#"), ["r/2", "r/3", "r/4", "r/5"]);
    assert_serving(addr);
    assert_no_panic();
}

/// The report's case with the gateway's defaults: large retained messages on
/// as many topics (each 1.9 MB) stop being retained at `max_retained_bytes`.
#[test]
fn large_retained_messages_stop_at_the_default_bound() {
    let _serial = serial();
    let settings = BrokerSettings::default();
    let broker = start(settings.clone());
    let addr = broker.devices;
    let stats = broker.broker.stats();
    let mut device = Client::connect(addr, "camera", true);
    let still = vec![0xA5u8; 1_900_000];
    for i in 0..40 {
        publish_acked(&mut device, &format!("cams/{i}/still"), &still, true, 1 + i);
    }
    let bytes = stats.retained_bytes.load(Ordering::Relaxed) as usize;
    let count = stats.retained_count.load(Ordering::Relaxed);
    let refused = stats.retained_refused.load(Ordering::Relaxed);
    assert!(bytes <= settings.max_retained_bytes, "{bytes}");
    assert_eq!(count, (settings.max_retained_bytes / 1_900_013) as u64);
    assert_eq!(count + refused, 40);
    assert_serving(addr);
    assert_no_panic();
}

// ---------------------------------------------------------------- connections

/// UPSTREAM.md, bound 2: the device listener holds at most
/// `max_device_connections`, CONNECT or not; past it a connection is
/// accepted and closed at once and counted; the local listener still has
/// room for the gateway's own sessions.
#[test]
fn the_device_listener_cannot_take_every_session() {
    let _serial = serial();
    let local = free_addr();
    let broker = start(BrokerSettings {
        max_connections: 8,
        max_device_connections: 4,
        internal: local,
        ..BrokerSettings::default()
    });
    assert_eq!(
        broker.broker.internal(),
        local,
        "the gateway's sessions use the local listener"
    );
    let stats = broker.broker.stats();
    let devices = broker.devices;

    // Two silent connections and two sessions fill the device listener.
    let silent: Vec<Client> = (0..2).map(|_| Client::open(devices)).collect();
    let sessions: Vec<Client> = (0..2)
        .map(|i| Client::connect(devices, &format!("device-{i}"), true))
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let mut refused = Client::open(devices);
    refused.send(&connect("device-past-cap", true, None));
    let started = Instant::now();
    assert!(refused.closed_within(Duration::from_secs(2)));
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "closed at once"
    );
    assert_eq!(stats.connections_refused.load(Ordering::Relaxed), 1);

    // The gateway's own sessions: the rest of the router's eight.
    let mut own: Vec<Client> = (0..5)
        .map(|i| Client::connect(local, &format!("gateway-{i}"), true))
        .collect();
    assert_serving(local);
    own.pop();

    // A slot of the device listener frees when a connection closes.
    drop(silent);
    std::thread::sleep(Duration::from_millis(200));
    assert_serving(devices);
    drop(sessions);
    assert_no_panic();
}

/// `connection_timeout_ms` bounds the whole wait for CONNECT: a silent
/// connection, and one that trickles a CONNECT a byte at a time, are closed
/// when it ends.
#[test]
fn connections_that_never_send_connect_are_closed_at_the_timeout() {
    let _serial = serial();
    let broker = start(BrokerSettings {
        connect_timeout_ms: 1_000,
        ..BrokerSettings::default()
    });
    let addr = broker.devices;
    let started = Instant::now();
    let mut silent = Client::open(addr);
    assert!(silent.closed_within(Duration::from_secs(5)));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "{waited:?}"
    );

    let started = Instant::now();
    let mut trickle = Client::open(addr);
    let bytes = connect("trickle", true, None);
    let mut closed = false;
    for byte in bytes.iter().take(bytes.len() - 1) {
        trickle.send(std::slice::from_ref(byte));
        if trickle.closed_within(Duration::from_millis(150)) {
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "a CONNECT trickled over more than the timeout is cut off"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_serving(addr);
    assert_no_panic();
}

/// A flood of connections that never send CONNECT: the device listener
/// keeps its cap, refuses the rest at once, and serves again when they go;
/// the local listener serves throughout.
#[test]
fn connect_flood_without_connect() {
    let _serial = serial();
    let local = free_addr();
    let broker = start(BrokerSettings {
        max_device_connections: 200,
        internal: local,
        ..BrokerSettings::default()
    });
    let devices = broker.devices;
    let stats = broker.broker.stats();
    let flood: Vec<TcpStream> = (0..600)
        .filter_map(|_| TcpStream::connect_timeout(&devices, Duration::from_secs(2)).ok())
        .collect();
    assert_eq!(flood.len(), 600);
    wait_for(Duration::from_secs(10), "400 refusals", || {
        stats.connections_refused.load(Ordering::Relaxed) >= 400
    });
    assert_serving(local);
    let mut late = Client::open(devices);
    late.send(&connect("late-device", true, None));
    assert!(
        late.closed_within(Duration::from_secs(2)),
        "the device listener is full"
    );
    drop(flood);
    std::thread::sleep(Duration::from_millis(300));
    assert_serving(devices);
    assert_no_panic();
}

// ---------------------------------------------------------------- parser fuzz

/// splitmix64: a seeded RNG without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A buffer shaped like MQTT often enough to get past the framing: a packet
/// type and flags, a remaining length that is right, off by some, or wild,
/// then a body of short length-prefixed strings, varints and random bytes;
/// sometimes several packets, sometimes cut short.
fn fuzz_input(rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..1 + rng.below(3) {
        let mut body = Vec::new();
        for _ in 0..rng.below(12) {
            match rng.below(6) {
                0 => {
                    let len = rng.below(8);
                    body.extend_from_slice(&(len as u16).to_be_bytes());
                    body.extend((0..len).map(|_| rng.next() as u8));
                }
                1 => body.extend_from_slice(&(rng.next() as u16).to_be_bytes()),
                2 => body.push([0, 1, 2, 3, 4, 5, 0x80, 0xFF][rng.below(8)]),
                3 => body.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0x7F][..1 + rng.below(4)]),
                4 => body.extend_from_slice(b"\x00\x04MQTT\x04"),
                _ => body.extend((0..rng.below(6)).map(|_| rng.next() as u8)),
            }
        }
        let byte1 = ((rng.below(16) as u8) << 4) | (rng.next() as u8 & 0x0F);
        let len = match rng.below(8) {
            0 => rng.below(1 << 21),
            1 => body.len().saturating_sub(rng.below(4)),
            2 => body.len() + rng.below(4),
            _ => body.len(),
        };
        let mut packet = vec![byte1];
        push_varint(&mut packet, len);
        packet.extend_from_slice(&body);
        out.extend_from_slice(&packet);
    }
    if rng.below(4) == 0 {
        let cut = rng.below(out.len() + 1);
        out.truncate(cut);
    }
    out
}

/// Both parsers over random buffers for `WASMGATE_BROKER_FUZZ_SECS` seconds
/// (default 10), seeded by `WASMGATE_BROKER_FUZZ_SEED` (default: the clock;
/// printed). A panic is a broken link task in the broker.
#[test]
fn packet_parsers_survive_random_input() {
    use rumqttd::protocol::{v4::V4, v5::V5, Protocol};
    let _serial = serial();
    let secs: u64 = std::env::var("WASMGATE_BROKER_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let seed: u64 = std::env::var("WASMGATE_BROKER_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    println!("parser fuzz: seed {seed} (WASMGATE_BROKER_FUZZ_SEED), {secs} s");
    let mut rng = Rng(seed);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut inputs = 0u64;
    while Instant::now() < deadline {
        for _ in 0..1_000 {
            let input = fuzz_input(&mut rng);
            let max = [16, 1 << 10, wasmgate::broker::MAX_PAYLOAD_BYTES][rng.below(3)];
            for v5 in [false, true] {
                let result = std::panic::catch_unwind(|| {
                    let mut stream = bytes::BytesMut::from(&input[..]);
                    // As the network layer does: packets until an error.
                    for _ in 0..8 {
                        let read = if v5 {
                            V5.read_mut(&mut stream, max)
                        } else {
                            V4.read_mut(&mut stream, max)
                        };
                        if read.is_err() {
                            break;
                        }
                    }
                });
                assert!(
                    result.is_ok(),
                    "{} parser panicked on {input:02x?} (max {max}; seed {seed})",
                    if v5 { "v5" } else { "v4" }
                );
            }
            inputs += 1;
        }
    }
    println!("parser fuzz: {inputs} inputs, no panic");
    assert_no_panic();
}

/// UPSTREAM.md, bug 7: a complete MQTT 5 frame whose property length is cut
/// short is malformed. It was reported as InsufficientBytes, the network
/// layer's "read more", after the frame had been taken from the stream: the
/// broker then parsed whatever came next as a new packet.
#[test]
fn v5_property_length_cut_short_is_malformed() {
    use rumqttd::protocol::{v5::V5, Error, Protocol};
    let _serial = serial();
    // PUBLISH "a", QoS 0, a property length whose continuation byte has no
    // successor inside the frame; then a PINGREQ.
    let mut stream = bytes::BytesMut::from(&[0x30, 0x04, 0x00, 0x01, b'a', 0x80, 0xC0, 0x00][..]);
    assert_eq!(
        V5.read_mut(&mut stream, 1 << 10),
        Err(Error::MalformedPacket)
    );
}
