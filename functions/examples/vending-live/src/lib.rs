//! A maintenance tablet watches a vending machine live (`triggers = [{
//! websocket = "/live" }, { mqtt = "vending/+/telemetry" }]`):
//!
//! - connect to `/live?machine=vm-17`: the connection joins the machine's
//!   watchers (`watchers/<machine>`, ids separated by spaces, at most 8); a
//!   connect without a machine, or to a machine with 8 watchers, is refused
//!   (closed with 1008 and the reason);
//! - each telemetry message of the machine is kept (`last/<machine>`) and
//!   posted to every watcher, after it commits;
//! - a message `state` from the tablet is answered with the last telemetry,
//!   anything else with `{"error":...}`;
//! - on disconnect the connection leaves the watchers.
#![cfg_attr(target_arch = "wasm32", no_std)]

use core::fmt::Write as _;
use heapless::String;
use wasmgate_sdk::{Ctx, Error, Event, WebSocketEvent, WebSocketKind};

/// Watchers of one machine at most.
pub const MAX_WATCHERS: usize = 8;

type Key = String<96>;
/// Up to MAX_WATCHERS ids of 32 characters, space separated.
type Watchers = String<{ MAX_WATCHERS * 33 }>;

fn key(prefix: &str, name: &str) -> Result<Key, Error> {
    let mut key = Key::new();
    write!(key, "{prefix}{name}").map_err(|_| Error::msg("name too long"))?;
    Ok(key)
}

/// The machine a connection watches, from `machine=` in its query.
fn machine_of(query: &str) -> Option<&str> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("machine="))
        .filter(|m| {
            !m.is_empty()
                && m.len() <= 32
                && m.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn watchers(ctx: &mut Ctx<'_>, machine: &str) -> Result<Watchers, Error> {
    let mut buf = [0u8; MAX_WATCHERS * 33];
    let mut list = Watchers::new();
    if let Some(bytes) = ctx.kv_get(&key("watchers/", machine)?, &mut buf)? {
        let text = core::str::from_utf8(bytes).map_err(|_| Error::msg("watchers not UTF-8"))?;
        list.push_str(text)
            .map_err(|_| Error::msg("watchers too long"))?;
    }
    Ok(list)
}

fn on_socket(ws: &WebSocketEvent<'_>, ctx: &mut Ctx<'_>) -> Result<(), Error> {
    let conn_key = key("conn/", ws.connection_id)?;
    match ws.kind {
        WebSocketKind::Connect => {
            let Some(machine) = machine_of(ws.query) else {
                return ctx.respond(400, "say which machine: /live?machine=vm-17");
            };
            let mut list = watchers(ctx, machine)?;
            if list.split(' ').filter(|w| !w.is_empty()).count() >= MAX_WATCHERS {
                return ctx.respond(503, "this machine has its most watchers");
            }
            if !list.is_empty() {
                list.push(' ')
                    .map_err(|_| Error::msg("watchers too long"))?;
            }
            list.push_str(ws.connection_id)
                .map_err(|_| Error::msg("watchers too long"))?;
            ctx.kv_put(&key("watchers/", machine)?, list.as_bytes())?;
            ctx.kv_put(&conn_key, machine)
        }
        WebSocketKind::Message => {
            if ws.data != b"state" {
                return ctx.post_to_connection(
                    ws.connection_id,
                    r#"{"error":"send `state` for the machine's last telemetry"}"#,
                );
            }
            let mut machine = [0u8; 32];
            let Some(machine) = ctx.kv_get(&conn_key, &mut machine)? else {
                return Ok(());
            };
            let machine =
                core::str::from_utf8(machine).map_err(|_| Error::msg("machine not UTF-8"))?;
            let mut last = [0u8; 2048];
            let last_key = key("last/", machine)?;
            match ctx.kv_get(&last_key, &mut last)? {
                Some(last) => ctx.post_to_connection(ws.connection_id, last),
                None => ctx.post_to_connection(ws.connection_id, r#"{"error":"no telemetry yet"}"#),
            }
        }
        WebSocketKind::Disconnect => {
            let mut machine = [0u8; 32];
            let Some(machine) = ctx.kv_get(&conn_key, &mut machine)? else {
                return Ok(());
            };
            let mut name: String<32> = String::new();
            name.push_str(
                core::str::from_utf8(machine).map_err(|_| Error::msg("machine not UTF-8"))?,
            )
            .map_err(|_| Error::msg("machine too long"))?;
            let list = watchers(ctx, &name)?;
            let mut kept = Watchers::new();
            for id in list
                .split(' ')
                .filter(|w| !w.is_empty() && *w != ws.connection_id)
            {
                if !kept.is_empty() {
                    let _ = kept.push(' ');
                }
                let _ = kept.push_str(id);
            }
            ctx.kv_put(&key("watchers/", &name)?, kept.as_bytes())?;
            ctx.kv_delete(&conn_key)
        }
    }
}

pub fn handle(event: &Event<'_>, ctx: &mut Ctx<'_>) -> Result<(), Error> {
    match event {
        Event::WebSocket(ws) => on_socket(ws, ctx),
        Event::Mqtt(message) => {
            let mut parts = message.topic.split('/');
            let (Some("vending"), Some(machine), Some("telemetry"), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(Error::msg("not vending/<machine>/telemetry"));
            };
            ctx.kv_put(&key("last/", machine)?, message.payload)?;
            let list = watchers(ctx, machine)?;
            for id in list.split(' ').filter(|w| !w.is_empty()) {
                ctx.post_to_connection(id, message.payload)?;
            }
            Ok(())
        }
        _ => Err(Error::msg("vending-live takes websocket and mqtt events")),
    }
}

wasmgate_sdk::export!(handle);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmgate_sdk::testing::{mqtt, websocket, FakeHost};

    #[test]
    fn watchers_get_their_machines_telemetry_and_leave_on_disconnect() {
        let mut host = FakeHost::new();
        host.call(
            handle,
            &websocket(WebSocketKind::Connect, "/live", "c1", "machine=vm-17", ""),
        )
        .unwrap();
        host.call(
            handle,
            &websocket(WebSocketKind::Connect, "/live", "c2", "machine=vm-17", ""),
        )
        .unwrap();
        assert_eq!(host.kv("watchers/vm-17"), Some(&b"c1 c2"[..]));
        host.clear_outputs();
        host.call(
            handle,
            &mqtt("vending/vm-17/telemetry", r#"{"temp_c":4.5}"#),
        )
        .unwrap();
        let to: Vec<&str> = host.posts().iter().map(|p| p.connection.as_str()).collect();
        assert_eq!(to, ["c1", "c2"]);
        host.clear_outputs();
        host.call(
            handle,
            &websocket(WebSocketKind::Message, "/live", "c2", "", "state"),
        )
        .unwrap();
        assert_eq!(host.posts()[0].data, br#"{"temp_c":4.5}"#);
        host.call(
            handle,
            &websocket(WebSocketKind::Disconnect, "/live", "c1", "", ""),
        )
        .unwrap();
        assert_eq!(host.kv("watchers/vm-17"), Some(&b"c2"[..]));
        assert_eq!(host.kv("conn/c1"), None);
    }

    #[test]
    fn a_connect_without_a_machine_is_refused_with_why() {
        let mut host = FakeHost::new();
        host.call(
            handle,
            &websocket(WebSocketKind::Connect, "/live", "c1", "", ""),
        )
        .unwrap();
        let response = host.response().unwrap();
        assert_eq!(response.status, 400);
        assert!(response.text().contains("which machine"));
    }
}
