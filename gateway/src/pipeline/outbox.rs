//! Drains the durable outbox to a broker: in order, a window of messages in
//! flight, each row deleted only after the broker's PUBACK, and no more
//! delivered rows awaiting their delete than a crash may send again.
//!
//! The outbox is the session state, so the MQTT session is clean and a new
//! client (with its own request queue) is made for every connection: after a
//! reconnect nothing half-sent from the old connection can be mistaken for a
//! new message, and everything not yet acknowledged is simply sent again from
//! the outbox (at least once).
//!
//! With upstream batching, a published message may carry many rows
//! ([`super::batch`]); the bookkeeping is per message, and its rows are
//! deleted together on its PUBACK.
//!
//! MQTT 3.1.1 and 5 share this loop (see `mqtt.rs`). What MQTT 5 adds is a
//! PUBACK that refuses a message (not authorized, quota exceeded, payload
//! format invalid...). A refused row is not delivered, so it is not deleted:
//! it keeps its place in the window and is sent again after a backoff of its
//! own, which grows with each refusal. A cloud that throttles thus slows the
//! drain down (refused rows waiting for their retry count against
//! [`RESEND_BOUND`]: 256 of them stop it) instead of being flooded, and
//! a row it never takes is retried every few minutes and logged each time,
//! not dropped. Brokers often close the connection after a refusal (AWS IoT
//! Core on a publish its policy denies, mosquitto on an ACL denial), so
//! refused rows are remembered across reconnects and skipped until they are
//! due; otherwise the first refused row would be resent first on every new
//! connection and nothing behind it would ever get through. For the same
//! reason the reconnect backoff starts over only once a row is delivered or
//! refused for the first time, or on connecting while no row waits for a
//! retry. And a broker that hangs up with our later publishes unread resets
//! the TCP connection, which can discard the refusing PUBACK itself; so
//! after a connection that ended with rows unanswered, the next one starts
//! with one row in flight and doubles that with each delivery (like TCP's
//! slow start): a refusal then arrives with nothing behind it to lose it.
//!
//! Some rows no broker will ever take: a message larger than its maximum
//! packet (the embedded broker's, or what an MQTT 5 broker's CONNACK says),
//! or one a 3.1.1 broker answers by hanging up every time. Left in place,
//! such a row would be sent first on every connection and nothing behind
//! it would get through. So a row too large for the broker goes to the
//! dead-letter queue at once, with the sizes in its error, and a row that
//! was the only one in flight when the connection dropped, [`STRIKES`]
//! times running with nothing delivered in between, goes there too, with
//! the broker's last words. `wasmgate dlq replay` puts it back in the
//! outbox once the cause is fixed.

use super::batch::{self, BatchSettings, Unit};
use crate::metrics::Link;
use crate::mqtt::{self, Backoff, Client, Endpoint, PollError, Polled};
use crate::store::{OutboxDestination, OutboxRow, Store};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};

/// Messages published and not yet acknowledged by the broker, per
/// destination.
pub const WINDOW: usize = 64;
/// Messages published and not yet acknowledged, or acknowledged and not yet
/// deleted from the outbox, per destination. This is the bound on what a
/// crash can send twice: after a restart every row still in the outbox goes
/// again, and at most this many of them (times the rows per message, with
/// batching) had already reached the broker. It is larger than [`WINDOW`]
/// because a delete waits for a group commit (an fsync): with one window
/// for both, the drain ran at most a window per commit, 12,600 msg/s
/// against 29,000 (BENCHMARKS.md section 13).
pub const RESEND_BOUND: usize = 4 * WINDOW;
/// How often the outbox is looked at without a wake-up: rows added by
/// another path (a restart, a failed wake) are found at the latest then.
const TICK: Duration = Duration::from_millis(500);
/// Free window slots that make a refill worth a read while messages are
/// still in flight. Refilling one slot per PUBACK cost a blocking-pool hop
/// and a SELECT per message; waiting for a quarter of the window keeps the
/// pipe full (three quarters are still in flight) at a sixteenth the reads.
const REFILL_AT: usize = WINDOW / 4;

/// Connections in a row that ended with one row alone in flight and
/// unanswered before that row counts as one the broker will never take.
pub const STRIKES: u32 = 5;

/// Bytes of an MQTT PUBLISH beyond its topic and payload, at most: the
/// fixed header (5), the topic's length (2) and the packet id (2).
const PUBLISH_OVERHEAD: usize = 9;

/// The first retry of a refused row; each refusal doubles it, up to the cap.
const REFUSED_RETRY: Duration = Duration::from_secs(1);
const REFUSED_RETRY_CAP: Duration = Duration::from_secs(300);

/// What the event-loop task reports to the drainer.
enum Report {
    /// With the broker's maximum packet size, if it said (MQTT 5).
    Connected(Option<usize>),
    Sent(u16),
    Acked(u16),
    /// The broker answered with a failure reason code (MQTT 5).
    Refused(u16, String),
    Closed(String),
}

