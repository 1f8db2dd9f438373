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

/// The embedded broker's bounds: what devices, one listener, and retained
/// messages may take of the gateway (see vendor/rumqttd/UPSTREAM.md for the
/// rumqttd settings behind them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerSettings {
    /// How long a new connection may stay silent before its CONNECT arrives;
    /// then the broker closes it. At most 65,535 (rumqttd holds it in a `u16`).
    pub connect_timeout_ms: u16,
    /// Sessions the broker holds at once, over all listeners.
    pub max_connections: usize,
    /// Connections the device listener (`listen`) holds at once, counted from
    /// the TCP accept (before CONNECT too): past it a new one is accepted and
    /// closed at once. Below `max_connections`, so that devices cannot take
    /// every session from the gateway's own clients on `local_listen`.
    pub max_device_connections: usize,
    /// A second listener, on loopback, for the gateway's own sessions: it has
    /// no cap of its own, so it always has `max_connections -
    /// max_device_connections` sessions of room. `None`: the gateway's
    /// sessions use the device listener.
    pub local_listen: Option<SocketAddr>,
    /// Retained messages kept at once; past it a retained PUBLISH is still
    /// delivered but not retained (a warning, and counted).
    pub max_retained_count: usize,
    /// Bytes of retained topics and payloads kept at once; as above.
    pub max_retained_bytes: usize,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        BrokerSettings {
            // Devices on the LAN send CONNECT within milliseconds; a connection
            // silent for 10 s is not a device about to speak.
            connect_timeout_ms: 10_000,
            max_connections: 1_024,
            max_device_connections: 1_000,
            local_listen: None,
            // About one status message per device, and sixteen payloads of the
            // largest size: a Pi does not give more than this to retained state.
            max_retained_count: 4_096,
            max_retained_bytes: 32 << 20,
        }
    }
}

/// A running embedded broker. It runs on its own threads until the process
/// exits; rumqttd has no shutdown, and the gateway stops it by exiting.
#[derive(Debug)]
pub struct EmbeddedBroker {
    addr: SocketAddr,
    stats: std::sync::Arc<rumqttd::BrokerStats>,
}

impl EmbeddedBroker {
    /// Starts rumqttd on `listen` and waits until it accepts connections.
    pub fn start(listen: SocketAddr) -> Result<Self, BrokerError> {
        Self::start_with(listen, &BrokerSettings::default())
    }

    /// [`EmbeddedBroker::start`] with bounds other than the defaults.
    pub fn start_with(listen: SocketAddr, settings: &BrokerSettings) -> Result<Self, BrokerError> {
        // rumqttd reports a failed bind only in a log line from its own
        // thread, so find out first, while the error can still be returned.
        for addr in std::iter::once(listen).chain(settings.local_listen) {
            TcpListener::bind(addr).map_err(|error| BrokerError::Bind { addr, error })?;
        }
        let mut broker = rumqttd::Broker::new(config(listen, settings));
        let stats = broker.stats();
        let thread = std::thread::Builder::new()
            .name("embedded-broker".into())
            .spawn(move || broker.start().map_err(|e| e.to_string()))
            .map_err(|e| BrokerError::Start(e.to_string()))?;

        let local = settings
            .local_listen
            .unwrap_or_else(|| connect_addr(listen));
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
                return Ok(EmbeddedBroker { addr: local, stats });
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

    /// What the broker refused to hold: connections past a listener's cap,
    /// retained messages past the bounds.
    pub fn stats(&self) -> &rumqttd::BrokerStats {
        &self.stats
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
/// topic's log may use, `settings` the rest.
pub fn config(listen: SocketAddr, settings: &BrokerSettings) -> rumqttd::Config {
    let connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: settings.connect_timeout_ms,
        max_payload_size: MAX_PAYLOAD_BYTES,
        max_inflight_count: 100,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = |name: &str, listen, max_connections| rumqttd::ServerSettings {
        name: name.into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: connections.clone(),
        max_connections,
    };
    let mut servers = HashMap::from([(
        "v4".to_owned(),
        server("v4", listen, Some(settings.max_device_connections)),
    )]);
    if let Some(local) = settings.local_listen {
        servers.insert("local".to_owned(), server("local", local, None));
    }
    rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: settings.max_connections,
            max_outgoing_packet_count: 200,
            max_segment_size: MAX_PAYLOAD_BYTES,
            max_segment_count: 4,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
            max_retained_count: Some(settings.max_retained_count),
            max_retained_bytes: Some(settings.max_retained_bytes),
        },
        v4: Some(servers),
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
    fn config_carries_the_bounds() {
        let listen: SocketAddr = "0.0.0.0:1883".parse().unwrap();
        let settings = BrokerSettings::default();
        let built = config(listen, &settings);
        assert_eq!(built.router.max_connections, 1_024);
        assert_eq!(built.router.max_retained_count, Some(4_096));
        assert_eq!(built.router.max_retained_bytes, Some(32 << 20));
        let servers = built.v4.as_ref().unwrap();
        assert_eq!(servers.len(), 1, "no local listener unless asked for");
        assert_eq!(servers["v4"].max_connections, Some(1_000));
        assert_eq!(servers["v4"].connections.connection_timeout_ms, 10_000);

        let local: SocketAddr = "127.0.0.1:1884".parse().unwrap();
        let settings = BrokerSettings {
            local_listen: Some(local),
            ..settings
        };
        let servers = config(listen, &settings).v4.unwrap();
        assert_eq!(servers["local"].listen, local);
        assert_eq!(servers["local"].max_connections, None);
        assert!(settings.max_device_connections < settings.max_connections);
    }

    #[test]
    fn a_taken_port_is_a_clear_error() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let error = EmbeddedBroker::start(taken.local_addr().unwrap()).unwrap_err();
        assert!(matches!(error, BrokerError::Bind { .. }), "{error}");
        assert!(error.to_string().contains("another broker"), "{error}");
    }
}
