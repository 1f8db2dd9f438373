//! MQTT 3.1.1 and MQTT 5 behind one small face, so that the ingress sessions
//! and the outbox drainers are written once.
//!
//! rumqttc has a client per version (`rumqttc` and `rumqttc::v5`) with the
//! same shape but different packet types. The gateway needs little of
//! either: connect, subscribe, publish, acknowledge by packet id, disconnect,
//! and a stream of events. [`Client`] and [`EventLoop`] are enums over the
//! two, and [`Polled`] is the version-neutral event, which is where MQTT 5's
//! additions surface: a message's user properties, and a PUBACK that refuses.

use crate::config::Protocol;
pub use backoff::Backoff;
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::{Outgoing, QoS};
#[cfg(feature = "tls")]
use std::sync::Arc;
use std::time::Duration;

mod backoff;

/// Why a broker's settings cannot make an endpoint.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[cfg(feature = "tls")]
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[cfg(not(feature = "tls"))]
    #[error("this build has no TLS (feature `tls`), but the config asks for it")]
    NoTls,
}

/// Where the gateway's MQTT clients connect.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    /// MQTT 3.1.1 or 5 (see `mqtt.rs` for the options of each).
    pub protocol: Protocol,
    /// The largest packet this broker takes, when known without asking
    /// (the embedded broker's); MQTT 5 brokers say so in their CONNACK.
    pub max_packet_bytes: Option<usize>,
    /// TLS settings, built and checked once at start.
    #[cfg(feature = "tls")]
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Endpoint {
    /// A broker from the config: host, port, credentials and TLS files.
    pub(crate) fn from_config(
        host: &str,
        port: u16,
        username: Option<&String>,
        password: Option<&crate::config::Secret>,
        tls: Option<&crate::config::TlsConfig>,
        protocol: Protocol,
    ) -> Result<Endpoint, EndpointError> {
        #[cfg(feature = "tls")]
        let tls = tls.map(crate::tls::client_config).transpose()?;
        #[cfg(not(feature = "tls"))]
        if tls.is_some() {
            return Err(EndpointError::NoTls);
        }
        Ok(Endpoint {
            host: host.to_owned(),
            port,
            username: username.cloned(),
            password: password.map(|p| p.expose().to_owned()),
            protocol,
            max_packet_bytes: None,
            #[cfg(feature = "tls")]
            tls,
        })
    }
}

/// Room for 1 MB payloads and then some; what a function cannot handle it
/// fails on visibly, rather than the connection dropping.
pub const MAX_PACKET: usize = 4 << 20;

/// How a connection is set up beyond the endpoint.
#[derive(Debug, Clone)]
pub struct Settings {
    pub client_id: String,
    /// A persistent session: the broker keeps subscriptions and queued QoS 1
    /// messages while the gateway is away. Otherwise clean.
    pub persistent: bool,
    /// Acknowledge received messages only when told to ([`Client::try_ack`]).
    pub manual_acks: bool,
    /// Most of our own publishes unacknowledged at once.
    pub outgoing_window: u16,
    /// MQTT 5 only: most of the broker's QoS 1 messages unacknowledged at
    /// once (Receive Maximum). With 3.1.1 the broker's own setting decides
    /// (mosquitto's `max_inflight_messages`).
    pub incoming_window: Option<u16>,
    /// Capacity of the client's request channel.
    pub capacity: usize,
}

/// A message from the broker, either version.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    pub pkid: u16,
    /// MQTT 5 user properties in the order sent; empty for 3.1.1.
    pub user_properties: Vec<(String, String)>,
}

/// What one poll of the event loop yielded, as far as the gateway cares.
#[derive(Debug)]
pub enum Polled {
    ConnAck {
        session_present: bool,
        /// The largest packet the broker takes, if it says (MQTT 5).
        max_packet: Option<usize>,
    },
    SubAck,
    Publish(Message),
    /// One of our publishes went out with this packet id.
    Sent(u16),
    /// The broker answered a publish: `refused` is `None` when it took the
    /// message, else why not (MQTT 5 reason codes; 3.1.1 cannot refuse).
    PubAck {
        pkid: u16,
        refused: Option<String>,
    },
    /// Our DISCONNECT went out: the session is over.
    Disconnected,
    Other,
}

/// Why a poll failed.
#[derive(Debug)]
pub enum PollError {
    /// Every client handle is gone: nothing more will be asked of the loop.
    RequestsDone,
    /// The connection failed or dropped; polling again reconnects.
    Connection(String),
}