/// A running drainer; wake it when rows are added.
#[derive(Debug)]
pub struct Drain {
    pub wake: Arc<Notify>,
    stop: Arc<AtomicBool>,
    /// Rows delivered (acknowledged, or sent at QoS 0).
    pub delivered: Arc<AtomicU64>,
    /// Refusals by the broker (MQTT 5 PUBACKs with a failure reason code);
    /// a row refused three times counts three times.
    pub refused: Arc<AtomicU64>,
    /// Rows no broker would take, moved to the dead-letter queue.
    pub dead_lettered: Arc<AtomicU64>,
    /// Whether its broker connection is up, and how often it came up.
    pub link: Arc<Link>,
    task: tokio::task::JoinHandle<()>,
}

impl Drain {
    pub fn start(
        store: Store,
        destination: OutboxDestination,
        endpoint: Endpoint,
        client_id: String,
        batching: Option<BatchSettings>,
    ) -> Drain {
        let wake = Arc::new(Notify::new());
        let stop = Arc::new(AtomicBool::new(false));
        let delivered = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let dead_lettered = Arc::new(AtomicU64::new(0));
        let link = Arc::new(Link::default());
        let (deleted, deleted_rx) = mpsc::unbounded_channel();
        let drainer = Drainer {
            store,
            destination,
            endpoint,
            client_id,
            batching,
            wake: wake.clone(),
            stop: stop.clone(),
            delivered: delivered.clone(),
            refused: refused.clone(),
            deleted,
            dead_lettered: dead_lettered.clone(),
            link: link.clone(),
        };
        Drain {
            wake,
            stop,
            delivered,
            refused,
            dead_lettered,
            link,
            task: tokio::spawn(drainer.run(deleted_rx)),
        }
    }

    /// Delivers what is in the outbox (up to `grace`), then disconnects.
    /// Rows not delivered by then stay in the outbox for the next start.
    pub async fn close(self, grace: Duration) {
        self.stop.store(true, Ordering::SeqCst);
        self.wake.notify_one();
        let mut task = self.task;
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            task.abort();
        }
    }
}

struct Drainer {
    store: Store,
    destination: OutboxDestination,
    endpoint: Endpoint,
    client_id: String,
    batching: Option<BatchSettings>,
    wake: Arc<Notify>,
    stop: Arc<AtomicBool>,
    delivered: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    /// Rows whose delete has committed, back from the store thread.
    deleted: mpsc::UnboundedSender<Vec<i64>>,
    dead_lettered: Arc<AtomicU64>,
    link: Arc<Link>,
}

/// Bookkeeping of messages in flight: pure, no I/O, so that both protocol
/// versions share it and it is tested on its own. Packet ids belong to one
/// connection ([`InFlight::reconnect`] forgets them); refused rows do not.
struct InFlight {
    /// Messages the broker may owe an answer for at once: [`WINDOW`], or
    /// less while slow-starting after a connection that ended badly.
    limit: usize,
    /// Rows per message (more than 1 with batching), to count refused rows
    /// in messages.
    per_message: usize,
    /// Whether the broker refused a message on this connection.
    refused_here: bool,
    /// Messages handed to the client, waiting for their packet id (FIFO),
    /// each with the rows it carries and its QoS.
    unsent: VecDeque<(Vec<i64>, u8)>,
    /// Packet id -> rows, waiting for PUBACK.
    by_pkid: HashMap<u16, Vec<i64>>,
    /// Refused rows -> when to send them again. They hold their place in
    /// the window meanwhile.
    waiting: BTreeMap<i64, Instant>,
    /// Rows the broker has taken whose delete is not yet committed. They
    /// hold their place in the window until it is, across reconnects too
    /// (they are passed over, not sent again): a slot freed at the PUBACK
    /// would let the rows delivered but still in the outbox grow with the
    /// drain rate times the commit latency, and a crash sends those again.
    deleting: HashSet<i64>,
    /// Each refused row's backoff, kept across its retries until it is
    /// delivered (or the connection ends).
    refusals: HashMap<i64, Backoff>,
    /// Connections in a row that ended with this row alone and unanswered
    /// in flight (see [`STRIKES`]); cleared by any delivery.
    strikes: Option<(i64, u32)>,
    /// The largest packet the broker takes, as far as we know.
    max_packet: usize,
    /// Where this connection's scan of the outbox (in id order) has got to:
    /// every row up to here was handed to the client, passed over, or held.
    last: i64,
    /// Batching: rows read but held back as a partial batch, and since when.
    held: Vec<OutboxRow>,
    held_since: Option<Instant>,
    /// The store's in-memory feed generation once a read of the table came
    /// back short after starting it: from then on new rows are taken from
    /// memory ([`crate::store`]'s `feed`), until the feed stops.
    feed: Option<u64>,
    /// When the table was last read. It is read at least every [`TICK`]
    /// even while the feed serves: rows another process (`wasmgate dlq
    /// replay`) commits are in the table only.
    table_read_at: Option<Instant>,
}

impl Default for InFlight {
    fn default() -> Self {
        InFlight::new(1)
    }
}

