//! The embedded MQTT broker: rumqttd inside the gateway process, so a fresh
//! board needs nothing else and devices connect straight to the gateway.
//!
//! The gateway talks to it over loopback exactly as it would to mosquitto,
//! so both modes share one ingress path and one set of tests.
//!
//! rumqttd keeps sessions in memory: messages it holds for the gateway do not
//! survive the process. Where that matters, run mosquitto with persistence
//! and `mode = "external"`.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// Largest MQTT payload the embedded broker accepts. Above the 1 MB a camera
/// still or firmware chunk may need; functions refuse what they cannot handle.
pub const MAX_PAYLOAD_BYTES: usize = 2 << 20;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("embedded broker: cannot listen on {addr}: {error} (is another broker running there? set broker.listen or use mode = \"external\")")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("embedded broker: did not start listening on {addr} within {waited:?}")]
    NotReady { addr: SocketAddr, waited: Duration },
    #[error("embedded broker: {0}")]
    Start(String),
}

/// A running embedded broker. It runs on its own threads until the process
/// exits; rumqttd has no shutdown, and the gateway stops it by exiting.
#[derive(Debug)]
pub struct EmbeddedBroker {
    addr: SocketAddr,
}

impl EmbeddedBroker {
    /// Starts rumqttd on `listen` and waits until it accepts connections.
    pub fn start(listen: SocketAddr) -> Result<Self, BrokerError> {
        // rumqttd reports a failed bind only in a log line from its own
        // thread, so find out first, while the error can still be returned.
        TcpListener::bind(listen).map_err(|error| BrokerError::Bind {
            addr: listen,
            error,
        })?;
        let mut broker = rumqttd::Broker::new(config(listen));
        let thread = std::thread::Builder::new()
            .name("embedded-broker".into())
            .spawn(move || broker.start().map_err(|e| e.to_string()))
            .map_err(|e| BrokerError::Start(e.to_string()))?;

        let local = connect_addr(listen);
        let waited = Duration::from_secs(5);
        let deadline = Instant::now() + waited;
        loop {
            if thread.is_finished() {
                let reason = match thread.join() {
                    Ok(Err(e)) => e,
                    _ => "stopped unexpectedly".into(),
                };
                return Err(BrokerError::Start(reason));
            }
            if TcpStream::connect_timeout(&local, Duration::from_millis(100)).is_ok() {
                tracing::info!(%listen, "embedded broker listening");
                return Ok(EmbeddedBroker { addr: local });
            }
            if Instant::now() >= deadline {
                return Err(BrokerError::NotReady {
                    addr: listen,
                    waited,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Where the gateway's own clients connect (loopback when listening on all interfaces).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// `0.0.0.0:p` is where to listen, not where to connect.
fn connect_addr(listen: SocketAddr) -> SocketAddr {
    let mut addr = listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    addr
}

/// Sized for a gateway, not a cloud broker: segments bound the memory each
/// topic's log may use.
fn config(listen: SocketAddr) -> rumqttd::Config {
    let connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: MAX_PAYLOAD_BYTES,
        max_inflight_count: 100,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = rumqttd::ServerSettings {
        name: "v4".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: 1_024,
            max_outgoing_packet_count: 200,
            max_segment_size: MAX_PAYLOAD_BYTES,
            max_segment_count: 4,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("v4".to_owned(), server)])),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_listen_address_connects_over_loopback() {
        let addr: SocketAddr = "0.0.0.0:1883".parse().unwrap();
        assert_eq!(connect_addr(addr), "127.0.0.1:1883".parse().unwrap());
        let addr: SocketAddr = "192.0.2.1:1883".parse().unwrap();
        assert_eq!(connect_addr(addr), addr);
    }

    #[test]
    fn a_taken_port_is_a_clear_error() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let error = EmbeddedBroker::start(taken.local_addr().unwrap()).unwrap_err();
        assert!(matches!(error, BrokerError::Bind { .. }), "{error}");
        assert!(error.to_string().contains("another broker"), "{error}");
    }
}
