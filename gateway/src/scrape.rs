//! `GET /metrics`: the gateway's counters in the OpenMetrics text format
//! (which Prometheus scrapes), encoded by `prometheus-client` from the
//! atomics the pipeline keeps anyway (`metrics.rs`, the store's and the
//! drains' counters), read at scrape time: nothing more is done per message.
//!
//! Served on the management API (the unix socket; TCP with the token) and,
//! with `[metrics] listen`, on an address of its own for a scraper.

use crate::metrics::FunctionMetrics;
use crate::registry::Live;
use crate::store::Store;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

/// One function, as a scrape reads it.
#[derive(Debug, Clone)]
pub struct FunctionSource {
    pub name: String,
    pub metrics: Arc<FunctionMetrics>,
    pub live: Arc<Live>,
    pub in_flight: Arc<AtomicUsize>,
    /// It has HTTP or WebSocket routes (its response counts are shown).
    pub http: bool,
}

/// One outbox drain's counters.
#[derive(Debug, Clone)]
pub struct DrainSource {
    /// `local`, `upstream`.
    pub destination: &'static str,
    pub delivered: Arc<AtomicU64>,
    pub refused: Arc<AtomicU64>,
    pub undeliverable: Arc<AtomicU64>,
}

/// What a scrape reads; the gateway keeps it to what runs (`apply`
/// replaces the functions).
#[derive(Debug)]
pub struct Sources {
    store: Store,
    functions: RwLock<Vec<FunctionSource>>,
    drains: RwLock<Vec<DrainSource>>,
}

impl Sources {
    pub fn new(store: Store) -> Sources {
        Sources {
            store,
            functions: RwLock::new(Vec::new()),
            drains: RwLock::new(Vec::new()),
        }
    }

    pub fn set_functions(&self, functions: Vec<FunctionSource>) {
        *self
            .functions
            .write()
            .unwrap_or_else(PoisonError::into_inner) = functions;
    }

    pub fn set_drains(&self, drains: Vec<DrainSource>) {
        *self.drains.write().unwrap_or_else(PoisonError::into_inner) = drains;
    }

