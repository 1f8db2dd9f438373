//! `GET /metrics`: the gateway's counters in the OpenMetrics text format
//! (which Prometheus scrapes), encoded by `prometheus-client` from the
//! atomics the pipeline keeps anyway (`metrics.rs`, the store's and the
//! drains' counters), read at scrape time: nothing more is done per message.
//!
//! Served on the management API (the unix socket; TCP with the token) and,
//! with `[metrics] listen`, on an address of its own for a scraper.

use crate::metrics::{BrokerCounts, FunctionMetrics, Histogram};
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
    /// Its broker connection.
    pub link: Arc<crate::metrics::Link>,
}

/// The embedded broker's last report, if it runs.
type BrokerSource = Box<dyn Fn() -> Option<BrokerCounts> + Send + Sync>;

/// What a scrape reads; the gateway keeps it to what runs (`apply`
/// replaces the functions).
pub struct Sources {
    store: Store,
    functions: RwLock<Vec<FunctionSource>>,
    drains: RwLock<Vec<DrainSource>>,
    broker: RwLock<Option<BrokerSource>>,
    /// The span exporter's counts, with `[tracing]`.
    traces: RwLock<Option<Arc<crate::pipeline::spans::ExportStats>>>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl Sources {
    pub fn new(store: Store) -> Sources {
        Sources {
            store,
            functions: RwLock::new(Vec::new()),
            drains: RwLock::new(Vec::new()),
            broker: RwLock::new(None),
            traces: RwLock::new(None),
        }
    }

    pub fn set_traces(&self, stats: Arc<crate::pipeline::spans::ExportStats>) {
        *self.traces.write().unwrap_or_else(PoisonError::into_inner) = Some(stats);
    }

    pub fn set_broker(&self, counts: impl Fn() -> Option<BrokerCounts> + Send + Sync + 'static) {
        *self.broker.write().unwrap_or_else(PoisonError::into_inner) = Some(Box::new(counts));
    }

    /// The embedded broker's counts; `None` with an external broker, or
    /// before the broker process's first report.
    pub fn broker(&self) -> Option<BrokerCounts> {
        self.broker
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .and_then(|counts| counts())
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
/// A family whose value `T` works out.
type Derived<T, V> = (&'static str, &'static str, fn(&T) -> V);
/// A histogram family, and whether it holds counts (not durations).
type Histogrammed<T> = (&'static str, &'static str, fn(&T) -> &Histogram, bool);

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

/// A histogram family: per label set, a duration histogram (seconds) or,
/// with `counts`, one of whole numbers.
fn histogram<'v>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (Labels<'v>, &'v Histogram, bool)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, h, counts) in values {
        let (sum, count, buckets) = if counts {
            h.prometheus_counts()
        } else {
            h.prometheus()
        };
        metric
            .encode_family(&labels)?
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                sum, count, &buckets, None,
            )?;
    }
    Ok(())
}

/// A function's own metrics (`metric`), each name a family of its own.
/// `taken`: the names exported so far. Two functions can map to one name
/// (`robot-pose` and `robot_pose`, or `a` reporting `b_c` and `a_b`
/// reporting `c`); a family twice makes the whole scrape invalid, so the
/// second is left out, and a warning says so once.
fn custom(
    e: &mut DescriptorEncoder<'_>,
    function: &str,
    metrics: &crate::custom_metrics::CustomMetrics,
    taken: &mut std::collections::HashSet<String>,
) -> Result<(), std::fmt::Error> {
    use crate::custom_metrics::{exported_name, Value, BUCKET_BOUNDS};
    use wasmgate_abi::MetricKind;
    for (name, f) in metrics.snapshot() {
        let kind = match f.kind {
            MetricKind::Counter => MetricType::Counter,
            MetricKind::Gauge => MetricType::Gauge,
            MetricKind::Histogram => MetricType::Histogram,
        };
        let help = format!("Reported by function {function} (metric {name:?}).");
        let exported = exported_name(function, &name, f.kind);
        if !taken.insert(exported.clone()) {
            static WARNED: std::sync::atomic::AtomicBool =
                std::sync::atomic::AtomicBool::new(false);
            if !WARNED.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    function,
                    metric = %name,
                    exported = %exported,
                    "a custom metric is left out of /metrics: another function's metric has the same exported name (rename one)"
                );
            }
            continue;
        }
        let mut metric = e.encode_descriptor(&exported, &help, None, kind)?;
        for (labels, value) in &f.series {
            let labels: Vec<(&str, &str)> = labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let mut encoder = metric.encode_family(&labels)?;
            match value {
                Value::Counter(n) => ConstCounter::new(*n).encode(encoder)?,
                Value::Gauge(n) => ConstGauge::new(*n).encode(encoder)?,
                Value::Histogram { buckets, sum } => {
                    let pairs: Vec<(f64, u64)> = BUCKET_BOUNDS
                        .iter()
                        .copied()
                        .zip(buckets.iter().copied())
                        .collect();
                    let count = buckets.iter().sum();
                    encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                        *sum, count, &pairs, None,
                    )?
                }
            }
        }
    }
    Ok(())
}

