//! The dead-letter queue as operators see it (`wasmgate dlq`): one letter as
//! JSON, many as a table, and replay.
//!
//! Replay runs in the process that asks for it, not in the daemon: it deploys
//! the function as configured (same limits, grants and config; the module of
//! the config, or another one to try a fix), runs it on the stored event
//! with the dead letter's request id and the next attempt number, and commits
//! its effects through the store exactly as the pipeline does: KV writes, and
//! emits and invokes into the durable outbox, in one transaction that also
//! deletes the dead letter. A running daemon delivers those outbox rows (it
//! polls the outbox); a stopped one delivers them when it starts. This is
//! what `wasmgate kv put` does too, and it is safe while the daemon runs:
//! SQLite serialises the two writers.

use crate::runtime::{Effects, FunctionSpec, InvokeError, KvRead, LoadError, LogLine, Runtime};
use crate::store::{Attempt, DeadLetter, Store, StoreError};
use serde_json::{json, Map, Value};
use std::fmt::Write as _;
use std::sync::Arc;
use wasmgate_abi::{Event, KvOp, Pair, Seq};

/// The event in the form the dead-letter table keeps: the ABI's encoding.
pub fn encode_event(event: &Event<'_>) -> Vec<u8> {
    // postcard cannot fail to encode these plain types into a Vec.
    postcard::to_allocvec(event).unwrap_or_default()
}

/// Decodes a stored event.
pub fn decode_event(bytes: &[u8]) -> Result<Event<'_>, postcard::Error> {
    postcard::from_bytes(bytes)
}

/// A dead letter as JSON: what `wasmgate dlq show` prints and what is
/// published to `dead_letters.topic`. Its `event` is in the event-file
/// format, so it can be saved and run with `wasmgate invoke --event`.
pub fn to_json(letter: &DeadLetter) -> Value {
    json!({
        "id": letter.id,
        "function": letter.function,
        "version": letter.version,
        "request_id": letter.request_id,
        "topic": letter.topic,
        "received": utc(letter.received_ms),
        "received_ms": letter.received_ms,
        "failed": utc(letter.failed_ms),
        "failed_ms": letter.failed_ms,
        "dedup": letter.dedup,
        "attempts": letter.attempts.iter().map(|a| json!({
            "attempt": a.attempt,
            "at": utc(a.at_ms),
            "at_ms": a.at_ms,
            "version": a.version,
            "kind": a.kind,
            "error": a.error,
            "logs": a.logs,
        })).collect::<Vec<_>>(),
        "event": stored_event_json(&letter.event),
    })
}

/// The stored event in the event-file format, or its bytes in hex when it
/// cannot be decoded (a database from another version of wasmgate).
fn stored_event_json(bytes: &[u8]) -> Value {
    match decode_event(bytes) {
        Ok(event) => event_json(&event),
        Err(e) => json!({ "undecodable": e.to_string(), "bytes_hex": hex(bytes) }),
    }
}

/// An event in the JSON form `wasmgate invoke --event` reads.
pub fn event_json(event: &Event<'_>) -> Value {
    let mut body = Map::new();
    let bytes =
        |body: &mut Map<String, Value>, field: &str, value: &[u8]| match std::str::from_utf8(value)
        {
            Ok(text) => body.insert(field.to_owned(), Value::String(text.to_owned())),
            Err(_) => body.insert(format!("{field}_hex"), Value::String(hex(value))),
        };
    let kind = match event {
        Event::Mqtt(m) => {
            body.insert("topic".into(), m.topic.into());
            bytes(&mut body, "payload", m.payload);
            body.insert("qos".into(), m.qos.into());
            body.insert("retain".into(), m.retain.into());
            let props = pairs(&m.user_properties);
            if !props.is_empty() {
                body.insert("user_properties".into(), Value::Object(props));
            }
            "mqtt"
        }
        Event::Schedule(s) => {
            body.insert("schedule".into(), s.schedule.into());
            body.insert("scheduled_ms".into(), s.scheduled_ms.into());
            body.insert("fired_ms".into(), s.fired_ms.into());
            body.insert("catch_up".into(), s.catch_up.into());
            "schedule"
        }
        Event::Http(h) => {
            body.insert("method".into(), h.method.into());
            body.insert("path".into(), h.path.into());
            body.insert("query".into(), h.query.into());
            body.insert("headers".into(), Value::Object(pairs(&h.headers)));
            body.insert("params".into(), Value::Object(pairs(&h.params)));
            bytes(&mut body, "body", h.body);
            "http"
        }
        Event::File(f) => {
            body.insert("path".into(), f.path.into());
            body.insert("size".into(), f.size.into());
            body.insert("modified_ms".into(), f.modified_ms.into());
            bytes(&mut body, "contents", f.contents);
            "file"
        }
        Event::KvChange(k) => {
            body.insert("namespace".into(), k.namespace.into());
            body.insert("key".into(), k.key.into());
            let op = match k.op {
                KvOp::Put => "put",
                KvOp::Delete => "delete",
            };
            body.insert("op".into(), op.into());
            if let Some(value) = k.value {
                bytes(&mut body, "value", value);
            }
            if let Some(old) = k.old {
                bytes(&mut body, "old", old);
            }
            "kv_change"
        }
        Event::Invoke(i) => {
            body.insert("from".into(), i.from.into());
            bytes(&mut body, "payload", i.payload);
            "invoke"
        }
        Event::WebSocket(w) => {
            body.insert("route".into(), w.route.into());
            body.insert("connection_id".into(), w.connection_id.into());
            let kind = match w.kind {
                wasmgate_abi::WebSocketKind::Connect => "connect",
                wasmgate_abi::WebSocketKind::Message => "message",
                wasmgate_abi::WebSocketKind::Disconnect => "disconnect",
            };
            body.insert("kind".into(), kind.into());
            bytes(&mut body, "data", w.data);
            body.insert("text".into(), w.text.into());
            body.insert("query".into(), w.query.into());
            body.insert("headers".into(), Value::Object(pairs(&w.headers)));
            "websocket"
        }
        Event::Batch(events) => {
            let list: Vec<Value> = events
                .iter()
                .map(|e| match e {
                    Ok(e) => event_json(&e),
                    Err(e) => json!({ "undecodable": e.to_string() }),
                })
                .collect();
            return json!({ "batch": list });
        }
    };
    json!({ kind: Value::Object(body) })
}

