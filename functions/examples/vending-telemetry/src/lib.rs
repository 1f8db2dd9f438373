//! Vending machine telemetry.
//!
//! Machines publish to `vending/<machine>/telemetry`:
//!
//! ```json
//! {"machine":"vm-17","ts":1764160000000,"temp_c":6.8,"door_open":false,
//!  "stock":[{"slot":"A1","count":2}],"sale":{"slot":"A1","price_cents":150}}
//! ```
//!
//! For each message the function
//! - keeps running totals per machine in KV: `<machine>/sales_cents` and
//!   `<machine>/vends` (counters), `<machine>/last_temp_c` (a JSON number);
//! - emits an alert to `vending/<machine>/alert` (local broker) when the
//!   temperature is over `max_temp_c` (config, default 8.0) or a slot's stock is
//!   at or below `low_stock` (config, default 2);
//! - emits a compact summary upstream to `telemetry/vending/<machine>` (QoS 1);
//! - reports the temperature (a histogram) and warm alerts (a counter) as
//!   metrics of its own.
//!
//! The machine id is taken from the topic, not the payload: the topic is what
//! the broker authenticated, and a topic level can never hold `/`, `+` or `#`.
#![cfg_attr(target_arch = "wasm32", no_std)]

use heapless::String;
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use wasmgate_sdk::{Ctx, Error, Event, LogLevel};

/// Returned (and logged) when a payload is not the telemetry JSON above.
pub const BAD_TELEMETRY: i32 = 10;
/// Returned when the topic is not `vending/<machine>/telemetry`.
pub const BAD_TOPIC: i32 = 11;

const DEFAULT_MAX_TEMP_C: f32 = 8.0;
const DEFAULT_LOW_STOCK: u32 = 2;
/// Slots a machine may report; more is refused as bad telemetry.
const MAX_SLOTS: usize = 64;

#[derive(Debug, Deserialize)]
struct Telemetry<'a> {
    ts: u64,
    temp_c: f32,
    #[serde(default)]
    door_open: bool,
    #[serde(default, borrow)]
    stock: heapless::Vec<Slot<'a>, MAX_SLOTS>,
    #[serde(borrow)]
    sale: Option<Sale<'a>>,
}

#[derive(Debug, Deserialize)]
struct Slot<'a> {
    slot: &'a str,
    count: u32,
}

#[derive(Debug, Deserialize)]
struct Sale<'a> {
    #[allow(dead_code)] // parsed to validate; totals are per machine
    slot: &'a str,
    price_cents: u32,
}

#[derive(Serialize)]
struct Alert<'a> {
    machine: &'a str,
    ts: u64,
    temp_c: f32,
    max_temp_c: f32,
    too_warm: bool,
    door_open: bool,
    /// The slots at or below the low-stock threshold.
    low_stock: LowSlots<'a>,
}

#[derive(Serialize)]
struct Summary<'a> {
    machine: &'a str,
    ts: u64,
    temp_c: f32,
    door_open: bool,
    sales_cents: i64,
    vends: i64,
    low_slots: usize,
}

/// Serializes the names of the low slots without copying them anywhere.
#[derive(Clone, Copy)]
struct LowSlots<'a> {
    stock: &'a [Slot<'a>],
    threshold: u32,
}

impl<'a> LowSlots<'a> {
    fn iter(self) -> impl Iterator<Item = &'a str> {
        self.stock
            .iter()
            .filter(move |s| s.count <= self.threshold)
            .map(|s| s.slot)
    }
}

impl Serialize for LowSlots<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(None)?;
        for slot in self.iter() {
            seq.serialize_element(slot)?;
        }
        seq.end()
    }
}

pub fn handle(event: &Event<'_>, ctx: &mut Ctx<'_>) -> Result<(), Error> {
    for event in wasmgate_sdk::events(event) {
        let Event::Mqtt(msg) = event? else {
            return Err(Error::msg("vending-telemetry handles MQTT messages only"));
        };
        on_telemetry(msg.topic, msg.payload, ctx)?;
    }
    Ok(())
}