impl InFlight {
    fn new(per_message: usize) -> Self {
        InFlight {
            limit: WINDOW,
            per_message: per_message.max(1),
            refused_here: false,
            unsent: VecDeque::new(),
            by_pkid: HashMap::new(),
            waiting: BTreeMap::new(),
            deleting: HashSet::new(),
            refusals: HashMap::new(),
            strikes: None,
            max_packet: mqtt::MAX_PACKET,
            last: 0,
            held: Vec::new(),
            held_since: None,
            feed: None,
            table_read_at: None,
        }
    }

    /// A new connection: nothing is in flight on it yet, so everything not
    /// delivered is read from the outbox again, except refused rows, which
    /// still wait for their time. If the last connection ended with rows
    /// unanswered or refused, this one slow-starts.
    fn reconnect(&mut self) {
        if self.outstanding() > 0 || self.refused_here {
            self.limit = 1;
        }
        // Refills read the outbox from its start on the new connection.
        self.last = 0;
        self.refused_here = false;
        self.unsent.clear();
        self.by_pkid.clear();
        self.held.clear();
        self.held_since = None;
        // The scan starts over from the table.
        self.feed = None;
    }

    /// The connection dropped. If one message was alone in flight and
    /// unanswered (slow start after a bad end sends one), that is a strike
    /// against its first row; returns it once it has [`STRIKES`]. The
    /// caller moves it out of the way (see the module's docs).
    fn ended_badly(&mut self) -> Option<i64> {
        let alone = match (self.unsent.len(), self.by_pkid.len()) {
            (1, 0) => self.unsent.front().map(|(rows, _)| rows.clone()),
            (0, 1) => self.by_pkid.values().next().cloned(),
            _ => None,
        };
        let Some(row) = alone.and_then(|rows| rows.first().copied()) else {
            self.strikes = None;
            return None;
        };
        let count = match self.strikes {
            Some((r, n)) if r == row => n + 1,
            _ => 1,
        };
        self.strikes = Some((row, count));
        (count >= STRIKES).then(|| {
            self.strikes = None;
            row
        })
    }

    /// Whether a row is too large for the broker to take.
    fn too_large(&self, row: &OutboxRow) -> bool {
        row.topic.len() + row.payload.len() + PUBLISH_OVERHEAD > self.max_packet
    }

    /// Whether a refill is worth a read now: a quarter of the window free
    /// (of what slow start allows), or nothing unanswered, so that a lone
    /// message is not kept waiting for room.
    fn may_refill(&self) -> bool {
        let room = self.room();
        room > 0 && (room >= REFILL_AT.min(self.limit.div_ceil(4)) || self.outstanding() == 0)
    }

    /// How many more rows may be handed to the client now: no more than
    /// [`WINDOW`] (or slow start's limit) unanswered, and no more than
    /// [`RESEND_BOUND`] in all, counting the delivered ones whose delete is
    /// pending and the refused ones waiting for their retry.
    fn room(&self) -> usize {
        RESEND_BOUND
            .saturating_sub(self.len())
            .min(self.limit.saturating_sub(self.outstanding()))
    }

    /// The scan reached `row`: whether it waits for a retry, and so is
    /// passed over now (it is sent again when due).
    fn scanned(&mut self, row: i64) -> bool {
        self.last = self.last.max(row);
        self.waiting.contains_key(&row) || self.deleting.contains(&row)
    }

    /// Messages taking room in the window (refused rows, and delivered rows
    /// whose delete is pending, as the messages they make).
    fn len(&self) -> usize {
        self.unsent.len()
            + self.by_pkid.len()
            + self.waiting.len().div_ceil(self.per_message)
            + self.deleting.len().div_ceil(self.per_message)
    }

    /// Delivered rows, now on their way out of the outbox.
    fn delivered(&mut self, rows: &[i64]) {
        self.deleting.extend(rows);
    }

    /// Their delete is committed: their slots are free.
    fn deleted(&mut self, rows: &[i64]) {
        for row in rows {
            self.deleting.remove(row);
        }
    }

    /// Messages the broker has yet to answer.
    fn outstanding(&self) -> usize {
        self.unsent.len() + self.by_pkid.len()
    }

    /// A message carrying `rows` was handed to the client.
    fn handed(&mut self, rows: Vec<i64>, qos: u8) {
        self.unsent.push_back((rows, qos));
    }

    /// The client sent the oldest unsent message as `pkid`; returns its
    /// rows if that delivered them (QoS 0 has no acknowledgement).
    fn sent(&mut self, pkid: u16) -> Option<Vec<i64>> {
        let (rows, qos) = self.unsent.pop_front()?;
        if qos == 0 {
            self.limit = (self.limit * 2).min(WINDOW);
            self.delivered(&rows);
            return Some(rows);
        }
        self.by_pkid.insert(pkid, rows);
        None
    }

    /// The broker took `pkid`; returns its rows, now delivered.
    fn acked(&mut self, pkid: u16) -> Option<Vec<i64>> {
        let rows = self.by_pkid.remove(&pkid)?;
        for row in &rows {
            self.refusals.remove(row);
        }
        self.limit = (self.limit * 2).min(WINDOW);
        self.strikes = None;
        self.delivered(&rows);
        Some(rows)
    }

