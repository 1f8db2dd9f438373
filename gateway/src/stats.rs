//! `GET /v1/stats`: what `/metrics` exposes, as JSON for the dashboard
//! (and for any client that would rather not parse OpenMetrics).
//!
//! Only cumulative counters and the gateway's clock (`now_ms`): a reader
//! takes rates from the difference between two of its polls, so the gateway
//! keeps no state per reader and any number of pages can poll it. The
//! duration histogram's buckets are included for the same reason: the
//! percentiles of the last second are those of the buckets' difference,
//! which no cumulative p50 could give.

use crate::metrics::FunctionMetrics;
use crate::registry::Routing;
use crate::scrape::Sources;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

/// The whole answer.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    /// The gateway's clock, Unix milliseconds: rates are per this clock,
    /// not the reader's.
    pub now_ms: i64,
    /// The gateway's own version (`wasmgate --version`).
    pub gateway_version: &'static str,
    pub functions: Vec<FunctionStats>,
    pub outbox: OutboxStats,
    pub store: StoreStats,
    pub upstream: Upstream,
}

/// One function's counters, since the gateway started.
#[derive(Debug, Clone, Serialize)]
pub struct FunctionStats {
    pub name: String,
    /// Events taken and not yet settled: queued or running.
    pub in_flight: u64,
    /// Events taken from its triggers.
    pub events: u64,
    /// Invocations that succeeded.
    pub ok: u64,
    /// Invocations that failed, all kinds together ...
    pub failed: u64,
    /// ... and by kind (`trap`, `deadline`, ... every kind, 0 included, so
    /// a reader need not know the list).
    pub failed_by_kind: BTreeMap<&'static str, u64>,
    pub retries: u64,
    pub dead_letters: u64,
    pub throttles: u64,
    /// QoS 0 events dropped on a full queue.
    pub dropped: u64,
    pub duplicates: u64,
    /// Emits and invokes the host refused.
    pub refused: u64,
    pub emits: u64,
    pub acks: u64,
    /// Responses of its HTTP routes by status class (`2xx` ...); `None`
    /// for a function without routes, as in `/metrics`.
    pub http_responses: Option<BTreeMap<&'static str, u64>>,
    pub duration: DurationStats,
    /// The versions its live alias routes to (two during a canary).
    pub versions: Vec<VersionStats>,
}

/// From an event's arrival to the end of its invocation.
#[derive(Debug, Clone, Serialize)]
pub struct DurationStats {
    pub count: u64,
    pub sum_ms: f64,
    /// The upper bound of the bucket holding the median (exact to a factor
    /// of two, as the histogram is); `None` before the first invocation.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Counts per bucket: `buckets[i]` holds durations in [2^i, 2^(i+1))
    /// µs, the last one everything longer.
    pub buckets: Vec<u64>,
}

