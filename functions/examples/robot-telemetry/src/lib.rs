//! Robot telemetry: downsampled positions and battery alerts.
//!
//! Robots publish to `robots/<id>/telemetry`:
//!
//! ```json
//! {"robot":"r-3","ts":1764160000000,"x":1.5,"y":2.0,"battery_pct":17.5,"state":"moving"}
//! ```
//!
//! - The position goes upstream to `robots/<id>/position` (QoS 1) only when the
//!   robot moved more than `min_move_m` (config, default 0.5) since the last
//!   position sent, or when `every_n` messages (config, default 10) arrived
//!   since then, so a parked robot still reports now and then. The first
//!   message always goes.
//! - A battery alert goes to `robots/<id>/alert` (local broker) when the
//!   battery drops below `battery_low_pct` (config, default 20): once per
//!   crossing, re-armed when the battery is back at or above the threshold.
//!
//! State per robot in KV: `<id>/pos` (last sent x, y as two f32 LE),
//! `<id>/since` (messages since then, a counter), `<id>/battery_low` (set
//! while the alert is raised).
#![cfg_attr(target_arch = "wasm32", no_std)]

use heapless::String;
use serde::{Deserialize, Serialize};
use wasmgate_sdk::{Ctx, Error, Event, LogLevel};

/// Returned (and logged) when a payload is not the telemetry JSON above.
pub const BAD_TELEMETRY: i32 = 10;
/// Returned when the topic is not `robots/<id>/telemetry`.
pub const BAD_TOPIC: i32 = 11;

const DEFAULT_MIN_MOVE_M: f32 = 0.5;
const DEFAULT_EVERY_N: i64 = 10;
const DEFAULT_BATTERY_LOW_PCT: f32 = 20.0;

#[derive(Debug, Deserialize)]
struct Telemetry<'a> {
    ts: u64,
    x: f32,
    y: f32,
    battery_pct: f32,
    #[serde(default)]
    state: &'a str,
}

#[derive(Serialize)]
struct Position<'a> {
    robot: &'a str,
    ts: u64,
    x: f32,
    y: f32,
    state: &'a str,
}

#[derive(Serialize)]
struct BatteryAlert<'a> {
    robot: &'a str,
    ts: u64,
    alert: &'static str,
    battery_pct: f32,
    threshold_pct: f32,
}

pub fn handle(event: &Event<'_>, ctx: &mut Ctx<'_>) -> Result<(), Error> {
    for event in wasmgate_sdk::events(event) {
        let Event::Mqtt(msg) = event? else {
            return Err(Error::msg("robot-telemetry handles MQTT messages only"));
        };
        on_telemetry(msg.topic, msg.payload, ctx)?;
    }
    Ok(())
}

fn on_telemetry(topic: &str, payload: &[u8], ctx: &mut Ctx<'_>) -> Result<(), Error> {
    let Some(robot) = robot_of(topic) else {
        ctx.log_parts(
            LogLevel::Error,
            &["not a robots/<id>/telemetry topic: ", topic],
        );
        return Err(Error::user(BAD_TOPIC, "unexpected topic"));
    };
    let t: Telemetry = match serde_json_core::from_slice(payload) {
        Ok((t, _)) => t,
        Err(_) => {
            ctx.log_parts(LogLevel::Error, &["invalid telemetry JSON on ", topic]);
            return Err(Error::user(BAD_TELEMETRY, "telemetry is not valid JSON"));
        }
    };
    downsample_position(robot, &t, ctx)?;
    battery_alert(robot, &t, ctx)
}