fn pairs(seq: &Seq<'_, Pair<'_>>) -> Map<String, Value> {
    seq.iter()
        .filter_map(Result::ok)
        .map(|p| (p.name.to_owned(), Value::String(p.value.to_owned())))
        .collect()
}

/// Dead letters as a table, one line each, for `wasmgate dlq list`.
pub fn render_list(letters: &[DeadLetter]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>6}  {:<16} {:<12} {:>8}  {:<20} {:<14} {:<24} cause",
        "id", "function", "version", "attempts", "failed (UTC)", "last error", "topic"
    );
    for l in letters {
        let last = l.attempts.last().map_or("-", |a| a.kind.as_str());
        let _ = writeln!(
            out,
            "{:>6}  {:<16} {:<12} {:>8}  {:<20} {:<14} {:<24} {}",
            l.id,
            l.function,
            l.version,
            l.attempts.len(),
            utc(l.failed_ms),
            last,
            crate::text::escape(&l.topic),
            one_line(l.attempts.last().map_or("-", cause), 80),
        );
    }
    out
}

/// `text` cut to `max` characters, with an ellipsis when it was longer.
fn one_line(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_owned(),
    }
}

/// Most lines of a failed attempt a dead letter keeps, and the most bytes of
/// each: enough for the function's own account of the failure, bounded
/// because a failing function may log in a loop.
const ATTEMPT_LOG_LINES: usize = 8;
const ATTEMPT_LOG_LINE_BYTES: usize = 512;

/// The log lines of a failed attempt, as a dead letter keeps them: the last
/// few, each `LEVEL message` and cut at a character boundary. The messages
/// come already escaped and redacted (runtime/host.rs).
pub fn attempt_logs(logs: &[LogLine]) -> Vec<String> {
    let start = logs.len().saturating_sub(ATTEMPT_LOG_LINES);
    logs[start..]
        .iter()
        .map(|line| {
            let mut message = line.message.as_str();
            if message.len() > ATTEMPT_LOG_LINE_BYTES {
                let mut end = ATTEMPT_LOG_LINE_BYTES;
                while !message.is_char_boundary(end) {
                    end -= 1;
                }
                message = &message[..end];
            }
            format!("{} {message}", level_name(line.level))
        })
        .collect()
}

fn level_name(level: wasmgate_abi::LogLevel) -> &'static str {
    use wasmgate_abi::LogLevel::*;
    match level {
        Error => "ERROR",
        Warn => "WARN",
        Info => "INFO",
        Debug => "DEBUG",
        Trace => "TRACE",
    }
}

/// Why an attempt failed, in a line: the function's last error (else
/// warning) line when it logged one, since it says more than our error does
/// (`returned error code 10`); otherwise our error.
pub fn cause(attempt: &Attempt) -> &str {
    let logged = |prefix: &str| {
        attempt
            .logs
            .iter()
            .rev()
            .find_map(|line| line.strip_prefix(prefix))
    };
    logged("ERROR ")
        .or_else(|| logged("WARN "))
        .unwrap_or(&attempt.error)
}

