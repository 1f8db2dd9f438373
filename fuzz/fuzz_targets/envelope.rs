//! The ABI envelope decoder (what a guest's SDK runs on the bytes from
//! `event_read`) on arbitrary bytes: decoding returns an error or a value,
//! never panics; lazily decoded sequences (user properties, headers, batch
//! items) walk to their end; and whatever decodes re-encodes to bytes that
//! decode to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmgate_abi::{Envelope, Event, Pair, Seq};

/// Batches are never nested by the host, but a hostile or corrupt envelope
/// may nest them; the walk is bounded anyway (each level costs input bytes).
const MAX_DEPTH: usize = 64;

fn walk_pairs(pairs: Seq<'_, Pair<'_>>) {
    let counted = pairs.count();
    let walked = pairs.iter().take_while(Result::is_ok).count();
    if let Ok(n) = counted {
        assert_eq!(n, walked, "count() and iter() disagree");
    }
    // After the first bad item the iterator is finished.
    let mut iter = pairs.iter();
    while let Some(item) = iter.next() {
        if item.is_err() {
            assert!(iter.next().is_none(), "items after a framing error");
            break;
        }
    }
}

fn walk(event: &Event<'_>, depth: usize) {
    let _ = event.kind();
    match event {
        Event::Mqtt(m) => walk_pairs(m.user_properties),
        Event::Http(h) => walk_pairs(h.headers),
        Event::Batch(items) if depth < MAX_DEPTH => {
            for item in items.iter() {
                match item {
                    Ok(inner) => walk(&inner, depth + 1),
                    Err(_) => break,
                }
            }
        }
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = Envelope::decode(data) {
        walk(&envelope.event, 0);
        let bytes = envelope.encode().expect("a decoded envelope encodes");
        let again = Envelope::decode(&bytes).expect("an encoded envelope decodes");
        assert_eq!(envelope, again);
        // The guest SDK's no-alloc path agrees with the allocating one.
        let mut buf = vec![0u8; bytes.len()];
        let used = envelope.encode_into(&mut buf).expect("fits exactly");
        assert_eq!(&*used, &bytes[..]);
    }
    // Single events and sequences are decoded on their own too (batch items).
    if let Ok((event, _rest)) = postcard::take_from_bytes::<Event<'_>>(data) {
        walk(&event, 0);
    }
    walk(&Event::Batch(Seq::from_encoded(data)), 0);
});