/// The requesting half of a connection.
#[derive(Debug, Clone)]
pub enum Client {
    V3(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

/// The half that owns the connection; poll it to make progress. Boxed: the
/// two are large and unequal, and one lives per session.
pub enum EventLoop {
    V3(Box<rumqttc::EventLoop>),
    V5(Box<rumqttc::v5::EventLoop>),
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EventLoop::V3(_) => "EventLoop::V3",
            EventLoop::V5(_) => "EventLoop::V5",
        })
    }
}

impl Client {
    /// A client and its event loop for `endpoint`, in its protocol version.
    pub fn new(endpoint: &Endpoint, settings: &Settings) -> (Client, EventLoop) {
        match endpoint.protocol {
            Protocol::V311 => {
                let mut options = endpoint.options(settings.client_id.clone());
                options.set_clean_session(!settings.persistent);
                options.set_manual_acks(settings.manual_acks);
                options.set_inflight(settings.outgoing_window);
                let (client, eventloop) = rumqttc::AsyncClient::new(options, settings.capacity);
                (Client::V3(client), EventLoop::V3(Box::new(eventloop)))
            }
            Protocol::V5 => {
                let mut options = endpoint.options_v5(settings.client_id.clone());
                options.set_clean_start(!settings.persistent);
                if settings.persistent {
                    // MQTT 5 ends a session when the connection closes
                    // unless told otherwise; "never" is what 3.1.1 does.
                    options.set_session_expiry_interval(Some(u32::MAX));
                }
                options.set_manual_acks(settings.manual_acks);
                options.set_outgoing_inflight_upper_limit(settings.outgoing_window);
                options.set_receive_maximum(settings.incoming_window);
                let (client, eventloop) = rumqttc::v5::AsyncClient::new(options, settings.capacity);
                (Client::V5(client), EventLoop::V5(Box::new(eventloop)))
            }
        }
    }

    /// Queues a publish; fails only when the event loop is gone. `trace`:
    /// the span it continues, sent as the `traceparent` (and `tracestate`)
    /// user properties on MQTT 5; MQTT 3.1.1 has no place for it.
    pub async fn publish(
        &self,
        topic: String,
        qos: u8,
        retain: bool,
        payload: Vec<u8>,
        trace: Option<&crate::trace::TraceContext>,
    ) -> Result<(), String> {
        match self {
            Client::V3(c) => c
                .publish(topic, qos3(qos), retain, payload)
                .await
                .map_err(|e| e.to_string()),
            Client::V5(c) => match trace {
                Some(trace) => {
                    let properties = p5::PublishProperties {
                        user_properties: trace.properties(),
                        ..Default::default()
                    };
                    c.publish_with_properties(topic, qos5(qos), retain, payload, properties)
                        .await
                        .map_err(|e| e.to_string())
                }
                None => c
                    .publish(topic, qos5(qos), retain, payload)
                    .await
                    .map_err(|e| e.to_string()),
            },
        }
    }

    /// Queues the PUBACK of the QoS 1 message with this packet id; fails
    /// only when the event loop is gone (and then the broker redelivers).
    pub fn try_ack(&self, pkid: u16) -> Result<(), String> {
        // Only the packet id (and QoS 1) matter for an ack.
        match self {
            Client::V3(c) => {
                let mut publish = rumqttc::Publish::new("", QoS::AtLeastOnce, Vec::new());
                publish.pkid = pkid;
                c.try_ack(&publish).map_err(|e| e.to_string())
            }
            Client::V5(c) => {
                let mut publish = p5::Publish::new("", QoS5::AtLeastOnce, Vec::new(), None);
                publish.pkid = pkid;
                c.try_ack(&publish).map_err(|e| e.to_string())
            }
        }
    }

    /// Queues one SUBSCRIBE for all `filters` (filter, QoS).
    pub fn try_subscribe_many(&self, filters: &[(String, u8)]) -> Result<(), String> {
        match self {
            Client::V3(c) => c
                .try_subscribe_many(
                    filters
                        .iter()
                        .map(|(f, q)| rumqttc::SubscribeFilter::new(f.clone(), qos3(*q))),
                )
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .try_subscribe_many(filters.iter().map(|(f, q)| p5::Filter::new(f, qos5(*q))))
                .map_err(|e| e.to_string()),
        }
    }

    /// Queues an UNSUBSCRIBE of `filter` (a persistent session keeps the
    /// filters of a trigger that is gone, else).
    pub fn try_unsubscribe(&self, filter: &str) -> Result<(), String> {
        match self {
            Client::V3(c) => c.try_unsubscribe(filter).map_err(|e| e.to_string()),
            Client::V5(c) => c.try_unsubscribe(filter).map_err(|e| e.to_string()),
        }
    }