fn on_telemetry(topic: &str, payload: &[u8], ctx: &mut Ctx<'_>) -> Result<(), Error> {
    let Some(machine) = machine_of(topic) else {
        ctx.log_parts(
            LogLevel::Error,
            &["not a vending/<machine>/telemetry topic: ", topic],
        );
        return Err(Error::user(BAD_TOPIC, "unexpected topic"));
    };
    let telemetry: Telemetry = match serde_json_core::from_slice(payload) {
        Ok((telemetry, _)) => telemetry,
        Err(_) => {
            ctx.log_parts(LogLevel::Error, &["invalid telemetry JSON on ", topic]);
            return Err(Error::user(BAD_TELEMETRY, "telemetry is not valid JSON"));
        }
    };
    let max_temp_c = ctx.config_or("max_temp_c", DEFAULT_MAX_TEMP_C)?;
    let low_stock = ctx.config_or("low_stock", DEFAULT_LOW_STOCK)?;

    // Running totals: increments add up at commit, so concurrent invocations
    // for one machine never lose a sale.
    let (sales_cents, vends) = match &telemetry.sale {
        Some(sale) => (
            ctx.kv_increment(&join(&[machine, "/sales_cents"])?, sale.price_cents.into())?,
            ctx.kv_increment(&join(&[machine, "/vends"])?, 1)?,
        ),
        None => (
            ctx.kv_get_i64(&join(&[machine, "/sales_cents"])?)?
                .unwrap_or(0),
            ctx.kv_get_i64(&join(&[machine, "/vends"])?)?.unwrap_or(0),
        ),
    };
    let mut number = [0u8; 24];
    ctx.kv_put(
        &join(&[machine, "/last_temp_c"])?,
        json(&telemetry.temp_c, &mut number)?,
    )?;

    let low = LowSlots {
        stock: &telemetry.stock,
        threshold: low_stock,
    };
    let low_slots = low.iter().count();
    let too_warm = telemetry.temp_c > max_temp_c;
    // The fleet's temperatures and warm alerts, in the gateway's /metrics
    // (`wasmgate_fn_vending_temperature_c`...): no label per machine, which
    // a fleet would soon take past a function's 256 label sets.
    ctx.observe("temperature_c", f64::from(telemetry.temp_c))?;
    if too_warm {
        ctx.counter("warm_alerts", 1.0)?;
    }
    if too_warm || low_slots > 0 {
        let alert = Alert {
            machine,
            ts: telemetry.ts,
            temp_c: telemetry.temp_c,
            max_temp_c,
            too_warm,
            door_open: telemetry.door_open,
            low_stock: low,
        };
        let mut buf = [0u8; 1024];
        ctx.emit(
            &join(&["vending/", machine, "/alert"])?,
            json(&alert, &mut buf)?,
        )?;
    }

    let summary = Summary {
        machine,
        ts: telemetry.ts,
        temp_c: telemetry.temp_c,
        door_open: telemetry.door_open,
        sales_cents,
        vends,
        low_slots,
    };
    let mut buf = [0u8; 256];
    ctx.emit_upstream(
        &join(&["telemetry/vending/", machine])?,
        json(&summary, &mut buf)?,
    )
}

/// `vending/<machine>/telemetry` -> `<machine>`.
fn machine_of(topic: &str) -> Option<&str> {
    let machine = topic.strip_prefix("vending/")?.strip_suffix("/telemetry")?;
    (!machine.is_empty() && !machine.contains('/')).then_some(machine)
}

/// Joins parts into a key or topic; an id that makes one over 128 bytes is refused.
fn join(parts: &[&str]) -> Result<String<128>, Error> {
    let mut out = String::new();
    for part in parts {
        out.push_str(part)
            .map_err(|_| Error::msg("machine id too long"))?;
    }
    Ok(out)
}