/// What a replay did.
#[derive(Debug)]
pub struct Replayed {
    /// The module version that ran.
    pub version: String,
    /// The attempt number it ran as.
    pub attempt: u32,
    /// The effects committed on success (the dead letter is gone), or the
    /// error (the dead letter stays, with this attempt added).
    pub outcome: Result<Effects, InvokeError>,
    pub logs: Vec<LogLine>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("dead letter {id}: its event cannot be decoded ({message}); it was written by another version of wasmgate")]
    Undecodable { id: i64, message: String },
}

/// Runs `letter`'s event through `wasm` deployed as `spec`, and commits
/// the result: on success the effects, removing the dead letter in the same
/// transaction; on failure the new attempt, keeping it.
pub fn replay(
    store: &Store,
    letter: &DeadLetter,
    spec: FunctionSpec,
    wasm: &[u8],
) -> Result<Replayed, ReplayError> {
    let event = decode_event(&letter.event).map_err(|e| ReplayError::Undecodable {
        id: letter.id,
        message: e.to_string(),
    })?;
    let runtime = Runtime::new();
    let function = runtime.deploy(spec, wasm)?;
    let attempt = letter
        .attempts
        .iter()
        .map(|a| a.attempt)
        .max()
        .unwrap_or(0)
        .saturating_add(1);
    let kv: Arc<dyn KvRead> = Arc::new(store.clone());
    let report = function.invoke(letter.request_id, attempt, &event, Some(kv));
    match report.outcome {
        Ok(effects) => {
            store.commit_replay(letter, effects.clone())?;
            Ok(Replayed {
                version: function.version().to_owned(),
                attempt,
                outcome: Ok(effects),
                logs: report.logs,
            })
        }
        Err(error) => {
            store.dead_letter_failed_again(
                letter.id,
                Attempt {
                    attempt,
                    at_ms: now_ms(),
                    kind: error.kind().to_owned(),
                    error: error.to_string(),
                    version: function.version().to_owned(),
                    logs: attempt_logs(&report.logs),
                },
            )?;
            Ok(Replayed {
                version: function.version().to_owned(),
                attempt,
                outcome: Err(error),
                logs: report.logs,
            })
        }
    }
}

/// The event kind of a dead letter that is not an event that failed but
/// a message no broker would take (see `pipeline/outbox.rs`); its event is
/// the message, as an MQTT event, and replaying it puts it back in the
/// outbox.
pub const UNDELIVERABLE: &str = "undeliverable";

/// How many dead letters of undeliverable messages a function keeps.
const UNDELIVERABLE_KEEP: u32 = 10_000;

/// A dead letter for an outbox row no broker would take, which deletes the
/// row in the same transaction.
pub fn undeliverable(row: &crate::store::OutboxRow, why: String) -> crate::store::NewDeadLetter {
    let now = now_ms();
    let event = Event::Mqtt(wasmgate_abi::MqttMessage {
        topic: &row.topic,
        payload: &row.payload,
        qos: row.qos,
        retain: row.retain,
        user_properties: Seq::empty(),
    });
    let destination = match row.destination {
        crate::store::OutboxDestination::Upstream => "upstream",
        _ => "local",
    };
    crate::store::NewDeadLetter {
        function: row.function.clone(),
        request_id: 0,
        version: "-".into(),
        topic: row.topic.clone(),
        event_kind: format!("{UNDELIVERABLE}-{destination}"),
        event: encode_event(&event),
        dedup: None,
        attempts: vec![Attempt {
            attempt: 1,
            at_ms: now,
            kind: UNDELIVERABLE.into(),
            error: why,
            version: "-".into(),
            logs: Vec::new(),
        }],
        received_ms: now,
        keep: UNDELIVERABLE_KEEP,
        publish_to: None,
        cursor: Some(crate::store::Cursor::OutboxRow(row.id)),
    }
}

