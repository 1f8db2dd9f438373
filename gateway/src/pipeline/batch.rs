//! Upstream batching, for metered and high-latency links (cellular, satellite):
//! many outbox rows travel as one MQTT message, so a backlog of small
//! summaries costs one PUBLISH/PUBACK round trip and one set of headers per
//! batch instead of per result, and compresses well.
//!
//! The payload format (`WGB1`) is documented in `docs/upstream-batching.md`,
//! with a decoder in a few lines of Python for the cloud side; [`decode`]
//! here is the reference and the tests hold both to the same bytes.
//!
//! Batching never weakens delivery: a batch is one QoS 1 message, and every
//! row in it is deleted only when the broker acknowledges the batch.

use crate::store::OutboxRow;
use std::time::Duration;

/// The first bytes of every batch: format name and version.
pub const MAGIC: &[u8; 4] = b"WGB1";
/// Header flag: the body is raw DEFLATE (RFC 1951) compressed.
pub const FLAG_DEFLATE: u8 = 1;

pub use crate::config::Compression;

/// What the upstream drainer needs to batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchSettings {
    /// Where batches are published (one topic; each entry keeps its own).
    pub topic: String,
    /// Rows per batch, at least 1.
    pub max_messages: usize,
    /// Topic and payload bytes per batch before compression; a single row
    /// larger than this travels alone.
    pub max_bytes: usize,
    /// How long a partial batch may wait for more rows. A backlog (after a
    /// reconnect) never waits: its batches are full.
    pub max_delay: Duration,
    pub compression: Compression,
}

/// One MQTT message the drainer publishes: a row as it is, or a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    /// The rows it carries, in id order; all deleted on its PUBACK.
    pub rows: Vec<i64>,
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    /// The span that emitted it, for an MQTT 5 link to send on as the
    /// `traceparent` user property. A batch has none: its messages came
    /// from many spans.
    pub trace: Option<crate::trace::TraceContext>,
}

impl Unit {
    pub fn single(row: OutboxRow) -> Unit {
        Unit {
            rows: vec![row.id],
            trace: row
                .trace
                .as_deref()
                .and_then(crate::trace::TraceContext::from_stored),
            topic: row.topic,
            payload: row.payload,
            qos: row.qos,
            retain: row.retain,
        }
    }
}

/// Groups rows (in id order) into units. Retained messages travel alone:
/// the broker must see them as themselves to retain them. The last batch
/// is returned separately when it is not full, so the caller can hold it
/// for up to `max_delay`; its rows are not in `units`.
pub fn group(rows: Vec<OutboxRow>, settings: &BatchSettings) -> (Vec<Unit>, Vec<OutboxRow>) {
    let mut units = Vec::new();
    let mut open: Vec<OutboxRow> = Vec::new();
    let mut open_bytes = 0;
    let close = |open: &mut Vec<OutboxRow>, units: &mut Vec<Unit>| {
        if !open.is_empty() {
            units.push(batch(std::mem::take(open), settings));
        }
    };
    for row in rows {
        let size = row.topic.len() + row.payload.len();
        if row.retain {
            close(&mut open, &mut units);
            open_bytes = 0;
            units.push(Unit::single(row));
            continue;
        }
        if !open.is_empty() && open_bytes + size > settings.max_bytes {
            close(&mut open, &mut units);
            open_bytes = 0;
        }
        open_bytes += size;
        open.push(row);
        if open.len() >= settings.max_messages || open_bytes >= settings.max_bytes {
            close(&mut open, &mut units);
            open_bytes = 0;
        }
    }
    (units, open)
}

/// The rows held back as a partial batch, sent now (their wait is over).
pub fn flush(rows: Vec<OutboxRow>, settings: &BatchSettings) -> Option<Unit> {
    (!rows.is_empty()).then(|| batch(rows, settings))
}

fn batch(rows: Vec<OutboxRow>, settings: &BatchSettings) -> Unit {
    let qos = rows.iter().map(|r| r.qos).max().unwrap_or(1);
    let payload = encode(
        rows.iter()
            .map(|r| (r.topic.as_str(), r.payload.as_slice())),
        settings.compression,
    );
    Unit {
        rows: rows.iter().map(|r| r.id).collect(),
        topic: settings.topic.clone(),
        payload,
        qos,
        retain: false,
        trace: None,
    }
}