fn downsample_position(robot: &str, t: &Telemetry<'_>, ctx: &mut Ctx<'_>) -> Result<(), Error> {
    let min_move_m = ctx.config_or("min_move_m", DEFAULT_MIN_MOVE_M)?;
    let every_n = ctx.config_or("every_n", DEFAULT_EVERY_N)?;
    let pos_key = join(&[robot, "/pos"])?;
    let since_key = join(&[robot, "/since"])?;

    let since = ctx.kv_increment(&since_key, 1)?;
    let mut buf = [0u8; 8];
    let moved = match ctx.kv_get(&pos_key, &mut buf)? {
        Some(&[x0, x1, x2, x3, y0, y1, y2, y3]) => {
            let dx = t.x - f32::from_le_bytes([x0, x1, x2, x3]);
            let dy = t.y - f32::from_le_bytes([y0, y1, y2, y3]);
            // Squared, because `sqrt` is not in `core`.
            dx * dx + dy * dy > min_move_m * min_move_m
        }
        // Never sent (or unreadable): send this one.
        _ => true,
    };
    if !moved && since < every_n {
        return Ok(());
    }

    let position = Position {
        robot,
        ts: t.ts,
        x: t.x,
        y: t.y,
        state: t.state,
    };
    let mut out = [0u8; 256];
    let len = serde_json_core::to_slice(&position, &mut out)
        .map_err(|_| Error::msg("position JSON over its buffer"))?;
    ctx.emit_upstream(&join(&["robots/", robot, "/position"])?, &out[..len])?;

    let mut pos = [0u8; 8];
    pos[..4].copy_from_slice(&t.x.to_le_bytes());
    pos[4..].copy_from_slice(&t.y.to_le_bytes());
    ctx.kv_put(&pos_key, pos)?;
    // Back to zero; as an increment so that it composes with concurrent ones.
    ctx.kv_increment(&since_key, -since)?;
    Ok(())
}

fn battery_alert(robot: &str, t: &Telemetry<'_>, ctx: &mut Ctx<'_>) -> Result<(), Error> {
    let threshold_pct = ctx.config_or("battery_low_pct", DEFAULT_BATTERY_LOW_PCT)?;
    let flag_key = join(&[robot, "/battery_low"])?;
    let mut buf = [0u8; 1];
    let raised = ctx.kv_get(&flag_key, &mut buf)?.is_some();
    let low = t.battery_pct < threshold_pct;

    if low && !raised {
        let alert = BatteryAlert {
            robot,
            ts: t.ts,
            alert: "battery_low",
            battery_pct: t.battery_pct,
            threshold_pct,
        };
        let mut out = [0u8; 256];
        let len = serde_json_core::to_slice(&alert, &mut out)
            .map_err(|_| Error::msg("alert JSON over its buffer"))?;
        ctx.emit(&join(&["robots/", robot, "/alert"])?, &out[..len])?;
        ctx.kv_put(&flag_key, [1])?;
    } else if !low && raised {
        ctx.kv_delete(&flag_key)?;
    }
    Ok(())
}

/// `robots/<id>/telemetry` -> `<id>`.
fn robot_of(topic: &str) -> Option<&str> {
    let robot = topic.strip_prefix("robots/")?.strip_suffix("/telemetry")?;
    (!robot.is_empty() && !robot.contains('/')).then_some(robot)
}

/// Joins parts into a key or topic; an id that makes one over 128 bytes is refused.
fn join(parts: &[&str]) -> Result<String<128>, Error> {
    let mut out = String::new();
    for part in parts {
        out.push_str(part)
            .map_err(|_| Error::msg("robot id too long"))?;
    }
    Ok(out)
}