    /// The store, for `/v1/stats` (`stats.rs`), which reads what a scrape reads.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The functions as they run now: a copy, so no lock is held while
    /// they are read.
    pub fn functions(&self) -> Vec<FunctionSource> {
        self.functions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The outbox drains, a copy like [`Sources::functions`].
    pub fn drains(&self) -> Vec<DrainSource> {
        self.drains
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The exposition, `# EOF` included.
    pub fn render(self: &Arc<Self>) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(Collect(self.clone())));
        let mut out = String::new();
        // Writing to a String does not fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

/// The content type of [`Sources::render`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug)]
struct Collect(Arc<Sources>);

type Labels<'a> = Vec<(&'static str, &'a str)>;

/// A counter family: its name, its help, and where its value is in `T`.
type Counted<T> = (&'static str, &'static str, fn(&T) -> &AtomicU64);

/// One metric family: its descriptor, then a value per label set.
fn family<'v, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    values: impl IntoIterator<Item = (Labels<'v>, M)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in values {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter(n: u64) -> ConstCounter<u64> {
    ConstCounter::new(n)
}

impl prometheus_client::collector::Collector for Collect {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let functions = self
            .0
            .functions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let each = |of: fn(&FunctionMetrics) -> &AtomicU64| {
            functions
                .iter()
                .map(move |f| {
                    (
                        vec![("function", f.name.as_str())],
                        counter(of(&f.metrics).load(Ordering::Relaxed)),
                    )
                })
                .collect::<Vec<_>>()
        };
        let plain: [Counted<FunctionMetrics>; 9] = [
            (
                "wasmgate_function_events",
                "Events taken for the function from its triggers.",
                |m| &m.received,
            ),
            (
                "wasmgate_function_emits",
                "Messages emitted by its successful invocations.",
                |m| &m.emitted,
            ),
            (
                "wasmgate_function_acks",
                "Messages acknowledged to the broker once their effects were durable.",
                |m| &m.acked,
            ),
            (
                "wasmgate_function_dropped",
                "QoS 0 events dropped because its queue was full.",
                |m| &m.dropped,
            ),
            (
                "wasmgate_function_duplicates",
                "Events acknowledged without running: their dedup id was seen.",
                |m| &m.duplicates,
            ),
            (
                "wasmgate_function_retries",
                "Attempts run again after a retryable failure.",
                |m| &m.retries,
            ),
            (
                "wasmgate_function_dead_letters",
                "Events that failed every attempt and were dead-lettered.",
                |m| &m.dead_letters,
            ),
            (
                "wasmgate_function_throttles",
                "Events that found its queue full and waited for room.",
                |m| &m.throttled,
            ),
            (
                "wasmgate_function_refused_effects",
                "Emits and invokes the host refused (outside the grants, bad topics).",
                |m| &m.refused,
            ),
        ];
        for (name, help, of) in plain {
            family(&mut e, name, help, MetricType::Counter, each(of))?;
        }
        // `ok`, and each failure kind by its config name (`deadline`,
        // `trap`, ... and `failed`: the function returned an error).
        let outcomes = functions.iter().flat_map(|f| {
            let ok = ("ok", f.metrics.succeeded.load(Ordering::Relaxed));
            let failed = crate::runtime::FailureKind::ALL
                .iter()
                .zip(&f.metrics.failed_by_kind)
                .map(|(kind, n)| (kind.as_str(), n.load(Ordering::Relaxed)));
            std::iter::once(ok).chain(failed).map(|(outcome, n)| {
                (
                    vec![("function", f.name.as_str()), ("outcome", outcome)],
                    counter(n),
                )
            })
        });
        family(
            &mut e,
            "wasmgate_function_invocations",
            "Invocations by outcome: ok, or the failure kind (each attempt of a retried event counts).",
            MetricType::Counter,
            outcomes.collect::<Vec<_>>(),
        )?;
        let classes = ["1xx", "2xx", "3xx", "4xx", "5xx"];
        family(
            &mut e,
            "wasmgate_function_http_responses",
            "Responses of the function's HTTP routes, by status class (from the function, or the gateway's own: 401, 413, 503...).",
            MetricType::Counter,
            functions
                .iter()
                .filter(|f| f.http)
                .flat_map(|f| {
                    classes.iter().zip(&f.metrics.http_responses).map(|(class, n)| {
                        (
                            vec![("function", f.name.as_str()), ("status", *class)],
                            counter(n.load(Ordering::Relaxed)),
                        )
                    })
                })
                .collect::<Vec<_>>(),
        )?;
        family(
            &mut e,
            "wasmgate_function_in_flight",
            "Events taken and not yet settled: queued or running.",
            MetricType::Gauge,
            functions.iter().map(|f| {
                let n = f.in_flight.load(Ordering::Relaxed) as i64;
                (vec![("function", f.name.as_str())], ConstGauge::new(n))
            }),
        )?;
        // Per version: the share of events `live` gives it, and its starts.
        let versions: Vec<(String, String, f64, u64, u64)> = functions
            .iter()
            .flat_map(|f| {
                let routing = f.live.routing();
                let mut out = vec![(
                    f.name.clone(),
                    routing.primary.version().to_owned(),
                    1.0 - routing.secondary.as_ref().map_or(0.0, |(_, w)| *w),
                    routing.primary.cold_starts(),
                    routing.primary.warm_starts(),
                )];
                if let Some((other, share)) = &routing.secondary {
                    out.push((
                        f.name.clone(),
                        other.version().to_owned(),
                        *share,
                        other.cold_starts(),
                        other.warm_starts(),
                    ));
                }
                out
            })
            .collect();
        fn by_version(v: &(String, String, f64, u64, u64)) -> Labels<'_> {
            vec![("function", v.0.as_str()), ("version", v.1.as_str())]
        }
        family(
            &mut e,
            "wasmgate_function_live_share",
            "The share of the function's events its live alias gives each version.",
            MetricType::Gauge,
            versions
                .iter()
                .map(|v| (by_version(v), ConstGauge::new(v.2))),
        )?;
        family(
            &mut e,
            "wasmgate_function_cold_starts",
            "Invocations that had to instantiate the version's module first.",
            MetricType::Counter,
            versions.iter().map(|v| (by_version(v), counter(v.3))),
        )?;
        family(
            &mut e,
            "wasmgate_function_warm_starts",
            "Invocations that took an instance ready in the version's pool.",
            MetricType::Counter,
            versions.iter().map(|v| (by_version(v), counter(v.4))),
        )?;
        {
            let mut metric = e.encode_descriptor(
                "wasmgate_function_duration_seconds",
                "From an event's arrival at the gateway to the end of its invocation.",
                None,
                MetricType::Histogram,
            )?;
            for f in &functions {
                let (sum, count, buckets) = f.metrics.latency.prometheus();
                let labels = vec![("function", f.name.as_str())];
                metric
                    .encode_family(&labels)?
                    .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                        sum, count, &buckets, None,
                    )?;
            }
        }
        // The store and the outbox.
        let stats = self.0.store.stats();
        let get = |c: &AtomicU64| counter(c.load(Ordering::Relaxed));
        let store: [(&str, &str, &AtomicU64); 6] = [
            (
                "wasmgate_store_transactions",
                "SQLite transactions committed (a group commit is one).",
                &stats.transactions,
            ),
            (
                "wasmgate_store_commits",
                "Invocations' effects committed.",
                &stats.commits,
            ),
            (
                "wasmgate_store_failures",
                "Transactions that failed (their messages were not acknowledged).",
                &stats.failures,
            ),
            (
                "wasmgate_outbox_written",
                "Outbox rows written.",
                &stats.outbox_written,
            ),
            (
                "wasmgate_outbox_deleted",
                "Outbox rows deleted once delivered.",
                &stats.outbox_deleted,
            ),
            (
                "wasmgate_outbox_dropped",
                "Outbox rows dropped by the drop-oldest policy.",
                &stats.outbox_dropped,
            ),
        ];
        for (name, help, c) in store {
            family(
                &mut e,
                name,
                help,
                MetricType::Counter,
                [(Labels::new(), get(c))],
            )?;
        }
        family(
            &mut e,
            "wasmgate_outbox_bytes",
            "Bytes of undelivered messages in the outbox.",
            MetricType::Gauge,
            [(
                Labels::new(),
                ConstGauge::new(self.0.store.outbox_bytes() as i64),
            )],
        )?;
        let drains = self
            .0
            .drains
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let per_drain: [Counted<DrainSource>; 3] = [
            (
                "wasmgate_outbox_delivered",
                "Outbox rows a broker took.",
                |d| &d.delivered,
            ),
            (
                "wasmgate_outbox_refused",
                "Outbox rows a broker refused (MQTT 5 reason codes); kept and retried.",
                |d| &d.refused,
            ),
            (
                "wasmgate_outbox_undeliverable",
                "Outbox rows no broker would take, dead-lettered.",
                |d| &d.undeliverable,
            ),
        ];
        for (name, help, of) in per_drain {
            family(
                &mut e,
                name,
                help,
                MetricType::Counter,
                drains
                    .iter()
                    .map(|d| (vec![("destination", d.destination)], get(of(d))))
                    .collect::<Vec<_>>(),
            )?;
        }
        Ok(())
    }
}