/// `WGB1`, a flags byte, then the body: for each message, its topic and its
/// payload, each as a LEB128 length and the bytes.
pub fn encode<'a>(
    messages: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    compression: Compression,
) -> Vec<u8> {
    let mut body = Vec::new();
    for (topic, payload) in messages {
        put_len(&mut body, topic.len());
        body.extend_from_slice(topic.as_bytes());
        put_len(&mut body, payload.len());
        body.extend_from_slice(payload);
    }
    let mut out = Vec::with_capacity(body.len() + 5);
    out.extend_from_slice(MAGIC);
    match compression {
        Compression::None => {
            out.push(0);
            out.extend_from_slice(&body);
        }
        Compression::Deflate => {
            out.push(FLAG_DEFLATE);
            out.extend_from_slice(&miniz_oxide::deflate::compress_to_vec(&body, 6));
        }
    }
    out
}

/// Why a payload is not a batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("not a wasmgate batch (no WGB1 header)")]
    NotABatch,
    #[error("unknown flags {0:#04x} (a newer format?)")]
    UnknownFlags(u8),
    #[error("the compressed body does not inflate")]
    Inflate,
    #[error("truncated at byte {0} of the body")]
    Truncated(usize),
    #[error("topic at byte {0} is not UTF-8")]
    TopicNotUtf8(usize),
}

/// The messages of a batch, in order: what a cloud-side consumer does.
pub fn decode(payload: &[u8]) -> Result<Vec<(String, Vec<u8>)>, BatchError> {
    let rest = payload.strip_prefix(MAGIC).ok_or(BatchError::NotABatch)?;
    let (&flags, body) = rest.split_first().ok_or(BatchError::NotABatch)?;
    let inflated;
    let body = match flags {
        0 => body,
        FLAG_DEFLATE => {
            inflated = miniz_oxide::inflate::decompress_to_vec_with_limit(body, 256 << 20)
                .map_err(|_| BatchError::Inflate)?;
            &inflated[..]
        }
        other => return Err(BatchError::UnknownFlags(other)),
    };
    let mut messages = Vec::new();
    let mut at = 0;
    while at < body.len() {
        let topic = take(body, &mut at)?;
        let topic = String::from_utf8(topic.to_vec()).map_err(|_| BatchError::TopicNotUtf8(at))?;
        let payload = take(body, &mut at)?.to_vec();
        messages.push((topic, payload));
    }
    Ok(messages)
}