wasmgate_sdk::export!(handle);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmgate_sdk::testing::{mqtt, FakeHost};
    use wasmgate_sdk::Destination;

    const TOPIC: &str = "robots/r-3/telemetry";

    #[track_caller]
    fn send(host: &mut FakeHost, x: f32, y: f32, battery_pct: f32) {
        let payload = format!(
            r#"{{"robot":"r-3","ts":1764160000000,"x":{x},"y":{y},"battery_pct":{battery_pct},"state":"moving"}}"#
        );
        host.call(handle, &mqtt(TOPIC, &payload))
            .expect("invocation succeeds");
    }

    fn positions(host: &FakeHost) -> usize {
        host.emits_to("robots/r-3/position").len()
    }

    fn alerts(host: &FakeHost) -> usize {
        host.emits_to("robots/r-3/alert").len()
    }

    #[test]
    fn the_first_position_is_sent_upstream() {
        let mut host = FakeHost::new();
        send(&mut host, 1.5, 2.0, 80.0);
        let sent = host.emits_to("robots/r-3/position");
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].options.destination, Destination::Upstream);
        assert_eq!(sent[0].options.qos, 1);
        assert_eq!(
            sent[0].text(),
            r#"{"robot":"r-3","ts":1764160000000,"x":1.5,"y":2.0,"state":"moving"}"#
        );
    }

    #[test]
    fn small_moves_are_not_sent() {
        let mut host = FakeHost::new();
        send(&mut host, 0.0, 0.0, 80.0);
        send(&mut host, 0.3, 0.0, 80.0);
        send(&mut host, 0.3, 0.3, 80.0);
        assert_eq!(positions(&host), 1);
    }

    #[test]
    fn a_move_beyond_the_minimum_since_the_last_sent_position_is_sent() {
        let mut host = FakeHost::new();
        send(&mut host, 0.0, 0.0, 80.0);
        send(&mut host, 0.3, 0.0, 80.0);
        // 0.6 m from the last *sent* position, though only 0.3 m from the last message.
        send(&mut host, 0.6, 0.0, 80.0);
        assert_eq!(positions(&host), 2);
        send(&mut host, 0.9, 0.0, 80.0);
        assert_eq!(positions(&host), 2, "0.3 m from the new reference");
    }

    #[test]
    fn a_parked_robot_still_reports_every_n_messages() {
        let mut host = FakeHost::new();
        for _ in 0..21 {
            send(&mut host, 4.0, 4.0, 80.0);
        }
        // Message 1, then the 10th after it (11), then the 10th after that (21).
        assert_eq!(positions(&host), 3);
    }

    #[test]
    fn downsampling_follows_the_config() {
        let mut host = FakeHost::new();
        host.set_config("min_move_m", "5")
            .set_config("every_n", "3");
        send(&mut host, 0.0, 0.0, 80.0);
        send(&mut host, 3.0, 0.0, 80.0);
        send(&mut host, 3.0, 3.0, 80.0);
        assert_eq!(positions(&host), 1, "4.2 m is under 5 m");
        send(&mut host, 3.0, 3.0, 80.0);
        assert_eq!(positions(&host), 2, "third message since the last sent one");
    }

    #[test]
    fn a_low_battery_alerts_once_per_crossing() {
        let mut host = FakeHost::new();
        send(&mut host, 0.0, 0.0, 25.0);
        assert_eq!(alerts(&host), 0);
        send(&mut host, 0.0, 0.0, 19.5);
        send(&mut host, 0.0, 0.0, 18.0);
        send(&mut host, 0.0, 0.0, 17.0);
        assert_eq!(alerts(&host), 1);
        let alert = host.emits_to("robots/r-3/alert")[0];
        assert_eq!(alert.options.destination, Destination::Local);
        assert_eq!(
            alert.text(),
            r#"{"robot":"r-3","ts":1764160000000,"alert":"battery_low","battery_pct":19.5,"threshold_pct":20.0}"#
        );
        // Charged, then low again: a new crossing.
        send(&mut host, 0.0, 0.0, 60.0);
        send(&mut host, 0.0, 0.0, 15.0);
        assert_eq!(alerts(&host), 2);
    }

    #[test]
    fn the_battery_threshold_comes_from_the_config() {
        let mut host = FakeHost::new();
        host.set_config("battery_low_pct", "50");
        send(&mut host, 0.0, 0.0, 45.0);
        assert_eq!(alerts(&host), 1);
    }

    #[test]
    fn robots_are_tracked_separately() {
        let mut host = FakeHost::new();
        send(&mut host, 0.0, 0.0, 10.0);
        let other = r#"{"ts":1,"x":0.0,"y":0.0,"battery_pct":10.0}"#;
        host.call(handle, &mqtt("robots/r-4/telemetry", other))
            .unwrap();
        assert_eq!(host.emits_to("robots/r-4/position").len(), 1);
        assert_eq!(host.emits_to("robots/r-4/alert").len(), 1);
        assert_eq!(alerts(&host), 1);
    }

    #[test]
    fn bad_json_fails_the_invocation_and_keeps_no_state() {
        let mut host = FakeHost::new();
        let err = host
            .call(handle, &mqtt(TOPIC, r#"{"x":1.0,"y":"#))
            .unwrap_err();
        assert_eq!(err.code(), BAD_TELEMETRY);
        assert!(host.logged(
            LogLevel::Error,
            "invalid telemetry JSON on robots/r-3/telemetry"
        ));
        assert_eq!(host.counter("r-3/since"), None);
        assert!(host.emits().is_empty());
    }
}