fn counter(n: u64) -> ConstCounter<u64> {
    ConstCounter::new(n)
}

impl prometheus_client::collector::Collector for Collect {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let functions = self.0.functions();
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
        let plain: [Counted<FunctionMetrics>; 11] = [
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
            (
                "wasmgate_function_log_lines",
                "Its log lines kept (the gateway's log and the log ring).",
                |m| &m.log_lines,
            ),
            (
                "wasmgate_function_log_lines_dropped",
                "Its log lines dropped: over logs.rate, or past 100 in one invocation.",
                |m| &m.log_lines_dropped,
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
        // Per trigger: the same events by where they came from. The fan-out
        // `invoke` pseudo-trigger of every function is left out until
        // something invokes it.
        let triggers: Vec<(&str, String, Arc<crate::metrics::TriggerMetrics>)> = functions
            .iter()
            .flat_map(|f| {
                f.metrics
                    .triggers
                    .all()
                    .into_iter()
                    .map(|(label, m)| (f.name.as_str(), label, m))
            })
            .filter(|(_, label, m)| label != "invoke" || m.events.load(Ordering::Relaxed) > 0)
            .collect();
        fn by_trigger<'a>(
            t: &'a (&'a str, String, Arc<crate::metrics::TriggerMetrics>),
        ) -> Labels<'a> {
            vec![("function", t.0), ("trigger", t.1.as_str())]
        }
        family(
            &mut e,
            "wasmgate_trigger_events",
            "Events taken through the trigger (kind:what it listens to; invoke: other functions' invokes).",
            MetricType::Counter,
            triggers
                .iter()
                .map(|t| (by_trigger(t), counter(t.2.events.load(Ordering::Relaxed))))
                .collect::<Vec<_>>(),
        )?;
        family(
            &mut e,
            "wasmgate_trigger_dropped",
            "QoS 0 messages of the MQTT trigger dropped because the function's queue was full.",
            MetricType::Counter,
            triggers
                .iter()
                .filter(|t| t.1.starts_with("mqtt:"))
                .map(|t| (by_trigger(t), counter(t.2.dropped.load(Ordering::Relaxed))))
                .collect::<Vec<_>>(),
        )?;
        family(
            &mut e,
            "wasmgate_trigger_http_responses",
            "Responses of the HTTP or WebSocket route, by status class.",
            MetricType::Counter,
            triggers
                .iter()
                .filter(|t| t.1.starts_with("http:") || t.1.starts_with("websocket:"))
                .flat_map(|t| {
                    classes
                        .iter()
                        .zip(&t.2.http_responses)
                        .map(move |(class, n)| {
                            let mut labels = by_trigger(t);
                            labels.push(("status", *class));
                            (labels, counter(n.load(Ordering::Relaxed)))
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
        family(
            &mut e,
            "wasmgate_function_queued",
            "Events in its queues that no worker has taken yet.",
            MetricType::Gauge,
            functions.iter().map(|f| {
                let n = f.metrics.queued.load(Ordering::Relaxed).max(0);
                (vec![("function", f.name.as_str())], ConstGauge::new(n))
            }),
        )?;
        family(
            &mut e,
            "wasmgate_function_custom_metrics_refused",
            "Its own metric updates dropped: past its 32 names or 256 label sets, or a name used with another kind.",
            MetricType::Counter,
            functions.iter().map(|f| {
                let n = f.metrics.custom.refused.load(Ordering::Relaxed);
                (vec![("function", f.name.as_str())], counter(n))
            }),
        )?;
        let mut taken = std::collections::HashSet::new();
        for f in &functions {
            custom(&mut e, &f.name, &f.metrics.custom, &mut taken)?;
        }
        // Per version: the share of events `live` gives it, its starts,
        // and what its invocations used.
        let versions: Vec<(&str, Arc<crate::runtime::Function>, f64)> = functions
            .iter()
            .flat_map(|f| {
                let routing = f.live.routing();
                let other = routing.secondary.as_ref().map_or(0.0, |(_, w)| *w);
                std::iter::once((f.name.as_str(), routing.primary.clone(), 1.0 - other))
                    .chain(routing.secondary.map(|(v, w)| (f.name.as_str(), v, w)))
            })
            .collect();
        fn by_version<'a>(v: &'a (&'a str, Arc<crate::runtime::Function>, f64)) -> Labels<'a> {
            vec![("function", v.0), ("version", v.1.version())]
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
        let per_version: [Derived<crate::runtime::Function, u64>; 2] = [
            (
                "wasmgate_function_cold_starts",
                "Invocations that had to instantiate the version's module first.",
                |f| f.cold_starts(),
            ),
            (
                "wasmgate_function_warm_starts",
                "Invocations that took an instance ready in the version's pool.",
                |f| f.warm_starts(),
            ),
        ];
        for (name, help, of) in per_version {
            family(
                &mut e,
                name,
                help,
                MetricType::Counter,
                versions.iter().map(|v| (by_version(v), counter(of(&v.1)))),
            )?;
        }
        family(
            &mut e,
            "wasmgate_function_version_invocations",
            "Invocations of each version by result: ok, or failed (any kind).",
            MetricType::Counter,
            versions
                .iter()
                .flat_map(|v| {
                    let usage = v.1.usage();
                    [("ok", &usage.ok), ("failed", &usage.failed)].map(|(outcome, n)| {
                        let mut labels = by_version(v);
                        labels.push(("outcome", outcome));
                        (labels, counter(n.load(Ordering::Relaxed)))
                    })
                })
                .collect::<Vec<_>>(),
        )?;
        family(
            &mut e,
            "wasmgate_function_peak_memory_bytes",
            "The largest linear memory an invocation of the version ended with.",
            MetricType::Gauge,
            versions.iter().map(|v| {
                let n = v.1.usage().peak_memory_bytes.load(Ordering::Relaxed) as i64;
                (by_version(v), ConstGauge::new(n))
            }),
        )?;
        let histograms: [Histogrammed<crate::runtime::VersionUsage>; 2] = [
            (
                "wasmgate_function_run_seconds",
                "The version's own time per invocation, from taking an instance to the handler's end.",
                |u| &u.duration,
                false,
            ),
            (
                "wasmgate_function_fuel",
                "Fuel per invocation of the version (guest instructions and host-call charges).",
                |u| &u.fuel,
                true,
            ),
        ];
        for (name, help, of, counts) in histograms {
            histogram(
                &mut e,
                name,
                help,
                versions
                    .iter()
                    .map(|v| (by_version(v), of(v.1.usage()), counts)),
            )?;
        }
        histogram(
            &mut e,
            "wasmgate_function_duration_seconds",
            "From an event's arrival at the gateway to the end of its invocation.",
            functions.iter().map(|f| {
                (
                    vec![("function", f.name.as_str())],
                    &f.metrics.latency,
                    false,
                )
            }),
        )?;
        // The store and the outbox.
        let stats = self.0.store.stats();
        let get = |c: &AtomicU64| counter(c.load(Ordering::Relaxed));
        let store: [(&str, &str, &AtomicU64); 8] = [
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
            (
                "wasmgate_log_lines_written",
                "Function log lines written to the log ring.",
                &stats.log_lines_written,
            ),
            (
                "wasmgate_log_lines_lost",
                "Function log lines lost before the ring: the buffer in front of it was full (the disk stalled).",
                &stats.log_lines_dropped,
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
        histogram(
            &mut e,
            "wasmgate_store_commit_seconds",
            "How long each transaction took, its fsync included.",
            [(Labels::new(), &stats.commit_seconds, false)],
        )?;
        histogram(
            &mut e,
            "wasmgate_store_commit_invocations",
            "Invocations' effects per transaction (what a group commit shares).",
            [(Labels::new(), &stats.commit_size, true)],
        )?;
        // Per destination: what waits, and since when. A read of the store
        // (see Store::outbox_backlog); a failed one leaves the gauges out.
        use crate::store::OutboxDestination as D;
        let now = crate::store::now_ms();
        // [rows, bytes, age of the oldest in seconds] per destination.
        let backlog: Vec<(&str, [i64; 3])> = [
            (D::Local, "local"),
            (D::Upstream, "upstream"),
            (D::Invoke, "invoke"),
        ]
        .into_iter()
        .filter_map(|(d, name)| {
            let b = self.0.store.outbox_backlog(d).ok()?;
            let age = b.oldest_ms.map_or(0, |at| (now - at).max(0) / 1000);
            Some((name, [b.rows as i64, b.bytes as i64, age]))
        })
        .collect();
        let gauges = [
            (
                "wasmgate_outbox_rows",
                "Undelivered rows in the outbox (invoke: fan-out invokes waiting to run).",
            ),
            (
                "wasmgate_outbox_bytes",
                "Bytes (topics and payloads) of the undelivered rows.",
            ),
            (
                "wasmgate_outbox_oldest_age_seconds",
                "How long the oldest undelivered row has waited; 0 when none waits.",
            ),
        ];
        for (i, (name, help)) in gauges.into_iter().enumerate() {
            family(
                &mut e,
                name,
                help,
                MetricType::Gauge,
                backlog
                    .iter()
                    .map(|(d, b)| (vec![("destination", *d)], ConstGauge::new(b[i])))
                    .collect::<Vec<_>>(),
            )?;
        }
        let drains = self.0.drains();
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
        family(
            &mut e,
            "wasmgate_link_connected",
            "1 while the drain's broker connection is up (upstream: the cloud link).",
            MetricType::Gauge,
            drains
                .iter()
                .map(|d| {
                    let up = d.link.connected.load(Ordering::Relaxed);
                    (
                        vec![("destination", d.destination)],
                        ConstGauge::new(i64::from(up)),
                    )
                })
                .collect::<Vec<_>>(),
        )?;
        family(
            &mut e,
            "wasmgate_link_connects",
            "Connections the drain made to its broker; all but the first are reconnects.",
            MetricType::Counter,
            drains
                .iter()
                .map(|d| (vec![("destination", d.destination)], get(&d.link.connects)))
                .collect::<Vec<_>>(),
        )?;
        let traces = self
            .0
            .traces
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(traces) = traces {
            let counted: [(&str, &str, &AtomicU64); 3] = [
                (
                    "wasmgate_trace_spans_exported",
                    "Spans the OTLP collector took.",
                    &traces.exported,
                ),
                (
                    "wasmgate_trace_spans_refused",
                    "Spans the collector refused for good (a 4xx answer other than 429): dropped.",
                    &traces.refused,
                ),
                (
                    "wasmgate_trace_export_failures",
                    "Export requests that failed (collector unreachable, 5xx, 429) and are retried.",
                    &traces.failures,
                ),
            ];
            for (name, help, c) in counted {
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
                "wasmgate_trace_spans_dropped",
                "Spans dropped before the collector had them: past tracing.keep, or the buffer before the database was full.",
                MetricType::Counter,
                [(Labels::new(), get(&self.0.store.stats().spans_dropped))],
            )?;
            // Read from SQLite, as the outbox's backlog is.
            let waiting = self.0.store.spans_waiting().unwrap_or(0);
            family(
                &mut e,
                "wasmgate_trace_spans_waiting",
                "Spans in the database waiting for the collector.",
                MetricType::Gauge,
                [(Labels::new(), ConstGauge::new(waiting as i64))],
            )?;
            family(
                &mut e,
                "wasmgate_trace_collector_reachable",
                "1 when the last export request reached the collector.",
                MetricType::Gauge,
                [(
                    Labels::new(),
                    ConstGauge::new(i64::from(traces.reachable.load(Ordering::Relaxed))),
                )],
            )?;
        }
        if let Some(broker) = self.0.broker() {
            family(
                &mut e,
                "wasmgate_broker_connections",
                "Connections the embedded broker's listeners hold now (gateway: its own sessions).",
                MetricType::Gauge,
                broker
                    .connections
                    .iter()
                    .map(|(listener, n)| {
                        (
                            vec![("listener", listener.as_str())],
                            ConstGauge::new(*n as i64),
                        )
                    })
                    .collect::<Vec<_>>(),
            )?;
            let plain: [(&str, &str, u64, MetricType); 5] = [
                (
                    "wasmgate_broker_connections_refused",
                    "Connections the embedded broker closed at once: their listener was at its cap.",
                    broker.connections_refused,
                    MetricType::Counter,
                ),
                (
                    "wasmgate_broker_retained",
                    "Retained messages the embedded broker holds.",
                    broker.retained,
                    MetricType::Gauge,
                ),
                (
                    "wasmgate_broker_retained_bytes",
                    "Bytes of the retained messages the embedded broker holds.",
                    broker.retained_bytes,
                    MetricType::Gauge,
                ),
                (
                    "wasmgate_broker_retained_refused",
                    "Retained messages delivered but not kept: past the broker's bounds.",
                    broker.retained_refused,
                    MetricType::Counter,
                ),
                (
                    "wasmgate_broker_restarts",
                    "Times the embedded broker's process died and was started again.",
                    broker.restarts,
                    MetricType::Counter,
                ),
            ];
            for (name, help, n, kind) in plain {
                let labels = Labels::new();
                if kind == MetricType::Counter {
                    family(&mut e, name, help, kind, [(labels, counter(n))])?;
                } else {
                    family(
                        &mut e,
                        name,
                        help,
                        kind,
                        [(labels, ConstGauge::new(n as i64))],
                    )?;
                }
            }
        }
        Ok(())
    }
}
