//! A heartbeat on a schedule (`triggers = [{ schedule = "rate(1 minute)" }]`).
//!
//! On each tick it emits `{"scheduled_ms":..,"fired_ms":..,"late_ms":..,"catch_up":..}`
//! upstream to `heartbeat/<schedule>`, so the cloud sees the gateway alive,
//! and it counts ticks in KV: `ticks` in all, `late` for catch-up runs after
//! downtime, and `tick/<scheduled_ms>` once per tick, which shows that each
//! tick ran exactly once (the tests read it across a kill -9).
#![cfg_attr(target_arch = "wasm32", no_std)]

use core::fmt::Write as _;
use heapless::String;
use serde::Serialize;
use wasmgate_sdk::{Ctx, Error, Event};

#[derive(Serialize)]
struct Heartbeat {
    scheduled_ms: u64,
    fired_ms: u64,
    late_ms: u64,
    catch_up: bool,
    ticks: i64,
}

pub fn handle(event: &Event<'_>, ctx: &mut Ctx<'_>) -> Result<(), Error> {
    let Event::Schedule(tick) = event else {
        return Err(Error::msg("vending-heartbeat runs on a schedule only"));
    };
    let ticks = ctx.kv_increment("ticks", 1)?;
    if tick.catch_up {
        ctx.kv_increment("late", 1)?;
    }
    let mut key: String<32> = String::new();
    write!(key, "tick/{}", tick.scheduled_ms).map_err(|_| Error::msg("key over its buffer"))?;
    ctx.kv_increment(&key, 1)?;

    let beat = Heartbeat {
        scheduled_ms: tick.scheduled_ms,
        fired_ms: tick.fired_ms,
        late_ms: tick.fired_ms.saturating_sub(tick.scheduled_ms),
        catch_up: tick.catch_up,
        ticks,
    };
    let mut out = [0u8; 160];
    let len = serde_json_core::to_slice(&beat, &mut out)
        .map_err(|_| Error::msg("heartbeat over its buffer"))?;
    let mut topic: String<96> = String::new();
    topic
        .push_str("heartbeat/")
        .and_then(|()| topic.push_str(schedule_slug(tick.schedule)))
        .map_err(|_| Error::msg("schedule name too long for a topic"))?;
    ctx.emit_upstream(&topic, &out[..len])
}

/// `rate(1 minute)` -> `rate`: the kind of schedule, a safe topic level.
fn schedule_slug(schedule: &str) -> &str {
    schedule.split('(').next().unwrap_or("schedule")
}

wasmgate_sdk::export!(handle);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmgate_sdk::testing::{schedule, FakeHost};

    #[test]
    fn each_tick_is_counted_once_and_beats_upstream() {
        let mut host = FakeHost::new();
        host.call(handle, &schedule("rate(1 minute)", 60_000))
            .unwrap();
        host.call(handle, &schedule("rate(1 minute)", 120_000))
            .unwrap();
        assert_eq!(host.counter("ticks"), Some(2));
        assert_eq!(host.counter("tick/60000"), Some(1));
        assert_eq!(host.counter("late"), None);
        let beats = host.emits_to("heartbeat/rate");
        assert_eq!(beats.len(), 2);
        assert!(beats[1].text().contains(r#""scheduled_ms":120000"#));
    }

    #[test]
    fn other_events_are_refused() {
        let mut host = FakeHost::new();
        let error = host
            .call(handle, &wasmgate_sdk::testing::mqtt("a/b", "{}"))
            .unwrap_err();
        assert!(error.to_string().contains("schedule only"), "{error}");
    }
}
