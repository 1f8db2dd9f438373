//! Metrics a function reports itself (the `metric` host call): counters,
//! gauges and histograms under names it chooses, exported in `/metrics` as
//! `wasmgate_fn_<function>_<name>`.
//!
//! A function's names and label sets are bounded ([`MAX_NAMES`],
//! [`MAX_SERIES`]): a guest that puts a device id or a timestamp in a label
//! would otherwise grow the gateway's memory, and every scrape, without
//! end. Past the bound an update is dropped and counted, and the series
//! already there keep working.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use wasmgate_abi::MetricKind;

/// Names one function may have.
pub const MAX_NAMES: usize = 32;
/// Label sets one function may have, all its names together.
pub const MAX_SERIES: usize = 256;
/// `metric` calls one invocation may make.
pub const MAX_PER_INVOCATION: usize = 100;
const MAX_NAME_BYTES: usize = 64;
const MAX_LABELS: usize = 3;
const MAX_LABEL_VALUE_BYTES: usize = 64;

/// Upper bounds of the histogram buckets: 1, 2.5 and 5 times each power of
/// ten from 0.001 to 10,000 (then `+Inf`), for values of any unit.
pub const BUCKET_BOUNDS: [f64; 23] = [
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    25.0,
    50.0,
    100.0,
    250.0,
    500.0,
    1_000.0,
    2_500.0,
    5_000.0,
    10_000.0,
    f64::INFINITY,
];

pub type Labels = Vec<(String, String)>;

/// One `metric` call, kept until its invocation's outcome is known.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricUpdate {
    pub name: String,
    pub labels: Labels,
    pub kind: MetricKind,
    pub value: f64,
}

impl MetricUpdate {
    /// A call's arguments, checked: `name` or `name{k="v",...}`, a value
    /// that is a number (and not negative for a counter).
    pub fn parse(text: &str, kind: MetricKind, value: f64) -> Result<MetricUpdate, String> {
        if !value.is_finite() {
            return Err(format!("metric {text:?}: the value is not a finite number"));
        }
        if kind == MetricKind::Counter && value < 0.0 {
            return Err(format!("metric {text:?}: a counter only goes up"));
        }
        let (name, labels) = match text.split_once('{') {
            None => (text, ""),
            Some((name, rest)) => match rest.strip_suffix('}') {
                Some(labels) => (name, labels),
                None => return Err(format!("metric {text:?}: labels end with '}}'")),
            },
        };
        if !identifier(name, MAX_NAME_BYTES) {
            return Err(format!(
                "metric {text:?}: a name is [a-zA-Z_][a-zA-Z0-9_]*, at most {MAX_NAME_BYTES} bytes"
            ));
        }
        let mut parsed: Labels = Vec::new();
        for pair in labels.split(',').filter(|p| !p.is_empty()) {
            let bad = || format!("metric {text:?}: labels are key=\"value\", comma-separated");
            let (key, value) = pair.split_once('=').ok_or_else(bad)?;
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .ok_or_else(bad)?;
            if !identifier(key, MAX_NAME_BYTES) || key == "le" || key.starts_with("__") {
                return Err(format!(
                    "metric {text:?}: label {key:?} is not a name (or is `le` or `__...`, which Prometheus keeps for itself)"
                ));
            }
            if value.len() > MAX_LABEL_VALUE_BYTES
                || value
                    .chars()
                    .any(|c| c.is_control() || c == '"' || c == '\\')
            {
                return Err(format!(
                    "metric {text:?}: a label value is at most {MAX_LABEL_VALUE_BYTES} bytes, printable, without '\"' or '\\'"
                ));
            }
            if parsed.iter().any(|(k, _)| k == key) {
                return Err(format!("metric {text:?}: label {key:?} twice"));
            }
            parsed.push((key.to_owned(), value.to_owned()));
        }
        if parsed.len() > MAX_LABELS {
            return Err(format!("metric {text:?}: at most {MAX_LABELS} labels"));
        }
        parsed.sort();
        Ok(MetricUpdate {
            name: name.to_owned(),
            labels: parsed,
            kind,
            value,
        })
    }
}