    /// The broker refused `pkid`: its rows wait for their next try,
    /// together (the backoff of the first row sets the time). Returns the
    /// rows, how many times the first has been refused, and the wait.
    fn refused(&mut self, pkid: u16, now: Instant) -> Option<(Vec<i64>, u32, Duration)> {
        let rows = self.by_pkid.remove(&pkid)?;
        let first = *rows.first()?;
        self.refused_here = true;
        let backoff = self
            .refusals
            .entry(first)
            .or_insert_with(|| Backoff::new(REFUSED_RETRY, REFUSED_RETRY_CAP, first as u64));
        let delay = backoff.next_delay();
        let refusals = backoff.attempts();
        for row in &rows {
            self.waiting.insert(*row, now + delay);
        }
        Some((rows, refusals, delay))
    }

    /// Refused rows whose wait is over, oldest row first, among those the
    /// scan has passed (a later one is passed over when reached, and comes
    /// back here after that, so it is never sent twice on one connection).
    /// They stay waiting until [`InFlight::retry`].
    fn due(&self, now: Instant) -> Vec<i64> {
        self.waiting
            .iter()
            .filter(|(row, at)| **at <= now && **row <= self.last)
            .map(|(row, _)| *row)
            .collect()
    }

    /// A due row is sent again (hand it to the client next), or `forget` it.
    fn retry(&mut self, row: i64) {
        self.waiting.remove(&row);
    }

    /// When the next refused row is due, if any.
    fn next_due(&self) -> Option<Instant> {
        self.waiting.values().min().copied()
    }

    /// A refused row that is no longer in the outbox (the drop-oldest
    /// policy deleted it).
    fn forget(&mut self, row: i64) {
        self.waiting.remove(&row);
        self.refusals.remove(&row);
    }
}

