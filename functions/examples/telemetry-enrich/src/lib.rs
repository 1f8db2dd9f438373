//! Telemetry enrichment: the first function most gateways run.
//!
//! Devices publish a JSON object to `<kind>/<device>/telemetry`. The function
//! forwards it upstream to `telemetry/<kind>/<device>` (QoS 1) with three
//! fields added at the end:
//! - `"site"`: where it was received (config `site`, default `"edge"`);
//! - `"received_ms"`: when the gateway ran the function, Unix milliseconds;
//! - `"temp_f"`: `temp_c` in Fahrenheit to one decimal, when the object has
//!   a numeric `temp_c` (omitted otherwise, and beyond ±1,000,000).
//!
//! ```json
//! {"machine":"vm-17","temp_c":6.8}
//! -> {"machine":"vm-17","temp_c":6.8,"site":"edge","received_ms":1764160000123,"temp_f":44.2}
//! ```
//!
//! The device's own bytes are forwarded as they came: the object is checked
//! against the JSON grammar ([`wasmgate_sdk::json`]) but not re-encoded, so
//! fields this function does not know about, their order and their number
//! formatting all survive, and nothing upstream receives what a JSON reader
//! would refuse. The added fields come last; if the device already
//! sends one of them, the object has that key twice and most JSON readers
//! keep the last, the gateway's.
//!
//! `bench/compare.sh` runs this function against the same enrichment in a
//! Node-RED function node.
#![cfg_attr(target_arch = "wasm32", no_std)]

use heapless::{String, Vec};
use wasmgate_sdk::{decimal, json, Ctx, Error, Event, LogLevel};

/// Returned (and logged) when a payload is not a JSON object.
pub const BAD_TELEMETRY: i32 = 10;
/// Returned when the topic is not `<kind>/<device>/telemetry`.
pub const BAD_TOPIC: i32 = 11;
/// Returned when the enriched object would not fit [`MAX_OUTPUT`].
pub const TOO_LARGE: i32 = 12;

/// The largest enriched object; a payload that would grow past it is refused.
pub const MAX_OUTPUT: usize = 8192;
const DEFAULT_SITE: &str = "edge";

pub fn handle(event: &Event<'_>, ctx: &mut Ctx<'_>) -> Result<(), Error> {
    for event in wasmgate_sdk::events(event) {
        let Event::Mqtt(msg) = event? else {
            return Err(Error::msg("telemetry-enrich handles MQTT messages only"));
        };
        enrich(msg.topic, msg.payload, ctx)?;
    }
    Ok(())
}

fn enrich(topic: &str, payload: &[u8], ctx: &mut Ctx<'_>) -> Result<(), Error> {
    let Some((kind, device)) = parse_topic(topic) else {
        ctx.log_parts(
            LogLevel::Error,
            &["not a <kind>/<device>/telemetry topic: ", topic],
        );
        return Err(Error::user(BAD_TOPIC, "unexpected topic"));
    };
    let mut temp_c = None;
    let found = json::object(payload, |name, value| {
        if name == b"temp_c" {
            temp_c = Some(value);
        }
    });
    let Ok(object) = found else {
        ctx.log_parts(
            LogLevel::Error,
            &["telemetry is not a JSON object on ", topic],
        );
        return Err(Error::user(BAD_TELEMETRY, "telemetry is not a JSON object"));
    };

    let mut site_buf = [0u8; 128];
    let site = ctx.config("site", &mut site_buf)?.unwrap_or(DEFAULT_SITE);
    let added = Added {
        site,
        received_ms: ctx.now_ms(),
        // Checked JSON, so a number's text is a valid float for `parse`;
        // a string, `null` or anything else is not a temperature.
        temp_f_tenths: temp_c
            .and_then(|text| core::str::from_utf8(text).ok()?.parse::<f64>().ok())
            .and_then(fahrenheit_tenths),
    };
    let mut out = Vec::<u8, MAX_OUTPUT>::new();
    added
        .append_to(payload, object, &mut out)
        .map_err(|_| Error::user(TOO_LARGE, "enriched telemetry over 8 KiB"))?;

    let mut to = String::<160>::new();
    for part in ["telemetry/", kind, "/", device] {
        to.push_str(part)
            .map_err(|_| Error::user(BAD_TOPIC, "device id too long"))?;
    }
    ctx.emit_upstream(&to, &out)
}

/// `<kind>/<device>/telemetry` -> `(kind, device)`.
fn parse_topic(topic: &str) -> Option<(&str, &str)> {
    let rest = topic.strip_suffix("/telemetry")?;
    let (kind, device) = rest.split_once('/')?;
    let ok = |s: &str| !s.is_empty() && !s.contains('/');
    (ok(kind) && ok(device)).then_some((kind, device))
}