fn identifier(text: &str, max: usize) -> bool {
    let mut chars = text.chars();
    text.len() <= max
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// One series' value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Counter(f64),
    Gauge(f64),
    Histogram {
        /// Per bucket of [`BUCKET_BOUNDS`], not cumulative.
        buckets: [u64; BUCKET_BOUNDS.len()],
        sum: f64,
    },
}

/// One name: its kind, and a value per label set.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub kind: MetricKind,
    pub series: BTreeMap<Labels, Value>,
}

/// A function's custom metrics.
#[derive(Debug, Default)]
pub struct CustomMetrics {
    families: Mutex<BTreeMap<String, Family>>,
    /// Updates dropped: past the bounds, or of a name used with another kind.
    pub refused: AtomicU64,
}

impl CustomMetrics {
    /// Applies a successful invocation's updates; returns how many were
    /// refused, and how many had been before.
    pub fn apply(&self, updates: &[MetricUpdate]) -> (u64, u64) {
        if updates.is_empty() {
            return (0, 0);
        }
        let mut families = self.families.lock().unwrap_or_else(|e| e.into_inner());
        let mut refused = 0;
        for u in updates {
            let series_count: usize = families.values().map(|f| f.series.len()).sum();
            let names = families.len();
            let family = match families.get_mut(&u.name) {
                Some(f) if f.kind == u.kind => f,
                Some(_) => {
                    refused += 1;
                    continue;
                }
                None if names >= MAX_NAMES || series_count >= MAX_SERIES => {
                    refused += 1;
                    continue;
                }
                None => families.entry(u.name.clone()).or_insert(Family {
                    kind: u.kind,
                    series: BTreeMap::new(),
                }),
            };
            if !family.series.contains_key(&u.labels) && series_count >= MAX_SERIES {
                refused += 1;
                continue;
            }
            let value = family
                .series
                .entry(u.labels.clone())
                .or_insert_with(|| match u.kind {
                    MetricKind::Counter => Value::Counter(0.0),
                    MetricKind::Gauge => Value::Gauge(0.0),
                    MetricKind::Histogram => Value::Histogram {
                        buckets: [0; BUCKET_BOUNDS.len()],
                        sum: 0.0,
                    },
                });
            match value {
                Value::Counter(total) => *total += u.value,
                Value::Gauge(now) => *now = u.value,
                Value::Histogram { buckets, sum } => {
                    let i = BUCKET_BOUNDS
                        .iter()
                        .position(|b| u.value <= *b)
                        .unwrap_or(BUCKET_BOUNDS.len() - 1);
                    buckets[i] += 1;
                    *sum += u.value;
                }
            }
        }
        let before = self.refused.fetch_add(refused, Ordering::Relaxed);
        (refused, before)
    }