impl Drainer {
    async fn run(self, mut deleted: mpsc::UnboundedReceiver<Vec<i64>>) {
        let name = match self.destination {
            OutboxDestination::Local => "local",
            OutboxDestination::Upstream => "upstream",
            OutboxDestination::Invoke => "invoke",
        };
        let mut backoff = Backoff::new(
            Duration::from_millis(100),
            Duration::from_secs(30),
            self.client_id.len() as u64,
        );
        let mut flight = InFlight::new(self.batching.as_ref().map_or(1, |b| b.max_messages));
        let settings = mqtt::Settings {
            client_id: self.client_id.clone(),
            persistent: false,
            manual_acks: false,
            outgoing_window: WINDOW as u16,
            incoming_window: None,
            capacity: WINDOW * 2,
        };
        loop {
            let (client, mut eventloop) = Client::new(&self.endpoint, &settings);
            let (tx, mut reports) = mpsc::unbounded_channel();
            let events = tokio::spawn(async move {
                let report = |polled: Polled| match polled {
                    Polled::ConnAck { max_packet, .. } => Some(Report::Connected(max_packet)),
                    Polled::Sent(pkid) => Some(Report::Sent(pkid)),
                    Polled::PubAck {
                        pkid,
                        refused: None,
                    } => Some(Report::Acked(pkid)),
                    Polled::PubAck {
                        pkid,
                        refused: Some(reason),
                    } => Some(Report::Refused(pkid, reason)),
                    Polled::Disconnected => Some(Report::Closed("disconnected".into())),
                    _ => None,
                };
                loop {
                    let next = match eventloop.poll().await {
                        Ok(polled) => match report(polled) {
                            Some(next) => next,
                            None => continue,
                        },
                        Err(error) => {
                            // What arrived just before the connection failed
                            // (a refusal, then the broker hanging up) counts.
                            for polled in eventloop.leftovers() {
                                if let Some(next) = report(polled) {
                                    let _ = tx.send(next);
                                }
                            }
                            Report::Closed(match error {
                                PollError::RequestsDone => "client gone".into(),
                                PollError::Connection(e) => e,
                            })
                        }
                    };
                    let closed = matches!(next, Report::Closed(_));
                    if tx.send(next).is_err() || closed {
                        return;
                    }
                }
            });

            let outcome = self
                .connection(
                    &client,
                    (&mut reports, &mut deleted),
                    name,
                    &mut backoff,
                    &mut flight,
                )
                .await;
            events.abort();
            self.link.connected.store(false, Ordering::Relaxed);
            match outcome {
                Ok(()) => return,
                Err(reason) => {
                    if self.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    if let Some(row) = flight.ended_badly() {
                        let why = format!(
                            "the broker closed the connection each time this message was the one in flight ({STRIKES} times running; last: {reason})"
                        );
                        if let Some(row) =
                            self.read_table(row - 1, 1).await.and_then(|mut r| r.pop())
                        {
                            self.dead_letter(row, why, &mut flight);
                        }
                    }
                    let delay = backoff.next_delay();
                    tracing::warn!(outbox = name, error = %reason, retry_in = ?delay, "broker connection lost; messages wait in the outbox");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Serves one connection; `Ok` when stopped cleanly, `Err` when it dropped.
    async fn connection(
        &self,
        client: &Client,
        (reports, deleted): (
            &mut mpsc::UnboundedReceiver<Report>,
            &mut mpsc::UnboundedReceiver<Vec<i64>>,
        ),
        name: &str,
        backoff: &mut Backoff,
        flight: &mut InFlight,
    ) -> Result<(), String> {
        flight.reconnect();
        let max_packet = match reports.recv().await {
            Some(Report::Connected(max)) => {
                self.link.connected.store(true, Ordering::Relaxed);
                self.link.connects.fetch_add(1, Ordering::Relaxed);
                if flight.waiting.is_empty() {
                    backoff.reset();
                }
                max
            }
            Some(Report::Closed(reason)) => return Err(reason),
            _ => return Err("event loop ended".into()),
        };
        flight.max_packet = [
            Some(mqtt::MAX_PACKET),
            self.endpoint.max_packet_bytes,
            max_packet,
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(mqtt::MAX_PACKET);
        tracing::debug!(outbox = name, "connected");
        let mut acked = Vec::new();
        // Whether the outbox may hold rows beyond `flight.last`: set by a
        // wake-up (the store commits, then wakes us), the tick and a new
        // connection; cleared by a read that came back short of its limit.
        // A PUBACK alone adds no rows, so it does not cause a read.
        let mut unread = true;
        loop {
            if let Err(error) = self.send(client, flight, &mut unread).await {
                // The event loop is gone; what it reported before it went
                // (a refusal, then the broker hanging up) still counts.
                while let Ok(report) = reports.try_recv() {
                    self.apply(Some(report), flight, &mut acked, backoff, name)?;
                }
                self.delete(acked);
                return Err(error);
            }
            // Stopping: done once the broker has answered everything sent.
            // Refused rows stay in the outbox for the next start.
            if self.stop.load(Ordering::SeqCst)
                && flight.outstanding() == 0
                && flight.held.is_empty()
                && (flight.room() == 0
                    || self
                        .read_table(flight.last, 1)
                        .await
                        .is_none_or(|rows| rows.is_empty()))
            {
                self.delete(std::mem::take(&mut acked));
                client.disconnect().await;
                return Ok(());
            }
            // A partial batch is sent when its wait is over, a refused row
            // when it is due, wake-up or not (a partial batch once the
            // window has room: until then, only a PUBACK helps).
            let tick = match (&self.batching, flight.held_since) {
                (Some(b), Some(since)) if flight.may_refill() => {
                    TICK.min(b.max_delay.saturating_sub(since.elapsed()))
                }
                _ => TICK,
            };
            let tick = Instant::now() + tick;
            let until = flight.next_due().map_or(tick, |due| due.min(tick));
            let report = tokio::select! {
                report = reports.recv() => report,
                Some(rows) = deleted.recv() => {
                    flight.deleted(&rows);
                    continue;
                }
                () = self.wake.notified() => {
                    unread = true;
                    continue;
                }
                () = tokio::time::sleep_until(until.into()) => {
                    unread = true;
                    continue;
                }
            };
            self.apply(report, flight, &mut acked, backoff, name)?;
            // Delete in batches: each delete rides on the next group commit.
            if acked.len() >= 32 || (flight.outstanding() == 0 && !acked.is_empty()) {
                self.delete(std::mem::take(&mut acked));
            }
        }
    }

    /// Fills the window: new rows from the outbox in id order, then refused
    /// rows whose wait is over. Those go last because a broker may hang up
    /// on refusing one again, and the new rows before it then still count.
    ///
    /// New rows are read only when `unread` says there may be some (a
    /// PUBACK adds none) and [`InFlight::may_refill`]: one read per quarter
    /// window rather than one per PUBACK. `unread` is cleared when the read
    /// got everything there was.
    async fn send(
        &self,
        client: &Client,
        flight: &mut InFlight,
        unread: &mut bool,
    ) -> Result<(), String> {
        let held_due = match (&self.batching, flight.held_since) {
            (Some(b), Some(since)) => since.elapsed() >= b.max_delay,
            _ => false,
        };
        if flight.may_refill() && (*unread || held_due) {
            // Enough rows to fill the room even if every waiting one is
            // among them; those are passed over.
            let want = flight.room() * flight.per_message;
            let limit = want + flight.waiting.len();
            let (fetched, caught_up) = self.fetch(flight, limit).await;
            let complete = fetched.len() < limit;
            let mut rows = Vec::new();
            let mut cut = false;
            for row in fetched {
                if rows.len() == want {
                    cut = true;
                    break;
                }
                if flight.scanned(row.id) {
                    continue;
                }
                if flight.too_large(&row) {
                    let why = format!(
                        "{} bytes (topic and payload) is more than the broker takes ({} bytes a packet)",
                        row.topic.len() + row.payload.len(),
                        flight.max_packet
                    );
                    self.dead_letter(row, why, flight);
                    continue;
                }
                rows.push(row);
            }
            *unread = cut || !complete;
            // The feed holds what is committed from its start on; what the
            // table read returned must all have been taken for the feed to
            // hold every row still to scan.
            if let (Some(generation), false) = (caught_up, cut) {
                flight.feed = Some(generation);
            }
            // Also when nothing new came: a held partial batch may be due.
            for unit in self.units(rows, flight) {
                self.publish(client, flight, unit).await?;
            }
        }
        let mut retry = Vec::new();
        for id in flight.due(Instant::now()) {
            if flight.room() == 0 || retry.len() == flight.room() * flight.per_message {
                // Slow-starting: the rest go when there is room.
                break;
            }
            // Re-read from the outbox, which holds the row; memory does not.
            match self
                .read_table(id - 1, 1)
                .await
                .and_then(|mut rows| rows.pop())
            {
                Some(row) if row.id == id => {
                    flight.retry(id);
                    retry.push(row);
                }
                // Deleted by the drop-oldest policy meanwhile.
                _ => flight.forget(id),
            }
        }
        for unit in self.retry_units(retry) {
            self.publish(client, flight, unit).await?;
        }
        Ok(())
    }

    /// Takes in one report of the event loop; `Err` when the connection is
    /// over (acknowledged rows deleted first).
    fn apply(
        &self,
        report: Option<Report>,
        flight: &mut InFlight,
        acked: &mut Vec<i64>,
        backoff: &mut Backoff,
        name: &str,
    ) -> Result<(), String> {
        match report {
            Some(Report::Sent(pkid)) => {
                if let Some(rows) = flight.sent(pkid) {
                    self.delivered
                        .fetch_add(rows.len() as u64, Ordering::Relaxed);
                    acked.extend(rows);
                    backoff.reset();
                }
            }
            Some(Report::Acked(pkid)) => {
                if let Some(rows) = flight.acked(pkid) {
                    self.delivered
                        .fetch_add(rows.len() as u64, Ordering::Relaxed);
                    acked.extend(rows);
                    backoff.reset();
                }
            }
            Some(Report::Refused(pkid, reason)) => {
                if let Some((rows, refusals, retry_in)) = flight.refused(pkid, Instant::now()) {
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    // A row refused for the first time is progress too:
                    // the next connection passes it over. A retry
                    // refused again is not, so if the broker hangs up
                    // after each one, reconnects slow down.
                    if refusals == 1 {
                        backoff.reset();
                    }
                    tracing::warn!(
                        outbox = name,
                        row = rows[0],
                        rows = rows.len(),
                        reason = %reason,
                        refusals,
                        ?retry_in,
                        "broker refused a message; it stays in the outbox and is retried"
                    );
                }
            }
            Some(Report::Connected(_)) => {}
            Some(Report::Closed(reason)) => {
                self.delete(std::mem::take(acked));
                return Err(reason);
            }
            None => return Err("event loop ended".into()),
        }
        Ok(())
    }

    /// Deletes delivered rows; their window slots come free when the delete
    /// has committed ([`InFlight::deleted`]).
    fn delete(&self, rows: Vec<i64>) {
        if rows.is_empty() {
            return;
        }
        let back = self.deleted.clone();
        let ids = rows.clone();
        self.store.delete_outbox_then(
            ids,
            Some(Box::new(move |result| {
                // At shutdown the delete may fail; the rows then stay
                // delivered-but-kept, and go again at the next start.
                if result.is_ok() {
                    let _ = back.send(rows);
                }
            })),
        );
    }

    /// Moves a row no broker will take to the dead-letter queue, so that the
    /// rows behind it go on. Its slot is held until that commits, like a
    /// delivered row's.
    fn dead_letter(&self, row: OutboxRow, why: String, flight: &mut InFlight) {
        flight.delivered(&[row.id]);
        let destination = match row.destination {
            OutboxDestination::Local => "local",
            OutboxDestination::Upstream => "upstream",
            OutboxDestination::Invoke => "invoke",
        };
        tracing::error!(
            outbox = destination,
            row = row.id,
            topic = %row.topic,
            function = %row.function,
            "message moved to the dead-letter queue: {why}"
        );
        let letter = crate::dlq::undeliverable(&row, why);
        let (store, back, counter) = (
            self.store.clone(),
            self.deleted.clone(),
            self.dead_lettered.clone(),
        );
        let id = row.id;
        // Taking a store permit may wait: not on the reactor.
        tokio::task::spawn_blocking(move || {
            store.dead_letter(letter, move |result| match result {
                Ok(letter) => {
                    counter.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(row = id, "undeliverable message kept as dead letter {letter} (`wasmgate dlq show {letter}`; `dlq replay {letter}` sends it again)");
                    let _ = back.send(vec![id]);
                }
                Err(e) => {
                    tracing::error!(row = id, error = %e, "cannot write the dead letter; the message stays in the outbox");
                }
            })
        });
    }

    /// Hands a message to the client.
    async fn publish(
        &self,
        client: &Client,
        flight: &mut InFlight,
        unit: Unit,
    ) -> Result<(), String> {
        let qos = u8::from(unit.qos != 0);
        flight.handed(unit.rows, qos);
        client
            .publish(
                unit.topic,
                qos,
                unit.retain,
                unit.payload,
                unit.trace.as_ref(),
            )
            .await
    }

    /// The messages to publish for `rows` (just read, in id order): one per
    /// row, or batches. A partial batch is held in `flight` until it fills
    /// or has waited `max_delay` (or the drainer is stopping).
    fn units(&self, rows: Vec<OutboxRow>, flight: &mut InFlight) -> Vec<Unit> {
        let Some(settings) = &self.batching else {
            return rows.into_iter().map(Unit::single).collect();
        };
        let mut all = std::mem::take(&mut flight.held);
        all.extend(rows);
        let (mut units, held) = batch::group(all, settings);
        if held.is_empty() {
            flight.held_since = None;
            return units;
        }
        if !units.is_empty() {
            // The oldest rows left in full batches; the wait starts again.
            flight.held_since = None;
        }
        let since = *flight.held_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= settings.max_delay || self.stop.load(Ordering::SeqCst) {
            units.extend(batch::flush(held, settings));
            flight.held_since = None;
        } else {
            flight.held = held;
        }
        units
    }

    /// Refused rows going again: as they went (singly, or batched at once;
    /// they have waited long enough).
    fn retry_units(&self, rows: Vec<OutboxRow>) -> Vec<Unit> {
        match &self.batching {
            None => rows.into_iter().map(Unit::single).collect(),
            Some(settings) => {
                let (mut units, rest) = batch::group(rows, settings);
                units.extend(batch::flush(rest, settings));
                units
            }
        }
    }

    /// Up to `limit` rows after `flight.last`: from the store's in-memory
    /// feed while it holds every row still to scan, otherwise from the
    /// table. With a table read that got to the end, also the generation of
    /// the feed started just before it, which the caller may switch to.
    async fn fetch(&self, flight: &mut InFlight, limit: usize) -> (Vec<OutboxRow>, Option<u64>) {
        let fresh = flight.table_read_at.is_some_and(|at| at.elapsed() < TICK);
        if let Some(generation) = flight.feed.filter(|_| fresh) {
            let fed = self
                .store
                .outbox_feed(self.destination, generation, flight.last, limit);
            if let Some(rows) = fed {
                return (rows, None);
            }
            tracing::debug!(outbox = ?self.destination, "in-memory feed stopped; reading the table");
            flight.feed = None;
        }
        // Start the feed *before* reading: a row committed after this point
        // is in the feed, one committed before it is in what we read.
        let generation = self.store.outbox_feed_start(self.destination);
        flight.feed = None;
        flight.table_read_at = Some(Instant::now());
        match self.read_table(flight.last, limit).await {
            Some(rows) => {
                let caught_up = (rows.len() < limit).then_some(generation);
                (rows, caught_up)
            }
            None => (Vec::new(), None),
        }
    }

    /// Reads the table on the blocking pool; `None` when it could not.
    async fn read_table(&self, after: i64, limit: usize) -> Option<Vec<OutboxRow>> {
        let store = self.store.clone();
        let destination = self.destination;
        let rows =
            tokio::task::spawn_blocking(move || store.outbox_after(destination, after, limit))
                .await;
        match rows {
            Ok(Ok(rows)) => Some(rows),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot read the outbox");
                None
            }
            Err(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_is_delivered_by_its_puback_or_at_once_at_qos_0() {
        let mut flight = InFlight::default();
        flight.handed(vec![1], 1);
        flight.handed(vec![2], 0);
        assert_eq!(flight.sent(7), None, "QoS 1 waits for its PUBACK");
        assert_eq!(flight.sent(0), Some(vec![2]), "QoS 0 is done once sent");
        assert_eq!(flight.acked(7), Some(vec![1]));
        assert_eq!(flight.acked(7), None, "an ack is taken once");
        flight.deleted(&[1, 2]);
        assert_eq!(flight.len(), 0);
    }

    /// A slot freed at the PUBACK would let delivered rows pile up in the
    /// outbox while their deletes wait for a commit, and a crash then
    /// sends them all again: up to 608 rows after one kill at the defaults,
    /// thousands with a slow disk. Held until the delete commits, they
    /// stay within the resend bound; the broker still sees a window at most.
    #[test]
    fn a_delivered_row_holds_its_slot_until_its_delete_commits() {
        let mut flight = InFlight::default();
        let bound = RESEND_BOUND as i64;
        for row in 1..=bound {
            assert!(flight.room() > 0, "room for row {row}");
            flight.scanned(row);
            flight.handed(vec![row], 1);
            flight.sent(row as u16);
            assert!(flight.outstanding() <= WINDOW);
            flight.acked(row as u16);
        }
        assert_eq!(flight.outstanding(), 0, "the broker owes nothing");
        assert_eq!(flight.room(), 0, "but every delete is still pending");
        // A new connection passes them over rather than sending them again.
        flight.reconnect();
        assert!(flight.scanned(1), "row 1 is on its way out of the outbox");
        assert_eq!(flight.room(), 0);
        flight.deleted(&[1, 2]);
        assert_eq!(flight.room(), 2);
        assert!(!flight.scanned(bound + 1), "a new row is sent");
    }

    #[test]
    fn no_more_than_a_window_is_unanswered_whatever_the_deletes() {
        let mut flight = InFlight::default();
        assert_eq!(flight.room(), WINDOW);
        for row in 1..=WINDOW as i64 {
            flight.scanned(row);
            flight.handed(vec![row], 1);
        }
        assert_eq!(flight.room(), 0, "a window is unanswered");
        flight.sent(1);
        flight.acked(1);
        assert_eq!(flight.room(), 1, "one answered, its delete pending");
    }

    #[test]
    fn a_refused_row_keeps_its_place_in_the_window_until_it_is_due() {
        let now = Instant::now();
        let mut flight = InFlight::default();
        assert!(!flight.scanned(5));
        flight.handed(vec![5], 1);
        flight.sent(1);
        let (row, refusals, delay) = flight.refused(1, now).expect("row 5 was in flight");
        assert_eq!((row, refusals), (vec![5], 1));
        assert!(
            delay >= REFUSED_RETRY / 2 && delay < REFUSED_RETRY,
            "{delay:?}"
        );
        assert_eq!(flight.len(), 1, "still takes room in the window");
        assert_eq!(flight.outstanding(), 0, "but the broker owes nothing");
        assert_eq!(flight.next_due(), Some(now + delay));
        assert!(flight.due(now).is_empty(), "not before its time");
        assert_eq!(flight.due(now + delay), vec![5]);
        flight.retry(5);
        assert_eq!(flight.len(), 0);
    }

    #[test]
    fn each_refusal_of_a_row_waits_longer_and_delivery_forgets_them() {
        let now = Instant::now();
        let mut flight = InFlight::default();
        let mut delays = Vec::new();
        flight.scanned(9);
        for pkid in 1..=4 {
            flight.handed(vec![9], 1);
            flight.sent(pkid);
            let (_, refusals, delay) = flight.refused(pkid, now).expect("in flight");
            assert_eq!(refusals, u32::from(pkid));
            delays.push(delay);
            assert_eq!(flight.due(now + REFUSED_RETRY_CAP), vec![9]);
            flight.retry(9);
        }
        // Jitter scales by [0.5, 1), so doubling the base always grows it.
        assert!(delays.windows(2).all(|w| w[0] < w[1]), "{delays:?}");
        flight.handed(vec![9], 1);
        flight.sent(5);
        assert_eq!(flight.acked(5), Some(vec![9]));
        flight.handed(vec![9], 1);
        flight.sent(6);
        let (_, refusals, _) = flight.refused(6, now).expect("in flight");
        assert_eq!(refusals, 1, "a delivered row starts over");
    }

    #[test]
    fn refused_rows_are_passed_over_after_a_reconnect_until_they_are_due() {
        let now = Instant::now();
        let mut flight = InFlight::default();
        for (row, pkid) in [(1, 10), (2, 11)] {
            flight.scanned(row);
            flight.handed(vec![row], 1);
            flight.sent(pkid);
        }
        let (_, _, delay) = flight.refused(10, now).expect("in flight");
        flight.reconnect();
        assert_eq!((flight.outstanding(), flight.last), (0, 0));
        assert!(
            flight.due(now + delay).is_empty(),
            "not before the scan passed it"
        );
        assert!(flight.scanned(1), "row 1 waits for its retry");
        assert!(!flight.scanned(2), "row 2 was unanswered: sent again");
        assert_eq!(flight.due(now), Vec::<i64>::new());
        assert_eq!(flight.due(now + delay), vec![1]);
    }

    #[test]
    fn after_a_bad_end_a_connection_starts_with_one_row_and_doubles() {
        let mut flight = InFlight::default();
        assert_eq!(flight.room(), WINDOW);
        flight.handed(vec![1], 1);
        flight.handed(vec![2], 1);
        flight.sent(1);
        flight.reconnect();
        assert_eq!(flight.room(), 1, "rows were unanswered");
        flight.handed(vec![1], 1);
        assert_eq!(flight.room(), 0);
        flight.sent(7);
        flight.acked(7);
        flight.deleted(&[1]);
        assert_eq!(flight.room(), 2);
        for pkid in 8..20 {
            flight.handed(vec![i64::from(pkid)], 1);
            flight.sent(pkid);
            flight.acked(pkid);
            flight.deleted(&[i64::from(pkid)]);
        }
        assert_eq!(flight.room(), WINDOW, "back to the full window");
        flight.reconnect();
        assert_eq!(flight.room(), WINDOW, "a clean end keeps it");
    }

    #[test]
    fn a_refused_batch_waits_as_one_and_counts_as_the_messages_it_makes() {
        let now = Instant::now();
        let mut flight = InFlight::new(100);
        for row in 1..=150 {
            flight.scanned(row);
        }
        flight.handed((1..=100).collect(), 1);
        flight.handed((101..=150).collect(), 1);
        flight.sent(1);
        flight.sent(2);
        let (rows, _, delay) = flight.refused(1, now).expect("in flight");
        assert_eq!(rows.len(), 100);
        flight.refused(2, now);
        assert_eq!(flight.len(), 2, "150 rows at 100 a message");
        assert_eq!(flight.due(now + REFUSED_RETRY_CAP).len(), 150);
        assert!(flight.due(now + delay).contains(&100));
    }

    #[test]
    fn refused_rows_come_due_oldest_first() {
        let now = Instant::now();
        let mut flight = InFlight::default();
        for (row, pkid) in [(3, 1), (2, 2)] {
            flight.scanned(row);
            flight.handed(vec![row], 1);
            flight.sent(pkid);
            flight.refused(pkid, now);
        }
        assert_eq!(flight.due(now + REFUSED_RETRY), vec![2, 3]);
    }
}
