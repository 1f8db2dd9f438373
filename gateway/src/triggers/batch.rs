//! Batching windows: many events of one trigger to one invocation.
//!
//! `batch = { size = 100, window_ms = 500 }` puts a gatherer in front of the
//! function's shards: a source offers events to [`batched`]'s intake as it
//! would to the function's own, and per shard a task gathers up to `size`
//! of them, or what arrived within `window_ms` of the first, into one
//! [`Job`] whose [`Settle::Batch`] holds the events and how each is settled.
//! Gathering per shard keeps per-topic order: the events of one topic land
//! in one shard of the gatherer as they would in one shard of the function.
//!
//! Backpressure is the function's: a gatherer holds one batch at a time and
//! waits for room in its shard, its own queue (`size` events) fills, and the
//! source stops taking. Each event is settled on its own (its MQTT ack, its
//! file's move) once the commit that holds it is durable: the worker runs a
//! batch, commits the items that did not fail with the batch's effects, and
//! retries the failed ones (see `pipeline::dispatch`).
//!
//! [`Settle::Batch`]: super::Settle::Batch

use super::{Intake, Job, Settle};
use crate::event::OwnedEvent;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How a trigger batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Events per batch at most (at least 1).
    pub size: usize,
    /// How long a batch waits for more after its first event.
    pub wait: Duration,
}

impl From<crate::config::BatchWindow> for Window {
    fn from(config: crate::config::BatchWindow) -> Window {
        Window {
            size: (config.size as usize).max(1),
            wait: Duration::from_millis(config.window_ms),
        }
    }
}

/// How often a gatherer waiting out its window looks whether the gateway is
/// stopping (and hands over what it has at once).
const DRAIN_CHECK: Duration = Duration::from_millis(100);

/// An intake that gathers what it is offered into batches for `intake`'s
/// shards, one gatherer task per shard. Events are counted (received,
/// throttled, in flight) as they enter, as the function's own intake counts
/// them; a batch is not counted again.
pub fn batched(intake: &Intake, window: Window, draining: Arc<AtomicBool>) -> Intake {
    let shards = intake
        .shards
        .iter()
        .map(|shard| {
            let (tx, rx) = mpsc::channel(window.size);
            let in_flight = intake.in_flight.clone();
            tokio::spawn(gather(
                rx,
                shard.clone(),
                window,
                draining.clone(),
                in_flight,
            ));
            tx
        })
        .collect();
    Intake {
        shards,
        ..intake.clone()
    }
}

/// Gathers batches until every sender of `rx` is gone.
async fn gather(
    mut rx: mpsc::Receiver<Job>,
    shard: mpsc::Sender<Job>,
    window: Window,
    draining: Arc<AtomicBool>,
    in_flight: Arc<AtomicUsize>,
) {
    while let Some(first) = rx.recv().await {
        let deadline = Instant::now() + window.wait;
        let mut items = vec![first];
        while items.len() < window.size {
            // What is waiting already is taken even with a window of 0:
            // `timeout_at` polls the receive before it looks at the clock.
            let until = deadline.min(Instant::now() + DRAIN_CHECK);
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(job)) => items.push(job),
                Ok(None) => break,
                Err(_) if Instant::now() >= deadline => break,
                Err(_) if draining.load(Ordering::SeqCst) => break,
                Err(_) => {}
            }
        }
        if let Err(mpsc::error::SendError(job)) = shard.send(batch(items)).await {
            // The workers are gone: every event stays with its source, this
            // batch's and every later one's (until the senders are gone).
            if let Settle::Batch(items) = &job.settle {
                in_flight.fetch_sub(items.len(), Ordering::SeqCst);
            }
            job.settle.resolve(false);
        }
    }
}

/// One job of many: its event is built by the worker from the items, which
/// keep their own events, dedup ids and settles.
pub(super) fn batch(items: Vec<Job>) -> Job {
    Job {
        event: OwnedEvent::Batch(Vec::new()),
        arrived: items[0].arrived,
        settle: Settle::Batch(items),
        dedup: None,
        trace: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::FunctionMetrics;

    fn job(topic: &str, n: u8) -> Job {
        Job {
            event: OwnedEvent::mqtt(topic, vec![n], 1, false),
            arrived: std::time::Instant::now(),
            settle: Settle::Nothing,
            dedup: None,
            trace: None,
        }
    }

    fn items(job: Job) -> Vec<u8> {
        let Settle::Batch(items) = job.settle else {
            panic!("not a batch")
        };
        items
            .iter()
            .map(|item| match &item.event {
                OwnedEvent::Mqtt { payload, .. } => payload[0],
                other => panic!("{other:?}"),
            })
            .collect()
    }

    fn setup(window: Window) -> (Intake, mpsc::Receiver<Job>) {
        let (tx, rx) = mpsc::channel(4);
        let intake = Intake::new(
            vec![tx],
            Arc::new(AtomicUsize::new(0)),
            Arc::new(FunctionMetrics::default()),
        );
        let gathered = batched(&intake, window, Arc::new(AtomicBool::new(false)));
        (gathered, rx)
    }

    #[tokio::test]
    async fn a_batch_closes_when_full_or_when_its_window_ends() {
        let (intake, mut out) = setup(Window {
            size: 3,
            wait: Duration::from_millis(200),
        });
        for n in 0..4 {
            assert!(intake.send(job("a", n)).await);
        }
        let first = out.recv().await.unwrap();
        assert_eq!(items(first), vec![0, 1, 2], "full: it goes at once");
        let started = Instant::now();
        let second = out.recv().await.unwrap();
        assert_eq!(items(second), vec![3]);
        assert!(
            started.elapsed() >= Duration::from_millis(150),
            "a partial batch waits out its window"
        );
        assert_eq!(intake.in_flight.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_window_of_zero_takes_what_is_waiting() {
        let (intake, mut out) = setup(Window {
            size: 10,
            wait: Duration::ZERO,
        });
        for n in 0..3 {
            assert!(intake.send(job("a", n)).await);
        }
        tokio::task::yield_now().await;
        let batch = out.recv().await.unwrap();
        assert!(!items(batch).is_empty());
    }

    #[tokio::test]
    async fn a_stopping_gateway_does_not_wait_out_the_window() {
        let (tx, mut out) = mpsc::channel(4);
        let intake = Intake::new(
            vec![tx],
            Arc::new(AtomicUsize::new(0)),
            Arc::new(FunctionMetrics::default()),
        );
        let draining = Arc::new(AtomicBool::new(false));
        let gathered = batched(
            &intake,
            Window {
                size: 10,
                wait: Duration::from_secs(60),
            },
            draining.clone(),
        );
        assert!(gathered.send(job("a", 7)).await);
        draining.store(true, Ordering::SeqCst);
        // Well before the window's 60 s end.
        let batch = tokio::time::timeout(Duration::from_secs(30), out.recv()).await;
        assert_eq!(items(batch.unwrap().unwrap()), vec![7]);
    }
}