    /// Queues a DISCONNECT, after whatever is queued before it.
    pub async fn disconnect(&self) {
        // Fails only when the event loop is gone, which is as good.
        match self {
            Client::V3(c) => {
                let _ = c.disconnect().await;
            }
            Client::V5(c) => {
                let _ = c.disconnect().await;
            }
        }
    }
}

impl EventLoop {
    /// The next event; reconnects first if the connection is down.
    pub async fn poll(&mut self) -> Result<Polled, PollError> {
        match self {
            EventLoop::V3(eventloop) => match eventloop.poll().await {
                Ok(event) => Ok(from_v3(event)),
                Err(rumqttc::ConnectionError::RequestsDone) => Err(PollError::RequestsDone),
                Err(e) => Err(PollError::Connection(e.to_string())),
            },
            EventLoop::V5(eventloop) => match eventloop.poll().await {
                Ok(event) => Ok(from_v5(event)),
                Err(rumqttc::v5::ConnectionError::RequestsDone) => Err(PollError::RequestsDone),
                Err(e) => Err(PollError::Connection(e.to_string())),
            },
        }
    }

    /// Events read from a connection that failed before they were polled.
    /// rumqttc reads packets in batches, so a PUBACK (refusing, say) and
    /// the broker closing the connection right after it come together, and
    /// the poll reports the error first; these would otherwise surface only
    /// on the next connection.
    pub fn leftovers(&mut self) -> Vec<Polled> {
        match self {
            EventLoop::V3(e) => e.state.events.drain(..).map(from_v3).collect(),
            EventLoop::V5(e) => e.state.events.drain(..).map(from_v5).collect(),
        }
    }

    /// After a connection dropped: forgets acks queued for it (a packet id
    /// from the old connection may name another message on the new one).
    pub fn clean(&mut self) {
        match self {
            EventLoop::V3(e) => e.clean(),
            EventLoop::V5(e) => e.clean(),
        }
    }
}

fn from_v3(event: rumqttc::Event) -> Polled {
    use rumqttc::{Event, Incoming};
    match event {
        Event::Incoming(Incoming::ConnAck(ack)) => Polled::ConnAck {
            session_present: ack.session_present,
            max_packet: None,
        },
        Event::Incoming(Incoming::SubAck(_)) => Polled::SubAck,
        Event::Incoming(Incoming::Publish(publish)) => Polled::Publish(Message {
            topic: publish.topic,
            payload: publish.payload.to_vec(),
            qos: publish.qos as u8,
            retain: publish.retain,
            pkid: publish.pkid,
            user_properties: Vec::new(),
        }),
        Event::Incoming(Incoming::PubAck(ack)) => Polled::PubAck {
            pkid: ack.pkid,
            refused: None,
        },
        Event::Outgoing(out) => outgoing(out),
        Event::Incoming(_) => Polled::Other,
    }
}

fn from_v5(event: rumqttc::v5::Event) -> Polled {
    use rumqttc::v5::{Event, Incoming};
    match event {
        Event::Incoming(Incoming::ConnAck(ack)) => Polled::ConnAck {
            session_present: ack.session_present,
            max_packet: ack
                .properties
                .as_ref()
                .and_then(|p| p.max_packet_size)
                .map(|n| n as usize),
        },
        Event::Incoming(Incoming::SubAck(_)) => Polled::SubAck,
        Event::Incoming(Incoming::Publish(publish)) => Polled::Publish(message_v5(publish)),
        Event::Incoming(Incoming::PubAck(ack)) => Polled::PubAck {
            pkid: ack.pkid,
            refused: refusal(ack.reason),
        },
        Event::Outgoing(out) => outgoing(out),
        Event::Incoming(_) => Polled::Other,
    }
}

fn outgoing(out: Outgoing) -> Polled {
    match out {
        Outgoing::Publish(pkid) => Polled::Sent(pkid),
        Outgoing::Disconnect => Polled::Disconnected,
        _ => Polled::Other,
    }
}

fn message_v5(publish: p5::Publish) -> Message {
    Message {
        // The broker checked it is UTF-8 (MQTT 5 §1.5.4); lossy rather than
        // a panic if a broker did not.
        topic: String::from_utf8_lossy(&publish.topic).into_owned(),
        payload: publish.payload.to_vec(),
        qos: publish.qos as u8,
        retain: publish.retain,
        pkid: publish.pkid,
        user_properties: publish
            .properties
            .map(|p| p.user_properties)
            .unwrap_or_default(),
    }
}

