//! Vending sales from files (`triggers = [{ file = "/var/spool/wasmgate/in/*.csv" }]`):
//! a USB sync job drops a CSV of sales (`machine,slot,cents`, a header line
//! first), and each file adds to `sales/<machine>` (cents) and `vends/<machine>`
//! in KV and sends `{"file":..,"rows":..,"cents":..}` upstream to
//! `sales/files`. A line that does not parse fails the file, which then goes
//! to `failed/` and the dead-letter queue, and nothing of it is counted.
#![cfg_attr(target_arch = "wasm32", no_std)]

use core::fmt::Write as _;
use heapless::String;
use serde::Serialize;
use wasmgate_sdk::{Ctx, Error, Event};

#[derive(Serialize)]
struct Summary<'a> {
    file: &'a str,
    rows: u32,
    cents: i64,
}

pub fn handle(event: &Event<'_>, ctx: &mut Ctx<'_>) -> Result<(), Error> {
    let Event::File(file) = event else {
        return Err(Error::msg("vending-sales takes files only"));
    };
    let text = core::str::from_utf8(file.contents).map_err(|_| Error::msg("not UTF-8"))?;
    let (mut rows, mut total) = (0u32, 0i64);
    for line in text
        .lines()
        .skip(1)
        .map(str::trim)
        .filter(|l| !l.is_empty())
    {
        let mut fields = line.split(',');
        let (Some(machine), Some(_slot), Some(cents), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(Error::msg("a line is not machine,slot,cents"));
        };
        let cents: i64 = cents
            .trim()
            .parse()
            .map_err(|_| Error::msg("cents is not a number"))?;
        ctx.kv_increment(&key("sales/", machine)?, cents)?;
        ctx.kv_increment(&key("vends/", machine)?, 1)?;
        rows += 1;
        total += cents;
    }
    let mut out = [0u8; 256];
    let summary = Summary {
        file: file.path,
        rows,
        cents: total,
    };
    let len = serde_json_core::to_slice(&summary, &mut out)
        .map_err(|_| Error::msg("summary over its buffer"))?;
    ctx.emit_upstream("sales/files", &out[..len])
}

fn key(prefix: &str, machine: &str) -> Result<String<64>, Error> {
    let mut key = String::new();
    write!(key, "{prefix}{}", machine.trim()).map_err(|_| Error::msg("machine id too long"))?;
    Ok(key)
}

wasmgate_sdk::export!(handle);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmgate_sdk::testing::{file, FakeHost};

    #[test]
    fn a_file_of_sales_adds_to_each_machine() {
        let mut host = FakeHost::new();
        let csv = "machine,slot,cents\nvm-17,A3,250\nvm-17,B1,180\nvm-4,A1,200\n";
        host.call(handle, &file("/in/sales.csv", csv)).unwrap();
        assert_eq!(host.counter("sales/vm-17"), Some(430));
        assert_eq!(host.counter("vends/vm-17"), Some(2));
        assert_eq!(host.counter("sales/vm-4"), Some(200));
        let sent = host.emits_to("sales/files");
        assert!(
            sent[0].text().contains(r#""rows":3,"cents":630"#),
            "{}",
            sent[0].text()
        );
    }

    #[test]
    fn a_bad_line_fails_the_whole_file() {
        let mut host = FakeHost::new();
        let csv = "machine,slot,cents\nvm-17,A3,250\nvm-17,B1,lots\n";
        assert!(host.call(handle, &file("/in/sales.csv", csv)).is_err());
        assert_eq!(host.counter("sales/vm-17"), None, "nothing of it counted");
    }
}