/// Puts an undeliverable message back in the outbox (and deletes its dead
/// letter, in one transaction): once the broker's limit or ACL is fixed.
/// `Ok(None)` if the letter is not an undeliverable message.
pub fn requeue(store: &Store, letter: &DeadLetter) -> Result<Option<Effects>, ReplayError> {
    let Some(destination) = letter.event_kind.strip_prefix(UNDELIVERABLE) else {
        return Ok(None);
    };
    let event = decode_event(&letter.event).map_err(|e| ReplayError::Undecodable {
        id: letter.id,
        message: e.to_string(),
    })?;
    let Event::Mqtt(message) = event else {
        return Err(ReplayError::Undecodable {
            id: letter.id,
            message: "an undeliverable message that is not an MQTT message".into(),
        });
    };
    let mut effects = Effects::default();
    effects.emits.push(crate::runtime::Emit {
        topic: message.topic.to_owned(),
        payload: message.payload.to_vec(),
        options: wasmgate_abi::EmitOptions {
            qos: message.qos,
            retain: message.retain,
            destination: if destination == "-upstream" {
                wasmgate_abi::Destination::Upstream
            } else {
                wasmgate_abi::Destination::Local
            },
        },
    });
    store.commit_replay(letter, effects.clone())?;
    Ok(Some(effects))
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS` UTC.
pub fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1_000);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `civil_from_days`), so that no date crate is needed for a log line.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::OwnedEvent;

    fn line(level: wasmgate_abi::LogLevel, message: &str) -> LogLine {
        LogLine {
            level,
            message: message.into(),
        }
    }

    fn failed(logs: Vec<String>) -> Attempt {
        Attempt {
            attempt: 1,
            at_ms: 0,
            kind: "returned-error".into(),
            error: "vending returned error code 10".into(),
            version: "0123456789ab".into(),
            logs,
        }
    }

    #[test]
    fn an_attempt_keeps_the_last_lines_it_logged_each_bounded() {
        use wasmgate_abi::LogLevel::*;
        let long = "é".repeat(ATTEMPT_LOG_LINE_BYTES); // two bytes each
        let mut logs: Vec<_> = (0..20).map(|i| line(Info, &format!("step {i}"))).collect();
        logs.push(line(Error, &long));
        let kept = attempt_logs(&logs);
        assert_eq!(kept.len(), ATTEMPT_LOG_LINES);
        assert_eq!(kept[0], "INFO step 13");
        let last = kept.last().unwrap();
        assert!(last.starts_with("ERROR éé"), "{last}");
        assert!(
            last.len() <= "ERROR ".len() + ATTEMPT_LOG_LINE_BYTES,
            "{}",
            last.len()
        );
    }

    #[test]
    fn the_cause_is_the_functions_last_error_line_else_its_warning_else_our_error() {
        let both = failed(vec![
            "ERROR price missing".into(),
            "WARN retrying later".into(),
            "INFO done".into(),
        ]);
        assert_eq!(cause(&both), "price missing");
        assert_eq!(
            cause(&failed(vec!["WARN slow sensor".into()])),
            "slow sensor"
        );
        assert_eq!(
            cause(&failed(vec!["INFO hello".into()])),
            "vending returned error code 10"
        );
    }

    #[test]
    fn the_list_shows_each_letters_cause_in_one_bounded_line() {
        let letter = DeadLetter {
            id: 3,
            function: "vending".into(),
            request_id: 1,
            version: "0123456789ab".into(),
            topic: "vending/vm-1/telemetry".into(),
            event_kind: "mqtt".into(),
            event: Vec::new(),
            dedup: None,
            attempts: vec![failed(vec![format!("ERROR {}", "x".repeat(200))])],
            received_ms: 0,
            failed_ms: 0,
        };
        let list = render_list(&[letter]);
        let row = list.lines().nth(1).unwrap();
        assert!(row.starts_with("     3  vending"), "{row}");
        assert!(row.ends_with(&format!("{}...", "x".repeat(80))), "{row}");
    }

    #[test]
    fn timestamps_print_as_utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(utc(1_767_225_599_999), "2025-12-31 23:59:59");
        assert_eq!(utc(-1_000), "1969-12-31 23:59:59");
    }

    #[test]
    fn a_stored_event_comes_back_as_an_event_file_invoke_reads() {
        let event = OwnedEvent::mqtt("vending/vm-1/telemetry", b"{\"t\":1}".to_vec(), 1, false);
        let stored = encode_event(&event.as_event());
        let json = stored_event_json(&stored);
        assert_eq!(
            json,
            json!({"mqtt": {"topic": "vending/vm-1/telemetry", "payload": "{\"t\":1}", "qos": 1, "retain": false}})
        );
        assert_eq!(OwnedEvent::from_json(&json).unwrap(), event);
    }

    #[test]
    fn binary_payloads_are_shown_in_hex_and_read_back() {
        let event = OwnedEvent::Invoke {
            from: "a".into(),
            payload: vec![0xff, 0x00],
        };
        let json = event_json(&event.as_event());
        assert_eq!(
            json,
            json!({"invoke": {"from": "a", "payload_hex": "ff00"}})
        );
        assert_eq!(OwnedEvent::from_json(&json).unwrap(), event);
    }

    #[test]
    fn garbage_in_the_event_column_shows_as_hex_not_a_panic() {
        let json = stored_event_json(&[0xff, 0xff, 0xff]);
        assert_eq!(json["bytes_hex"], "ffffff");
    }
}