/// Why a broker refused a message, or `None` if it took it. "No matching
/// subscribers" (0x10) is success: the broker has the message, and whether
/// anyone listens is the cloud's business.
pub fn refusal(reason: p5::PubAckReason) -> Option<String> {
    use p5::PubAckReason as R;
    let text = match reason {
        R::Success | R::NoMatchingSubscribers => return None,
        R::UnspecifiedError => "unspecified error (0x80)",
        R::ImplementationSpecificError => "implementation specific error (0x83)",
        R::NotAuthorized => "not authorized (0x87)",
        R::TopicNameInvalid => "topic name invalid (0x90)",
        R::PacketIdentifierInUse => "packet identifier in use (0x91)",
        R::QuotaExceeded => "quota exceeded (0x97)",
        R::PayloadFormatInvalid => "payload format invalid (0x99)",
    };
    Some(text.to_owned())
}

/// The first value of the user property `name`, as a dedup id. MQTT 5 lets
/// a name repeat; the first one is the device's id, later ones are not
/// looked at. `None` when the message has no such property.
pub fn property<'a>(properties: &'a [(String, String)], name: &str) -> Option<&'a str> {
    properties
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

fn qos3(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        _ => QoS::AtLeastOnce,
    }
}

fn qos5(q: u8) -> QoS5 {
    match q {
        0 => QoS5::AtMostOnce,
        _ => QoS5::AtLeastOnce,
    }
}

impl Endpoint {
    /// MQTT 3.1.1 options: address, TLS, keep-alive, packet size, credentials.
    pub(super) fn options(&self, client_id: String) -> rumqttc::MqttOptions {
        let mut options = rumqttc::MqttOptions::new(client_id, self.host.clone(), self.port);
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            options.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(tls.clone()),
            ));
        }
        options.set_keep_alive(KEEP_ALIVE);
        options.set_max_packet_size(MAX_PACKET, MAX_PACKET);
        if let Some(user) = &self.username {
            options.set_credentials(user.clone(), self.password.clone().unwrap_or_default());
        }
        options
    }

    /// The same for MQTT 5. The largest packet we send is the broker's to
    /// say (its CONNACK's Maximum Packet Size); the largest we take is ours.
    pub(super) fn options_v5(&self, client_id: String) -> rumqttc::v5::MqttOptions {
        let mut options = rumqttc::v5::MqttOptions::new(client_id, self.host.clone(), self.port);
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            options.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(tls.clone()),
            ));
        }
        options.set_keep_alive(KEEP_ALIVE);
        options.set_max_packet_size(Some(MAX_PACKET as u32));
        if let Some(user) = &self.username {
            options.set_credentials(user.clone(), self.password.clone().unwrap_or_default());
        }
        options
    }
}

const KEEP_ALIVE: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusing_reason_codes_are_named_and_success_codes_are_not() {
        use p5::PubAckReason as R;
        assert_eq!(refusal(R::Success), None);
        assert_eq!(refusal(R::NoMatchingSubscribers), None);
        assert_eq!(
            refusal(R::NotAuthorized).as_deref(),
            Some("not authorized (0x87)")
        );
        assert_eq!(
            refusal(R::QuotaExceeded).as_deref(),
            Some("quota exceeded (0x97)")
        );
        assert!(refusal(R::PayloadFormatInvalid).is_some());
    }

    #[test]
    fn a_dedup_property_is_the_first_value_of_that_name() {
        let props = vec![
            ("source".to_owned(), "vm-1".to_owned()),
            ("msg-id".to_owned(), "a-1".to_owned()),
            ("msg-id".to_owned(), "a-2".to_owned()),
        ];
        assert_eq!(property(&props, "msg-id"), Some("a-1"));
        assert_eq!(property(&props, "Msg-Id"), None, "names are case-sensitive");
        assert_eq!(property(&[], "msg-id"), None);
    }

    #[test]
    fn v5_messages_keep_their_user_properties_in_order() {
        let mut publish = p5::Publish::new(
            "a/b",
            QoS5::AtLeastOnce,
            b"hi".to_vec(),
            Some(p5::PublishProperties {
                user_properties: vec![("k".into(), "1".into()), ("j".into(), "2".into())],
                ..Default::default()
            }),
        );
        publish.pkid = 9;
        let message = message_v5(publish);
        assert_eq!(
            (message.topic.as_str(), message.qos, message.pkid),
            ("a/b", 1, 9)
        );
        assert_eq!(
            message.user_properties,
            [("k".into(), "1".into()), ("j".into(), "2".into())]
        );
    }
}
