//! Vending sales in batches (`triggers = [{ mqtt = "vending/+/sale", batch =
//! { size = 100, window_ms = 500 } }]`): each message is `{"cents": 150}`
//! from `vending/<machine>/sale`, added to `sales/<machine>` in KV; the
//! invocation counts itself in `batches` and its good items in `items`. A
//! message that does not parse is reported failed with `item_failed`, as
//! Lambda's `ReportBatchItemFailures`: only it is retried and then
//! dead-lettered, and the rest of its batch commits.
//!
//! It works unbatched too (`events` yields the one event); a bad message is
//! then a failed invocation.
#![cfg_attr(target_arch = "wasm32", no_std)]

use core::fmt::Write as _;
use heapless::String;
use serde::Deserialize;
use wasmgate_sdk::{Ctx, Error, Event, LogLevel};

#[derive(Deserialize)]
struct Sale {
    cents: i64,
}

/// The machine of a `vending/<machine>/sale` topic.
fn machine(topic: &str) -> Option<&str> {
    let mut parts = topic.split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("vending"), Some(machine), Some("sale"), None) if !machine.is_empty() => {
            Some(machine)
        }
        _ => None,
    }
}

/// The KV key and the cents of one sale message; `None` if malformed.
fn sale(event: &Event<'_>) -> Option<(String<80>, i64)> {
    let Event::Mqtt(message) = event else {
        return None;
    };
    let machine = machine(message.topic)?;
    let (sale, _) = serde_json_core::from_slice::<Sale>(message.payload).ok()?;
    let mut key = String::new();
    write!(key, "sales/{machine}").ok()?;
    Some((key, sale.cents))
}

pub fn handle(event: &Event<'_>, ctx: &mut Ctx<'_>) -> Result<(), Error> {
    let batched = matches!(event, Event::Batch(_));
    let mut good = 0;
    for (index, item) in wasmgate_sdk::events(event).enumerate() {
        match sale(&item?) {
            Some((key, cents)) => {
                ctx.kv_increment(&key, cents)?;
                good += 1;
            }
            None if batched => {
                ctx.log(
                    LogLevel::Warn,
                    "a sale that does not parse; reported failed",
                );
                ctx.item_failed(index)?;
            }
            None => return Err(Error::msg("a sale that does not parse")),
        }
    }
    ctx.kv_increment("batches", 1)?;
    ctx.kv_increment("items", good)?;
    Ok(())
}

wasmgate_sdk::export!(handle);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmgate_sdk::abi::Seq;
    use wasmgate_sdk::testing::{mqtt, FakeHost};

    #[test]
    fn a_batch_commits_its_good_sales_and_reports_the_bad_one() {
        let events = [
            mqtt("vending/vm-1/sale", r#"{"cents":150}"#),
            mqtt("vending/vm-1/sale", "not json"),
            mqtt("vending/vm-2/sale", r#"{"cents":200}"#),
        ];
        let encoded = Seq::<Event>::encode(&events).unwrap();
        let mut host = FakeHost::new();
        host.call(handle, &Event::Batch(Seq::from_encoded(&encoded)))
            .unwrap();
        assert_eq!(host.failed_items(), vec![1]);
        assert_eq!(host.counter("sales/vm-1"), Some(150));
        assert_eq!(host.counter("sales/vm-2"), Some(200));
        assert_eq!(host.counter("items"), Some(2));
        assert_eq!(host.counter("batches"), Some(1));
    }

    #[test]
    fn alone_a_bad_sale_fails_the_invocation() {
        let mut host = FakeHost::new();
        assert!(host.call(handle, &mqtt("vending/vm-1/sale", "{}")).is_err());
        host.call(handle, &mqtt("vending/vm-1/sale", r#"{"cents":5}"#))
            .unwrap();
        assert_eq!(host.counter("sales/vm-1"), Some(5));
    }

    #[test]
    fn outside_a_batch_no_item_can_fail() {
        let mut host = FakeHost::new();
        assert!(host.ctx().item_failed(0).is_err());
    }
}