fn put_len(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// A LEB128 length and that many bytes, from `body[*at..]`.
fn take<'a>(body: &'a [u8], at: &mut usize) -> Result<&'a [u8], BatchError> {
    let start = *at;
    let mut len: usize = 0;
    let mut shift = 0;
    loop {
        let byte = *body.get(*at).ok_or(BatchError::Truncated(start))?;
        *at += 1;
        if shift > 28 {
            return Err(BatchError::Truncated(start));
        }
        len |= usize::from(byte & 0x7f) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            break;
        }
    }
    let end = at
        .checked_add(len)
        .filter(|&end| end <= body.len())
        .ok_or(BatchError::Truncated(start))?;
    let bytes = &body[*at..end];
    *at = end;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::OutboxDestination;

    fn row(id: i64, topic: &str, payload: &str) -> OutboxRow {
        OutboxRow {
            id,
            destination: OutboxDestination::Upstream,
            topic: topic.into(),
            payload: payload.as_bytes().to_vec(),
            qos: 1,
            retain: false,
            function: "f".into(),
            trace: None,
        }
    }

    fn settings(max_messages: usize, max_bytes: usize) -> BatchSettings {
        BatchSettings {
            topic: "wasmgate/gw/batch".into(),
            max_messages,
            max_bytes,
            max_delay: Duration::from_millis(100),
            compression: Compression::None,
        }
    }

    /// The example in docs/upstream-batching.md, byte for byte.
    #[test]
    fn the_documented_example_encodes_to_the_documented_bytes() {
        let bytes = encode([("t/a", &b"{}"[..]), ("t/b", &b"1"[..])], Compression::None);
        assert_eq!(
            bytes,
            b"WGB1\x00\x03t/a\x02{}\x03t/b\x011".to_vec(),
            "update docs/upstream-batching.md with the format"
        );
    }

    #[test]
    fn batches_round_trip_with_and_without_compression() {
        let big = "x".repeat(300);
        let messages = [
            ("telemetry/vending/vm-1", br#"{"ts":1}"#.as_slice()),
            ("", b"".as_slice()),
            ("t", big.as_bytes()),
            ("bin", &[0, 255, 128][..]),
        ];
        for compression in [Compression::None, Compression::Deflate] {
            let bytes = encode(messages, compression);
            let decoded = decode(&bytes).unwrap();
            let want: Vec<(String, Vec<u8>)> = messages
                .iter()
                .map(|(t, p)| (t.to_string(), p.to_vec()))
                .collect();
            assert_eq!(decoded, want, "{compression:?}");
        }
        let plain = encode(messages, Compression::None);
        let deflated = encode(messages, Compression::Deflate);
        assert!(deflated.len() < plain.len(), "300 x's compress");
    }

    #[test]
    fn broken_batches_are_errors_not_panics() {
        assert_eq!(decode(b"WGB"), Err(BatchError::NotABatch));
        assert_eq!(decode(b"WGB1"), Err(BatchError::NotABatch));
        assert_eq!(decode(b"WGB1\x07"), Err(BatchError::UnknownFlags(7)));
        assert_eq!(decode(b"WGB1\x00\x05ab"), Err(BatchError::Truncated(0)));
        assert_eq!(decode(b"WGB1\x00\x80"), Err(BatchError::Truncated(0)));
        assert_eq!(decode(b"WGB1\x01garbage"), Err(BatchError::Inflate));
        assert_eq!(
            decode(b"WGB1\x00\xff\xff\xff\xff\xff\xff\x01"),
            Err(BatchError::Truncated(0))
        );
        assert_eq!(
            decode(b"WGB1\x00\x01\xff\x00"),
            Err(BatchError::TopicNotUtf8(2))
        );
        assert_eq!(decode(b"WGB1\x00"), Ok(vec![]));
    }

    #[test]
    fn rows_group_by_count_and_bytes_and_the_partial_rest_is_held() {
        let rows: Vec<OutboxRow> = (1..=7).map(|i| row(i, "t", "12345")).collect();
        let (units, held) = group(rows, &settings(3, 1 << 20));
        let ids: Vec<Vec<i64>> = units.iter().map(|u| u.rows.clone()).collect();
        assert_eq!(ids, vec![vec![1, 2, 3], vec![4, 5, 6]]);
        assert_eq!(held.iter().map(|r| r.id).collect::<Vec<_>>(), vec![7]);
        assert!(units
            .iter()
            .all(|u| u.topic == "wasmgate/gw/batch" && u.qos == 1));
        assert_eq!(decode(&units[0].payload).unwrap().len(), 3);

        // 6 bytes a row, 13 bytes a batch: two rows fit, the third opens the next.
        let rows: Vec<OutboxRow> = (1..=5).map(|i| row(i, "t", "12345")).collect();
        let (units, held) = group(rows, &settings(100, 13));
        let ids: Vec<Vec<i64>> = units.iter().map(|u| u.rows.clone()).collect();
        assert_eq!(ids, vec![vec![1, 2], vec![3, 4]]);
        assert_eq!(held.len(), 1);

        // A row over max_bytes travels in a batch of its own, at once.
        let (units, held) = group(vec![row(1, "t", &"y".repeat(50))], &settings(100, 13));
        assert_eq!(units.len(), 1);
        assert!(held.is_empty());
    }

    #[test]
    fn retained_rows_travel_alone_and_in_order() {
        let mut retained = row(2, "state/door", "open");
        retained.retain = true;
        let rows = vec![row(1, "t", "a"), retained, row(3, "t", "b")];
        let (units, held) = group(rows, &settings(10, 1 << 20));
        assert_eq!(units.len(), 2);
        assert_eq!(units[0].rows, vec![1]);
        assert_eq!(units[1].rows, vec![2]);
        assert!(units[1].retain);
        assert_eq!(units[1].topic, "state/door");
        assert_eq!(units[1].payload, b"open");
        assert_eq!(held.iter().map(|r| r.id).collect::<Vec<_>>(), vec![3]);
        let unit = flush(held, &settings(10, 1 << 20)).unwrap();
        assert_eq!(unit.rows, vec![3]);
        assert!(flush(Vec::new(), &settings(10, 1 << 20)).is_none());
    }
}
