//! Walking the events of an invocation, batch or not.

use crate::error::Error;
use wasmgate_abi::{Event, SeqIter};

/// The single events in `event`: the event itself, or each event of a
/// [`Event::Batch`] in order. A function that handles one event at a time
/// handles batching windows for free:
///
/// ```
/// # use wasmgate_sdk::{Ctx, Error, Event};
/// fn handle(event: &Event<'_>, ctx: &mut Ctx<'_>) -> Result<(), Error> {
///     for event in wasmgate_sdk::events(event) {
///         if let Event::Mqtt(msg) = event? {
///             ctx.kv_increment(msg.topic, 1)?;
///         }
///     }
///     Ok(())
/// }
/// ```
pub fn events<'e>(event: &Event<'e>) -> Events<'e> {
    match event {
        Event::Batch(batch) => Events::Batch(batch.iter()),
        single => Events::One(Some(*single)),
    }
}

/// Iterator returned by [`events`]; an event of a batch that does not decode
/// yields [`Error::BadEnvelope`] and ends the walk.
#[derive(Debug)]
pub enum Events<'e> {
    One(Option<Event<'e>>),
    Batch(SeqIter<'e, Event<'e>>),
}

impl<'e> Iterator for Events<'e> {
    type Item = Result<Event<'e>, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Events::One(event) => event.take().map(Ok),
            Events::Batch(items) => items
                .next()
                .map(|item| item.map_err(|_| Error::BadEnvelope)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{mqtt, schedule};
    use std::vec::Vec;
    use wasmgate_abi::Seq;

    #[test]
    fn a_single_event_is_walked_once() {
        let event = mqtt("a/b", "x");
        let all: Vec<_> = events(&event).collect();
        assert_eq!(all, [Ok(event)]);
    }

    #[test]
    fn a_batch_is_walked_in_order() {
        let inner = [mqtt("a/1", "1"), schedule("hourly", 5), mqtt("a/2", "2")];
        let encoded = Seq::<Event>::encode(&inner).unwrap();
        let batch = Event::Batch(Seq::from_encoded(&encoded));
        let all: Vec<_> = events(&batch).collect::<Result<_, _>>().unwrap();
        assert_eq!(all, inner);
    }

    #[test]
    fn a_malformed_batch_item_is_an_error_not_a_panic() {
        let batch = Event::Batch(Seq::from_encoded(&[0x00, 0xff]));
        let all: Vec<_> = events(&batch).collect();
        assert_eq!(all, [Err(Error::BadEnvelope)]);
    }
}