fn json<'b>(value: &impl Serialize, buf: &'b mut [u8]) -> Result<&'b [u8], Error> {
    let len = serde_json_core::to_slice(value, buf)
        .map_err(|_| Error::msg("output JSON over its buffer"))?;
    Ok(&buf[..len])
}

wasmgate_sdk::export!(handle);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmgate_sdk::testing::{mqtt, FakeHost};
    use wasmgate_sdk::Destination;

    const TOPIC: &str = "vending/vm-17/telemetry";

    fn telemetry(temp_c: f32, stock: &str, sale: Option<u32>) -> std::string::String {
        let sale = sale
            .map(|cents| format!(r#","sale":{{"slot":"A1","price_cents":{cents}}}"#))
            .unwrap_or_default();
        format!(
            r#"{{"machine":"vm-17","ts":1764160000000,"temp_c":{temp_c},"door_open":false,"stock":{stock}{sale}}}"#
        )
    }

    const FULL: &str = r#"[{"slot":"A1","count":9},{"slot":"B2","count":5}]"#;

    #[track_caller]
    fn send(host: &mut FakeHost, payload: &str) {
        host.call(handle, &mqtt(TOPIC, payload))
            .expect("invocation succeeds");
    }

    #[test]
    fn sales_accumulate_per_machine_across_events() {
        let mut host = FakeHost::new();
        send(&mut host, &telemetry(5.0, FULL, Some(150)));
        send(&mut host, &telemetry(5.0, FULL, None));
        send(&mut host, &telemetry(5.0, FULL, Some(200)));
        assert_eq!(host.counter("vm-17/sales_cents"), Some(350));
        assert_eq!(host.counter("vm-17/vends"), Some(2));
        host.call(
            handle,
            &mqtt("vending/vm-9/telemetry", &telemetry(5.0, FULL, Some(99))),
        )
        .unwrap();
        assert_eq!(host.counter("vm-9/sales_cents"), Some(99));
        assert_eq!(host.counter("vm-17/sales_cents"), Some(350));
    }

    #[test]
    fn the_last_temperature_is_kept_as_a_json_number() {
        let mut host = FakeHost::new();
        send(&mut host, &telemetry(6.8, FULL, None));
        assert_eq!(host.kv("vm-17/last_temp_c"), Some(&b"6.8"[..]));
    }

    #[test]
    fn every_message_sends_a_summary_upstream_with_the_totals() {
        let mut host = FakeHost::new();
        send(&mut host, &telemetry(5.0, FULL, Some(150)));
        send(&mut host, &telemetry(5.5, FULL, None));
        let summaries = host.emits_to("telemetry/vending/vm-17");
        assert_eq!(summaries.len(), 2);
        assert_eq!(summaries[1].options.destination, Destination::Upstream);
        assert_eq!(summaries[1].options.qos, 1);
        assert_eq!(
            summaries[1].text(),
            r#"{"machine":"vm-17","ts":1764160000000,"temp_c":5.5,"door_open":false,"sales_cents":150,"vends":1,"low_slots":0}"#
        );
    }

    #[test]
    fn temperatures_and_warm_alerts_are_reported_as_metrics() {
        use wasmgate_sdk::MetricKind;
        let mut host = FakeHost::new();
        send(&mut host, &telemetry(6.5, FULL, None));
        send(&mut host, &telemetry(9.5, FULL, None));
        let metrics: std::vec::Vec<_> = host
            .metrics()
            .iter()
            .map(|m| (m.name.as_str(), m.kind, m.value))
            .collect();
        assert_eq!(
            metrics,
            [
                ("temperature_c", MetricKind::Histogram, 6.5),
                ("temperature_c", MetricKind::Histogram, 9.5),
                ("warm_alerts", MetricKind::Counter, 1.0),
            ]
        );
    }

    #[test]
    fn no_alert_below_the_thresholds() {
        let mut host = FakeHost::new();
        send(&mut host, &telemetry(8.0, FULL, Some(150)));
        assert!(host.emits_to("vending/vm-17/alert").is_empty());
    }

    #[test]
    fn a_warm_machine_raises_a_local_alert() {
        let mut host = FakeHost::new();
        send(&mut host, &telemetry(9.5, FULL, None));
        let alerts = host.emits_to("vending/vm-17/alert");
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].options.destination, Destination::Local);
        assert_eq!(
            alerts[0].text(),
            r#"{"machine":"vm-17","ts":1764160000000,"temp_c":9.5,"max_temp_c":8.0,"too_warm":true,"door_open":false,"low_stock":[]}"#
        );
    }

    #[test]
    fn slots_at_or_below_the_low_stock_threshold_are_listed_in_the_alert() {
        let mut host = FakeHost::new();
        let stock = r#"[{"slot":"A1","count":2},{"slot":"A2","count":3},{"slot":"B1","count":0}]"#;
        send(&mut host, &telemetry(5.0, stock, None));
        let alert = host.emits_to("vending/vm-17/alert")[0].text().to_owned();
        assert!(alert.contains(r#""too_warm":false"#), "{alert}");
        assert!(alert.contains(r#""low_stock":["A1","B1"]"#), "{alert}");
        let summary = host.emits_to("telemetry/vending/vm-17")[0]
            .text()
            .to_owned();
        assert!(summary.contains(r#""low_slots":2"#), "{summary}");
    }

    #[test]
    fn thresholds_come_from_the_config() {
        let mut host = FakeHost::new();
        host.set_config("max_temp_c", "4.5")
            .set_config("low_stock", "5");
        send(&mut host, &telemetry(5.0, FULL, None));
        let alert = host.emits_to("vending/vm-17/alert")[0].text().to_owned();
        assert!(alert.contains(r#""too_warm":true"#), "{alert}");
        assert!(alert.contains(r#""low_stock":["B2"]"#), "{alert}");
    }

    #[test]
    fn invalid_json_fails_the_invocation_and_changes_nothing() {
        let mut host = FakeHost::new();
        send(&mut host, &telemetry(5.0, FULL, Some(150)));
        host.clear_outputs();
        let err = host
            .call(handle, &mqtt(TOPIC, r#"{"ts":1,"temp_c":"#))
            .unwrap_err();
        assert_eq!(err.code(), BAD_TELEMETRY);
        assert!(host.logged(
            LogLevel::Error,
            "invalid telemetry JSON on vending/vm-17/telemetry"
        ));
        assert!(host.emits().is_empty());
        assert_eq!(host.counter("vm-17/sales_cents"), Some(150));
    }

    #[test]
    fn a_failed_invocation_logs_why_through_the_export_glue() {
        let mut host = FakeHost::new();
        let code = host.handle_encoded(&mqtt(TOPIC, "not json"), 4096, handle);
        assert_eq!(code, BAD_TELEMETRY);
        assert!(host.logged(
            LogLevel::Error,
            "function failed: telemetry is not valid JSON"
        ));
    }

    #[test]
    fn a_message_on_an_unexpected_topic_is_refused() {
        let mut host = FakeHost::new();
        let err = host
            .call(
                handle,
                &mqtt("vending/a/b/telemetry", &telemetry(5.0, FULL, None)),
            )
            .unwrap_err();
        assert_eq!(err.code(), BAD_TOPIC);
    }

    #[test]
    fn a_bad_threshold_in_the_config_fails_loudly() {
        let mut host = FakeHost::new();
        host.set_config("max_temp_c", "warm");
        assert!(host
            .call(handle, &mqtt(TOPIC, &telemetry(5.0, FULL, None)))
            .is_err());
        assert!(host.logged(LogLevel::Error, "max_temp_c"));
    }

    #[test]
    fn stock_and_sale_are_optional() {
        let mut host = FakeHost::new();
        send(&mut host, r#"{"ts":1,"temp_c":4.0}"#);
        assert_eq!(host.emits().len(), 1, "summary only");
    }
}