/// Celsius to tenths of a degree Fahrenheit, rounded half away from zero.
fn fahrenheit_tenths(celsius: f64) -> Option<i64> {
    if !(-1e6..=1e6).contains(&celsius) {
        return None;
    }
    let tenths = celsius * 18.0 + 320.0;
    Some(if tenths < 0.0 {
        (tenths - 0.5) as i64
    } else {
        (tenths + 0.5) as i64
    })
}

/// The fields the gateway adds.
struct Added<'a> {
    site: &'a str,
    received_ms: u64,
    temp_f_tenths: Option<i64>,
}

/// The output buffer is full.
#[derive(Debug)]
struct Full;

impl Added<'_> {
    /// `text` (the JSON object `object` was found in) with these fields
    /// added before its closing brace.
    fn append_to<const N: usize>(
        &self,
        text: &[u8],
        object: json::Object,
        out: &mut Vec<u8, N>,
    ) -> Result<(), Full> {
        out.extend_from_slice(&text[..object.close])
            .map_err(|_| Full)?;
        if !object.empty {
            out.push(b',').map_err(|_| Full)?;
        }
        out.extend_from_slice(br#""site":"#).map_err(|_| Full)?;
        push_json_string(out, self.site)?;
        out.extend_from_slice(br#","received_ms":"#)
            .map_err(|_| Full)?;
        out.extend_from_slice(decimal(self.received_ms, &mut [0; 20]).as_bytes())
            .map_err(|_| Full)?;
        if let Some(tenths) = self.temp_f_tenths {
            out.extend_from_slice(br#","temp_f":"#).map_err(|_| Full)?;
            if tenths < 0 {
                out.push(b'-').map_err(|_| Full)?;
            }
            let tenths = tenths.unsigned_abs();
            out.extend_from_slice(decimal(tenths / 10, &mut [0; 20]).as_bytes())
                .map_err(|_| Full)?;
            out.push(b'.').map_err(|_| Full)?;
            out.push(b'0' + (tenths % 10) as u8).map_err(|_| Full)?;
        }
        out.push(b'}').map_err(|_| Full)
    }
}

/// `text` as a JSON string: quotes, backslashes and control characters escaped.
fn push_json_string<const N: usize>(out: &mut Vec<u8, N>, text: &str) -> Result<(), Full> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"').map_err(|_| Full)?;
    for &byte in text.as_bytes() {
        let escaped: &[u8] = match byte {
            b'"' => br#"\""#,
            b'\\' => br"\\",
            b'\n' => br"\n",
            b'\r' => br"\r",
            b'\t' => br"\t",
            0..=0x1f => &[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(byte >> 4)],
                HEX[usize::from(byte & 0xf)],
            ],
            _ => core::slice::from_ref(&byte),
        };
        out.extend_from_slice(escaped).map_err(|_| Full)?;
    }
    out.push(b'"').map_err(|_| Full)
}

