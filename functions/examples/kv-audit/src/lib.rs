//! An audit of another function's state, from its KV change stream
//! (`triggers = [{ kv_change = "vending", keys = "vm-*" }]`): it keeps a
//! copy of each key under `copy/<key>` and counts the changes by kind in
//! `changes/insert`, `changes/modify` and `changes/remove`.
#![cfg_attr(target_arch = "wasm32", no_std)]

use core::fmt::Write as _;
use heapless::String;
use wasmgate_sdk::{Ctx, Error, Event, KvOp};

pub fn handle(event: &Event<'_>, ctx: &mut Ctx<'_>) -> Result<(), Error> {
    // One change, or a batch of them (`batch = { size = 100 }`), in order.
    for event in wasmgate_sdk::events(event) {
        audit(&event?, ctx)?;
    }
    Ok(())
}

fn audit(event: &Event<'_>, ctx: &mut Ctx<'_>) -> Result<(), Error> {
    let Event::KvChange(change) = event else {
        return Err(Error::msg("kv-audit follows a KV change stream only"));
    };
    let mut copy: String<160> = String::new();
    write!(copy, "copy/{}", change.key).map_err(|_| Error::msg("key too long"))?;
    let kind = match (change.op, change.old, change.value) {
        (KvOp::Put, None, Some(value)) => {
            ctx.kv_put(&copy, value)?;
            "changes/insert"
        }
        (KvOp::Put, Some(_), Some(value)) => {
            ctx.kv_put(&copy, value)?;
            "changes/modify"
        }
        _ => {
            ctx.kv_delete(&copy)?;
            "changes/remove"
        }
    };
    ctx.kv_increment(kind, 1)?;
    Ok(())
}

wasmgate_sdk::export!(handle);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmgate_sdk::testing::FakeHost;
    use wasmgate_sdk::KvChange;

    fn change<'a>(op: KvOp, old: Option<&'a [u8]>, value: Option<&'a [u8]>) -> Event<'a> {
        Event::KvChange(KvChange {
            namespace: "vending",
            key: "vm-17/vends",
            op,
            value,
            old,
        })
    }

    #[test]
    fn each_kind_of_change_is_copied_and_counted() {
        let mut host = FakeHost::new();
        host.call(handle, &change(KvOp::Put, None, Some(b"1")))
            .unwrap();
        host.call(handle, &change(KvOp::Put, Some(b"1"), Some(b"2")))
            .unwrap();
        assert_eq!(host.kv("copy/vm-17/vends"), Some(&b"2"[..]));
        host.call(handle, &change(KvOp::Delete, Some(b"2"), None))
            .unwrap();
        assert_eq!(host.kv("copy/vm-17/vends"), None);
        for kind in ["insert", "modify", "remove"] {
            assert_eq!(host.counter(&format!("changes/{kind}")), Some(1), "{kind}");
        }
    }
}
