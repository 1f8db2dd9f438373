//! Publishes what functions emit to the local broker.
//!
//! A client of its own, separate from every ingress session: an ingress may
//! pause reading for backpressure, and emits must keep flowing meanwhile or
//! the workers that ingress waits for could never finish.

use super::backoff::Backoff;
use super::Endpoint;
use crate::runtime::Emit;
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, Outgoing, QoS};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use wasmgate_abi::Destination;

/// The publishing side, cheap to share with worker threads.
#[derive(Debug)]
pub struct Egress {
    client: AsyncClient,
    runtime: Handle,
    /// QoS 1 messages handed to the client and not yet PUBACKed.
    unacked: Arc<AtomicI64>,
    warned_upstream: AtomicBool,
}

impl Egress {
    /// Connects (in the background) and starts the task that owns the event loop.
    pub fn start(endpoint: &Endpoint, client_id: String) -> (Egress, JoinHandle<()>) {
        let mut options = endpoint.options(client_id);
        // Emits are not redelivered by anyone else: keep the session so that
        // rumqttc's in-memory retransmission works across reconnects.
        options.set_clean_session(false);
        let (client, eventloop) = AsyncClient::new(options, 1_024);
        let unacked = Arc::new(AtomicI64::new(0));
        let task = tokio::spawn(drive(eventloop, unacked.clone()));
        let egress = Egress {
            client,
            runtime: Handle::current(),
            unacked,
            warned_upstream: AtomicBool::new(false),
        };
        (egress, task)
    }

    /// Publishes one emit; called from worker threads, blocking while the
    /// client's queue is full (the broker is slow or away).
    pub fn publish(&self, function: &str, emit: Emit) {
        if emit.options.destination == Destination::Upstream
            && !self.warned_upstream.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                function,
                topic = %emit.topic,
                "no upstream link in this build yet: upstream emits are published on the local broker"
            );
        }
        let qos = match emit.options.qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        };
        if qos != QoS::AtMostOnce {
            self.unacked.fetch_add(1, Ordering::SeqCst);
        }
        let sent = self.runtime.block_on(self.client.publish(
            emit.topic,
            qos,
            emit.options.retain,
            emit.payload,
        ));
        if let Err(e) = sent {
            tracing::error!(function, "emit could not be queued: {e}");
        }
    }

    /// QoS 1/2 emits not yet acknowledged by the broker.
    pub fn unacked(&self) -> i64 {
        self.unacked.load(Ordering::SeqCst)
    }

    /// Waits (up to `grace`) for the broker to acknowledge every emit, then disconnects.
    pub async fn close(&self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        while self.unacked() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if self.unacked() > 0 {
            tracing::warn!(
                unacked = self.unacked(),
                "shutting down with emits the broker has not acknowledged"
            );
        }
        let _ = self.client.disconnect().await;
    }
}

async fn drive(mut eventloop: EventLoop, unacked: Arc<AtomicI64>) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10), 0x5eed);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Incoming::ConnAck(_))) => backoff.reset(),
            Ok(Event::Incoming(Incoming::PubAck(_) | Incoming::PubComp(_))) => {
                unacked.fetch_sub(1, Ordering::SeqCst);
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(rumqttc::ConnectionError::RequestsDone) => return,
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?delay, "local broker connection (emits) lost");
                tokio::time::sleep(delay).await;
            }
        }
    }
}
