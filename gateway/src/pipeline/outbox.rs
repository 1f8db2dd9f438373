//! Drains the durable outbox to a broker: in order, a window of messages in
//! flight, each row deleted only after the broker's PUBACK.
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

use super::backoff::Backoff;
use super::batch::{self, BatchSettings, Unit};
use super::Endpoint;
use crate::store::{OutboxDestination, OutboxRow, Store};
use rumqttc::{AsyncClient, Event, Incoming, Outgoing, QoS};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};

/// Messages published and not yet acknowledged, per connection.
const WINDOW: usize = 64;
/// How often the outbox is looked at without a wake-up: rows added by
/// another path (a restart, a failed wake) are found at the latest then.
const TICK: Duration = Duration::from_millis(500);

/// What the event-loop task reports to the drainer.
enum Report {
    Connected,
    Sent(u16),
    Acked(u16),
    Closed(String),
}

/// A running drainer; wake it when rows are added.
#[derive(Debug)]
pub struct Drain {
    pub wake: Arc<Notify>,
    stop: Arc<AtomicBool>,
    /// Rows delivered (acknowledged, or sent at QoS 0).
    pub delivered: Arc<AtomicU64>,
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
        let drainer = Drainer {
            store,
            destination,
            endpoint,
            client_id,
            batching,
            wake: wake.clone(),
            stop: stop.clone(),
            delivered: delivered.clone(),
        };
        Drain {
            wake,
            stop,
            delivered,
            task: tokio::spawn(drainer.run()),
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
}

/// Per-connection bookkeeping of messages in flight.
#[derive(Default)]
struct InFlight {
    /// Messages handed to the client, waiting for their packet id (FIFO),
    /// each with the rows it carries.
    unsent: VecDeque<(Vec<i64>, QoS)>,
    /// Packet id -> rows, waiting for PUBACK.
    by_pkid: HashMap<u16, Vec<i64>>,
    /// Highest row id read from the outbox on this connection.
    last: i64,
    /// Batching: rows read but held back as a partial batch, and since when.
    held: Vec<OutboxRow>,
    held_since: Option<Instant>,
}

impl InFlight {
    fn len(&self) -> usize {
        self.unsent.len() + self.by_pkid.len()
    }
}

impl Drainer {
    async fn run(self) {
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
        loop {
            let mut options = self.endpoint.options(self.client_id.clone());
            options.set_clean_session(true);
            options.set_inflight(WINDOW as u16);
            let (client, mut eventloop) = AsyncClient::new(options, WINDOW * 2);
            let (tx, mut reports) = mpsc::unbounded_channel();
            let events = tokio::spawn(async move {
                loop {
                    let report = match eventloop.poll().await {
                        Ok(Event::Incoming(Incoming::ConnAck(_))) => Report::Connected,
                        Ok(Event::Outgoing(Outgoing::Publish(pkid))) => Report::Sent(pkid),
                        Ok(Event::Incoming(Incoming::PubAck(ack))) => Report::Acked(ack.pkid),
                        Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                            Report::Closed("disconnected".into())
                        }
                        Ok(_) => continue,
                        Err(e) => Report::Closed(e.to_string()),
                    };
                    let closed = matches!(report, Report::Closed(_));
                    if tx.send(report).is_err() || closed {
                        return;
                    }
                }
            });

            let outcome = self
                .connection(&client, &mut reports, name, &mut backoff)
                .await;
            events.abort();
            match outcome {
                Ok(()) => return,
                Err(reason) => {
                    if self.stop.load(Ordering::SeqCst) {
                        return;
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
        client: &AsyncClient,
        reports: &mut mpsc::UnboundedReceiver<Report>,
        name: &str,
        backoff: &mut Backoff,
    ) -> Result<(), String> {
        match reports.recv().await {
            Some(Report::Connected) => backoff.reset(),
            Some(Report::Closed(reason)) => return Err(reason),
            _ => return Err("event loop ended".into()),
        }
        tracing::debug!(outbox = name, "connected");
        let mut flight = InFlight::default();
        let mut acked = Vec::new();
        loop {
            // Fill the window from the outbox, in id order.
            if flight.len() < WINDOW {
                let per_message = self.batching.as_ref().map_or(1, |b| b.max_messages);
                let rows = self
                    .fetch(flight.last, (WINDOW - flight.len()) * per_message)
                    .await;
                if let Some(row) = rows.last() {
                    flight.last = row.id;
                }
                for unit in self.units(rows, &mut flight) {
                    let qos = if unit.qos == 0 {
                        QoS::AtMostOnce
                    } else {
                        QoS::AtLeastOnce
                    };
                    flight.unsent.push_back((unit.rows, qos));
                    client
                        .publish(unit.topic, qos, unit.retain, unit.payload)
                        .await
                        .map_err(|e| e.to_string())?;
                }
            }
            if self.stop.load(Ordering::SeqCst)
                && flight.len() == 0
                && flight.held.is_empty()
                && self.fetch(flight.last, 1).await.is_empty()
            {
                self.store.delete_outbox(std::mem::take(&mut acked));
                let _ = client.disconnect().await;
                return Ok(());
            }
            // A partial batch is sent when its wait is over, wake-up or not.
            let tick = match (&self.batching, flight.held_since) {
                (Some(b), Some(since)) => TICK.min(b.max_delay.saturating_sub(since.elapsed())),
                _ => TICK,
            };
            let report = tokio::select! {
                report = reports.recv() => report,
                () = self.wake.notified() => continue,
                () = tokio::time::sleep(tick) => continue,
            };
            match report {
                Some(Report::Sent(pkid)) => {
                    if let Some((rows, qos)) = flight.unsent.pop_front() {
                        if qos == QoS::AtMostOnce {
                            self.delivered
                                .fetch_add(rows.len() as u64, Ordering::Relaxed);
                            acked.extend(rows);
                        } else {
                            flight.by_pkid.insert(pkid, rows);
                        }
                    }
                }
                Some(Report::Acked(pkid)) => {
                    if let Some(rows) = flight.by_pkid.remove(&pkid) {
                        self.delivered
                            .fetch_add(rows.len() as u64, Ordering::Relaxed);
                        acked.extend(rows);
                    }
                }
                Some(Report::Connected) => {}
                Some(Report::Closed(reason)) => {
                    self.store.delete_outbox(acked);
                    return Err(reason);
                }
                None => return Err("event loop ended".into()),
            }
            // Delete in batches: each delete rides on the next group commit.
            if acked.len() >= 32 || (flight.len() == 0 && !acked.is_empty()) {
                self.store.delete_outbox(std::mem::take(&mut acked));
            }
        }
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

    async fn fetch(&self, after: i64, limit: usize) -> Vec<OutboxRow> {
        let store = self.store.clone();
        let destination = self.destination;
        let rows =
            tokio::task::spawn_blocking(move || store.outbox_after(destination, after, limit))
                .await;
        match rows {
            Ok(Ok(rows)) => rows,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot read the outbox");
                Vec::new()
            }
            Err(_) => Vec::new(),
        }
    }
}