wasmgate_sdk::export!(handle);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmgate_sdk::testing::{mqtt, FakeHost};
    use wasmgate_sdk::Destination;

    const TOPIC: &str = "vending/vm-17/telemetry";
    const NOW: i64 = 1_764_160_000_123;

    fn host() -> FakeHost {
        let mut host = FakeHost::new();
        host.set_now_ms(NOW);
        host
    }

    #[track_caller]
    fn enriched(host: &mut FakeHost, topic: &str, payload: &str) -> std::string::String {
        host.call(handle, &mqtt(topic, payload))
            .expect("invocation succeeds");
        let emits = host.emits();
        assert_eq!(emits.len(), 1, "one output per message");
        emits[0].text().to_owned()
    }

    #[test]
    fn the_device_json_goes_upstream_with_three_fields_added() {
        let mut host = host();
        let out = enriched(
            &mut host,
            TOPIC,
            r#"{"machine":"vm-17","seq":4,"temp_c":6.8,"stock":[{"slot":"A1","count":2}]}"#,
        );
        assert_eq!(
            out,
            r#"{"machine":"vm-17","seq":4,"temp_c":6.8,"stock":[{"slot":"A1","count":2}],"site":"edge","received_ms":1764160000123,"temp_f":44.2}"#
        );
        let emit = &host.emits()[0];
        assert_eq!(emit.topic, "telemetry/vending/vm-17");
        assert_eq!(emit.options.destination, Destination::Upstream);
        assert_eq!(emit.options.qos, 1);
    }

    #[test]
    fn the_device_bytes_are_kept_as_sent() {
        // Number formatting, unknown fields, escapes and whitespace inside
        // the object all pass through untouched.
        let mut host = host();
        let payload = "{ \"temp_c\" : 5.50 , \"note\": \"a \\\"quoted\\\" \\u00e9\", \"x\": [1e3, null, true] }\n";
        let out = enriched(&mut host, TOPIC, payload);
        assert_eq!(
            out,
            "{ \"temp_c\" : 5.50 , \"note\": \"a \\\"quoted\\\" \\u00e9\", \"x\": [1e3, null, true] ,\"site\":\"edge\",\"received_ms\":1764160000123,\"temp_f\":41.9}"
        );
    }

    #[test]
    fn without_a_temperature_only_site_and_time_are_added() {
        let mut host = host();
        assert_eq!(
            enriched(&mut host, "robots/r2/telemetry", r#"{"battery":0.8}"#),
            r#"{"battery":0.8,"site":"edge","received_ms":1764160000123}"#
        );
        for not_a_number in ["null", r#""hot""#, "[5]", "true"] {
            host.clear_outputs();
            let payload = format!(r#"{{"temp_c":{not_a_number}}}"#);
            assert_eq!(
                enriched(&mut host, TOPIC, &payload),
                format!(r#"{{"temp_c":{not_a_number},"site":"edge","received_ms":1764160000123}}"#)
            );
        }
        assert_eq!(host.emits()[0].topic, "telemetry/vending/vm-17");
    }

    #[test]
    fn an_empty_object_gets_no_leading_comma() {
        let mut host = host();
        assert_eq!(
            enriched(&mut host, TOPIC, " { } "),
            r#" { "site":"edge","received_ms":1764160000123}"#
        );
    }

    #[test]
    fn fahrenheit_rounds_half_away_from_zero_on_both_sides_of_zero() {
        assert_eq!(fahrenheit_tenths(0.0), Some(320));
        assert_eq!(fahrenheit_tenths(100.0), Some(2120));
        assert_eq!(fahrenheit_tenths(-40.0), Some(-400));
        // -17.8 C = -0.04 F -> -0.0 rounds to 0; -18 C = -0.4 F.
        assert_eq!(fahrenheit_tenths(-17.8), Some(0));
        assert_eq!(fahrenheit_tenths(-18.0), Some(-4));
        assert_eq!(fahrenheit_tenths(f64::INFINITY), None);
        assert_eq!(fahrenheit_tenths(2e6), None);
        let mut host = host();
        let out = enriched(&mut host, TOPIC, r#"{"temp_c":-18}"#);
        assert!(out.ends_with(r#","temp_f":-0.4}"#), "{out}");
    }

    #[test]
    fn the_site_comes_from_the_config_and_is_escaped() {
        let mut host = host();
        host.set_config("site", "plant \"7\" \\ é\n\u{1}");
        let out = enriched(&mut host, TOPIC, r#"{"a":1}"#);
        assert_eq!(
            out,
            r#"{"a":1,"site":"plant \"7\" \\ é\n\u0001","received_ms":1764160000123}"#
        );
        let json: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(json["site"], "plant \"7\" \\ é\n\u{1}");
    }

    #[track_caller]
    fn refused(payload: &str, topic: &str, code: i32) {
        let mut host = host();
        let err = host
            .call(handle, &mqtt(topic, payload))
            .expect_err("refused");
        assert_eq!(err.code(), code, "{payload} on {topic}: {err:?}");
        assert!(host.emits().is_empty(), "nothing sent for {payload}");
    }

    #[test]
    fn what_is_not_a_json_object_is_refused_and_nothing_is_sent() {
        for payload in [
            "",
            "[1,2]",
            "42",
            r#"{"temp_c": 5"#,
            r#"{"temp_c": tru}"#,
            r#"{"a":1} {"b":2}"#,
            r#"{"a":1}x"#,
        ] {
            refused(payload, TOPIC, BAD_TELEMETRY);
        }
    }

    #[test]
    fn topics_of_another_shape_are_refused() {
        for topic in [
            "vending/telemetry",
            "vending//telemetry",
            "/vm-17/telemetry",
            "a/b/c/telemetry",
            "vending/vm-17/status",
        ] {
            refused("{}", topic, BAD_TOPIC);
        }
    }

    #[test]
    fn an_object_that_would_outgrow_the_buffer_is_refused() {
        let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(MAX_OUTPUT - 20));
        refused(&big, TOPIC, TOO_LARGE);
    }
}