    /// The families as they are now, for a scrape.
    pub fn snapshot(&self) -> BTreeMap<String, Family> {
        self.families
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// `wasmgate_fn_<function>_<name>`: a function's name with what a metric
/// name cannot hold (`-`, `.`) as `_`.
pub fn exported_name(function: &str, name: &str, kind: MetricKind) -> String {
    let function: String = function
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    // The encoder adds `_total` to a counter: `dispensed_total` would
    // become `..._total_total`.
    let name = match kind {
        MetricKind::Counter => name.strip_suffix("_total").unwrap_or(name),
        _ => name,
    };
    format!("wasmgate_fn_{function}_{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(text: &str, kind: MetricKind, value: f64) -> MetricUpdate {
        MetricUpdate::parse(text, kind, value).expect("parses")
    }

    #[test]
    fn names_and_labels_parse_and_bad_ones_are_named() {
        let u = update(
            "dispensed{slot=\"a3\",size=\"l\"}",
            MetricKind::Counter,
            1.0,
        );
        assert_eq!(u.name, "dispensed");
        // Sorted: one series whatever order the guest wrote them in.
        assert_eq!(
            u.labels,
            [("size".into(), "l".into()), ("slot".into(), "a3".into())]
        );
        assert!(update("temp_c", MetricKind::Gauge, -4.5).labels.is_empty());
        for (bad, why) in [
            ("9lives", "a name"),
            ("a-b", "a name"),
            ("x{slot=a3}", "key=\"value\""),
            ("x{slot=\"a3\"", "end with"),
            ("x{le=\"1\"}", "le"),
            ("x{__name__=\"y\"}", "__"),
            ("x{a=\"1\",a=\"2\"}", "twice"),
            ("x{a=\"1\",b=\"2\",c=\"3\",d=\"4\"}", "at most 3"),
            ("x{a=\"q\\\"\"}", "printable"),
        ] {
            let e = MetricUpdate::parse(bad, MetricKind::Gauge, 1.0).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert!(MetricUpdate::parse("x", MetricKind::Counter, -1.0).is_err());
        assert!(MetricUpdate::parse("x", MetricKind::Gauge, f64::NAN).is_err());
    }

    #[test]
    fn counters_add_gauges_set_histograms_count_by_bucket() {
        let m = CustomMetrics::default();
        m.apply(&[
            update("sold", MetricKind::Counter, 2.0),
            update("sold", MetricKind::Counter, 3.0),
            update("temp", MetricKind::Gauge, 7.0),
            update("temp", MetricKind::Gauge, 4.0),
            update("lat", MetricKind::Histogram, 0.003),
            update("lat", MetricKind::Histogram, 20_000.0),
        ]);
        let s = m.snapshot();
        assert_eq!(s["sold"].series[&vec![]], Value::Counter(5.0));
        assert_eq!(s["temp"].series[&vec![]], Value::Gauge(4.0));
        let Value::Histogram { buckets, sum } = &s["lat"].series[&vec![]] else {
            panic!("{s:?}")
        };
        assert_eq!((buckets[2], buckets[22], *sum), (1, 1, 20_000.003));
    }

    #[test]
    fn names_and_label_sets_are_bounded_and_the_rest_counted() {
        let m = CustomMetrics::default();
        // One name with a label per device: 256 series, then refused.
        let per_device: Vec<MetricUpdate> = (0..300)
            .map(|i| {
                update(
                    &format!("seen{{device=\"vm-{i}\"}}"),
                    MetricKind::Counter,
                    1.0,
                )
            })
            .collect();
        assert_eq!(m.apply(&per_device).0, 300 - MAX_SERIES as u64);
        // The series there keep counting.
        assert_eq!(
            m.apply(&[update("seen{device=\"vm-1\"}", MetricKind::Counter, 1.0)])
                .0,
            0
        );
        assert_eq!(
            m.snapshot()["seen"].series[&vec![("device".into(), "vm-1".into())]],
            Value::Counter(2.0)
        );
        // A new name finds no room left either.
        assert_eq!(
            m.apply(&[update("other", MetricKind::Gauge, 1.0)]),
            (1, 300 - MAX_SERIES as u64)
        );
        assert_eq!(
            m.refused.load(Ordering::Relaxed),
            300 - MAX_SERIES as u64 + 1
        );

        let names = CustomMetrics::default();
        let many: Vec<MetricUpdate> = (0..40)
            .map(|i| update(&format!("n{i}"), MetricKind::Gauge, 1.0))
            .collect();
        assert_eq!(names.apply(&many).0, 40 - MAX_NAMES as u64);
        // A name used with another kind is refused too.
        assert_eq!(names.apply(&[update("n0", MetricKind::Counter, 1.0)]).0, 1);
    }

    #[test]
    fn exported_names_hold_only_what_a_metric_name_may() {
        assert_eq!(
            exported_name("vending-v2.1", "sold", MetricKind::Gauge),
            "wasmgate_fn_vending_v2_1_sold"
        );
        // The encoder adds `_total` to counters itself.
        assert_eq!(
            exported_name("vm", "dispensed_total", MetricKind::Counter),
            "wasmgate_fn_vm_dispensed"
        );
        assert_eq!(
            exported_name("vm", "dispensed_total", MetricKind::Gauge),
            "wasmgate_fn_vm_dispensed_total"
        );
    }
}
