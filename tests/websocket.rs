//! WebSocket routes end to end, over a real socket against the real binary:
//! a tablet watching a vending machine (functions/examples/vending-live)
//! gets the machine's telemetry as the gateway commits it, asks for its
//! state, and leaves; each refusal closes with its code (1008 refused by the
//! function, 1009 a message too big, 1013 too many connections, 1001 idle).

mod support;

use std::net::TcpStream;
use std::time::{Duration, Instant};
use support::gateway::{example_wasm, kv_value, GatewayProcess};
use support::mqtt::{free_port, wait_until, MqttClient};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

const ONE: Duration = Duration::from_secs(30);

type Socket = WebSocket<MaybeTlsStream<TcpStream>>;

fn open(port: u16, target: &str) -> Socket {
    let (socket, _) = tungstenite::connect(format!("ws://127.0.0.1:{port}{target}"))
        .unwrap_or_else(|e| panic!("connect {target}: {e}"));
    if let MaybeTlsStream::Plain(tcp) = socket.get_ref() {
        tcp.set_read_timeout(Some(ONE)).unwrap();
    }
    socket
}

/// The next text message, or how the connection closed.
fn next(socket: &mut Socket) -> Result<String, (CloseCode, String)> {
    loop {
        match socket.read() {
            Ok(Message::Text(text)) => return Ok(text),
            Ok(Message::Close(frame)) => {
                let frame = frame.expect("a close frame with a code");
                return Err((frame.code, frame.reason.into_owned()));
            }
            Ok(_) => continue,
            Err(e) => panic!("read: {e}"),
        }
    }
}

#[test]
fn a_tablet_watches_a_machine_live_and_each_refusal_has_its_close_code() {
    let http = free_port();
    let broker = free_port();
    let gateway = GatewayProcess::start_toml(|dir| {
        format!(
            "data_dir = {data:?}\n[broker]\nlisten = \"127.0.0.1:{broker}\"\n[http]\nlisten = \"127.0.0.1:{http}\"\n\
             [[functions]]\nname = \"live\"\nwasm = {wasm:?}\n\
             triggers = [{{ websocket = \"/live\", max_connections = 3, idle_timeout_ms = 1500, max_message_bytes = 64 }}, {{ mqtt = \"vending/+/telemetry\" }}]\n",
            data = dir.join("data").display().to_string(),
            wasm = example_wasm("vending_live.wasm").display().to_string(),
        )
    });

    // A connect the function refuses: no machine.
    let mut refused = open(http, "/live");
    let (code, reason) = next(&mut refused).unwrap_err();
    assert_eq!(code, CloseCode::Policy, "{reason}");
    assert!(reason.contains("which machine"), "{reason}");

    let mut tablet = open(http, "/live?machine=vm-17");
    assert!(
        wait_until(ONE, || kv_value(&gateway, "live", "watchers/vm-17")
            .is_some_and(|w| w.len() >= 32)),
        "{}",
        gateway.logs()
    );
    // Telemetry of the machine reaches the tablet once committed.
    let device = MqttClient::connect(broker, "vm-17");
    device.publish("vending/vm-17/telemetry", r#"{"temp_c":4.5,"seq":1}"#);
    assert_eq!(next(&mut tablet).unwrap(), r#"{"temp_c":4.5,"seq":1}"#);
    // Another machine's does not.
    device.publish("vending/vm-99/telemetry", r#"{"temp_c":9.0}"#);
    device.publish("vending/vm-17/telemetry", r#"{"temp_c":4.6,"seq":2}"#);
    assert_eq!(next(&mut tablet).unwrap(), r#"{"temp_c":4.6,"seq":2}"#);
    // Asked, it answers with the machine's last telemetry.
    tablet.send(Message::text("state")).unwrap();
    assert_eq!(next(&mut tablet).unwrap(), r#"{"temp_c":4.6,"seq":2}"#);

    // Over the route's 3 connections: closed with 1013.
    let _second = open(http, "/live?machine=vm-17");
    let _third = open(http, "/live?machine=vm-18");
    let mut fourth = open(http, "/live?machine=vm-19");
    let (code, reason) = next(&mut fourth).unwrap_err();
    assert_eq!(code, CloseCode::Again, "{reason}");

    // A message over 64 bytes: closed with 1009.
    tablet.send(Message::text("x".repeat(100))).unwrap();
    let (code, reason) = next(&mut tablet).unwrap_err();
    assert_eq!(code, CloseCode::Size, "{reason}");
    // Its disconnect ran: it left the machine's watchers.
    assert!(
        wait_until(ONE, || kv_value(&gateway, "live", "watchers/vm-17")
            .is_some_and(|w| w.len() == 32)),
        "{:?}\n{}",
        kv_value(&gateway, "live", "watchers/vm-17"),
        gateway.logs()
    );

    // Silent for longer than the idle timeout: closed with 1001.
    let mut quiet = open(http, "/live?machine=vm-20");
    let started = Instant::now();
    let (code, reason) = next(&mut quiet).unwrap_err();
    assert_eq!(code, CloseCode::Away, "{reason}");
    assert!(reason.contains("idle"), "{reason}");
    assert!(started.elapsed() >= Duration::from_millis(1_000));
}
