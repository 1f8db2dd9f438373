//! Harness for the end-to-end tests: real brokers, the real `wasmgate`
//! binary, plain MQTT clients. Shared by `tests/pipeline.rs` and the
//! gateway crate's own integration tests, so not every test uses every piece.
#![allow(dead_code)]

pub mod gateway;
pub mod guest;
pub mod http;
pub mod iot_jobs;
pub mod mosquitto;
pub mod mqtt;
pub mod rig;
#[cfg(feature = "tls")]
pub mod tls;

/// The last 40 lines of the gateway's log (every run) and of each broker's,
/// for a failing assertion's message.
pub fn diagnostics(
    gateway: &gateway::GatewayProcess,
    brokers: &[(&str, &mosquitto::Mosquitto)],
) -> String {
    let tail = |text: String| {
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    };
    let mut out = format!("gateway log (end):\n{}", tail(gateway.logs()));
    for (name, broker) in brokers {
        out += &format!("\n{name} mosquitto log (end):\n{}", tail(broker.log()));
    }
    out
}