/// One version the live alias routes to.
#[derive(Debug, Clone, Serialize)]
pub struct VersionStats {
    pub version: String,
    /// The share of the function's events it gets (1 without a canary).
    pub live_share: f64,
    /// Invocations that had to instantiate its module first ...
    pub cold_starts: u64,
    /// ... and those that took an instance ready in its pool.
    pub warm_starts: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct OutboxStats {
    /// Bytes of undelivered messages, every destination together.
    pub bytes: u64,
    pub written: u64,
    pub deleted: u64,
    /// Dropped by the drop-oldest policy.
    pub dropped: u64,
    pub destinations: Vec<DestinationStats>,
}

/// One outbox drain: what waits for its broker and what the broker did.
#[derive(Debug, Clone, Serialize)]
pub struct DestinationStats {
    /// `local`, `upstream`.
    pub destination: &'static str,
    /// Bytes waiting for it: its backlog.
    pub bytes: u64,
    pub delivered: u64,
    /// Refused by the broker (MQTT 5 reason codes); kept and retried.
    pub refused: u64,
    /// Refused for good, dead-lettered.
    pub undeliverable: u64,
    /// Its broker connection is up now.
    pub connected: bool,
    /// Connections made; all but the first are reconnects.
    pub connects: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StoreStats {
    /// SQLite transactions committed (a group commit is one).
    pub transactions: u64,
    /// Invocations' effects committed.
    pub commits: u64,
    pub failures: u64,
}

/// The upstream link (the drain of the `upstream` destination); `null`
/// where a gateway has no such drain, so a reader can tell "unknown" from
/// "down".
#[derive(Debug, Clone, Default, Serialize)]
pub struct Upstream {
    pub connected: Option<bool>,
    pub reconnects: Option<u64>,
}

/// Everything, read now.
pub fn collect(sources: &Sources) -> Stats {
    let store = sources.store();
    let counts = store.stats();
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let by_destination = store.outbox_bytes_by_destination();
    let functions = sources
        .functions()
        .iter()
        .map(|f| {
            let mut stats = FunctionStats::new(&f.name, &f.metrics, f.http);
            stats.in_flight = f.in_flight.load(Ordering::Relaxed) as u64;
            stats.versions = versions(&f.live.routing());
            stats
        })
        .collect();
    let destinations = sources
        .drains()
        .iter()
        .map(|d| DestinationStats {
            destination: d.destination,
            bytes: backlog(&by_destination, d.destination),
            delivered: get(&d.delivered),
            refused: get(&d.refused),
            undeliverable: get(&d.undeliverable),
            connected: d.link.connected.load(Ordering::Relaxed),
            connects: get(&d.link.connects),
        })
        .collect::<Vec<_>>();
    let upstream = destinations
        .iter()
        .find(|d| d.destination == "upstream")
        .map(|d| Upstream {
            connected: Some(d.connected),
            reconnects: Some(d.connects.saturating_sub(1)),
        })
        .unwrap_or_default();
    Stats {
        now_ms: crate::store::now_ms(),
        gateway_version: env!("CARGO_PKG_VERSION"),
        functions,
        outbox: OutboxStats {
            bytes: by_destination.iter().sum(),
            written: get(&counts.outbox_written),
            deleted: get(&counts.outbox_deleted),
            dropped: get(&counts.outbox_dropped),
            destinations,
        },
        store: StoreStats {
            transactions: get(&counts.transactions),
            commits: get(&counts.commits),
            failures: get(&counts.failures),
        },
        upstream,
    }
}

/// A drain's bytes in the store's per-destination counts.
fn backlog(by_destination: &[u64; 3], destination: &str) -> u64 {
    use crate::store::OutboxDestination as D;
    let index = match destination {
        "local" => D::Local,
        "upstream" => D::Upstream,
        _ => D::Invoke,
    } as usize;
    by_destination[index]
}

impl FunctionStats {
    /// The counters of `metrics` (in flight and versions are the caller's).
    fn new(name: &str, metrics: &FunctionMetrics, http: bool) -> FunctionStats {
        let m = metrics.snapshot();
        let failed_by_kind = crate::runtime::FailureKind::ALL
            .iter()
            .zip(&metrics.failed_by_kind)
            .map(|(kind, n)| (kind.as_str(), n.load(Ordering::Relaxed)))
            .collect();
        let http_responses = http.then(|| {
            ["1xx", "2xx", "3xx", "4xx", "5xx"]
                .into_iter()
                .zip(&metrics.http_responses)
                .map(|(class, n)| (class, n.load(Ordering::Relaxed)))
                .collect()
        });
        // The buckets are read after the snapshot: a count may be ahead of
        // the percentiles by the invocations that ended in between.
        let (sum, _, buckets) = metrics.latency.prometheus();
        let ms = |q: f64| m.latency.quantile(q).map(|d| d.as_secs_f64() * 1000.0);
        FunctionStats {
            name: name.to_owned(),
            in_flight: 0,
            events: m.received,
            ok: m.succeeded,
            failed: m.failed,
            failed_by_kind,
            retries: m.retries,
            dead_letters: m.dead_letters,
            throttles: m.throttled,
            dropped: m.dropped,
            duplicates: m.duplicates,
            refused: m.refused,
            emits: m.emitted,
            acks: m.acked,
            http_responses,
            duration: DurationStats {
                count: buckets.iter().map(|(_, n)| n).sum(),
                sum_ms: sum * 1000.0,
                p50_ms: ms(0.5),
                p99_ms: ms(0.99),
                buckets: buckets.into_iter().map(|(_, n)| n).collect(),
            },
            versions: Vec::new(),
        }
    }
}

/// The versions `routing` sends events to, with their shares.
fn versions(routing: &Routing) -> Vec<VersionStats> {
    let of = |f: &crate::runtime::Function, live_share: f64| VersionStats {
        version: f.version().to_owned(),
        live_share,
        cold_starts: f.cold_starts(),
        warm_starts: f.warm_starts(),
    };
    let other = routing.secondary.as_ref().map_or(0.0, |(_, w)| *w);
    let mut out = vec![of(&routing.primary, 1.0 - other)];
    if let Some((f, share)) = &routing.secondary {
        out.push(of(f, *share));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::FailureKind;
    use std::time::Duration;

    #[test]
    fn percentiles_are_milliseconds_and_absent_before_the_first_invocation() {
        let metrics = FunctionMetrics::default();
        let empty = FunctionStats::new("enrich", &metrics, false);
        assert_eq!((empty.duration.p50_ms, empty.duration.p99_ms), (None, None));
        let json = serde_json::to_value(&empty).unwrap();
        assert!(json["duration"]["p50_ms"].is_null(), "{json}");

        for _ in 0..99 {
            metrics.latency.record(Duration::from_micros(300));
        }
        metrics.latency.record(Duration::from_millis(20));
        let stats = FunctionStats::new("enrich", &metrics, false);
        // 300 µs lies in [256, 512) µs; 20 ms in [16.4, 32.8) ms.
        assert_eq!(stats.duration.p50_ms, Some(0.512));
        assert_eq!(stats.duration.p99_ms, Some(0.512));
        assert_eq!(stats.duration.count, 100);
        assert_eq!(stats.duration.buckets[8], 99);
        assert_eq!(stats.duration.buckets[14], 1);
        assert_eq!(
            stats.duration.buckets.len(),
            26,
            "the page reads bucket i as [2^i, 2^(i+1)) µs"
        );
        assert!((stats.duration.sum_ms - (99.0 * 0.3 + 20.0)).abs() < 1e-9);
        metrics.latency.record(Duration::from_millis(20));
        let stats = FunctionStats::new("enrich", &metrics, false);
        assert_eq!(stats.duration.p99_ms, Some(32.768));
    }

    #[test]
    fn every_failure_kind_is_named_even_at_zero_and_http_only_with_routes() {
        let metrics = FunctionMetrics::default();
        metrics.fail(FailureKind::Deadline);
        metrics.fail(FailureKind::Deadline);
        metrics.count_http(204);
        let stats = FunctionStats::new("hello", &metrics, true);
        assert_eq!(stats.failed, 2);
        assert_eq!(stats.failed_by_kind.len(), FailureKind::ALL.len());
        assert_eq!(stats.failed_by_kind["deadline"], 2);
        assert_eq!(stats.failed_by_kind["trap"], 0);
        let http = stats.http_responses.unwrap();
        assert_eq!((http["2xx"], http["5xx"]), (1, 0));
        let json = serde_json::to_value(FunctionStats::new("enrich", &metrics, false)).unwrap();
        assert!(json["http_responses"].is_null(), "{json}");
    }

    #[test]
    fn a_gateway_reports_its_clock_each_destinations_backlog_and_the_upstream_link() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            crate::store::Store::open(crate::store::StoreOptions::new(dir.path().join("db")))
                .unwrap();
        let sources = Sources::new(store);
        let counter = |n| std::sync::Arc::new(std::sync::atomic::AtomicU64::new(n));
        sources.set_drains(vec![
            crate::scrape::DrainSource {
                destination: "local",
                delivered: counter(3),
                refused: counter(0),
                undeliverable: counter(0),
                link: Default::default(),
            },
            crate::scrape::DrainSource {
                destination: "upstream",
                delivered: counter(5),
                refused: counter(1),
                undeliverable: counter(2),
                link: std::sync::Arc::new(crate::metrics::Link {
                    connected: true.into(),
                    connects: 3.into(),
                }),
            },
        ]);
        let before = crate::store::now_ms();
        let json = serde_json::to_value(collect(&sources)).unwrap();
        assert!(json["now_ms"].as_i64().unwrap() >= before, "{json}");
        assert_eq!(json["functions"], serde_json::json!([]));
        assert_eq!(json["outbox"]["bytes"], 0);
        let upstream = &json["outbox"]["destinations"][1];
        assert_eq!(upstream["destination"], "upstream", "{json}");
        assert_eq!(
            (
                &upstream["delivered"],
                &upstream["refused"],
                &upstream["undeliverable"],
                &upstream["bytes"]
            ),
            (
                &serde_json::json!(5),
                &serde_json::json!(1),
                &serde_json::json!(2),
                &serde_json::json!(0)
            )
        );
        assert_eq!(
            json["upstream"],
            serde_json::json!({ "connected": true, "reconnects": 2 })
        );
        assert_eq!(json["store"]["commits"], 0);
    }
}
