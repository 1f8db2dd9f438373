use crate::link::alerts::{self};
use crate::link::console::ConsoleLink;
use crate::link::network::{self, Network, N};
use crate::link::remote::{self, mqtt_connect, RemoteLink};
use crate::link::{bridge, timer};
use crate::local::LinkBuilder;
use crate::protocol::v4::V4;
use crate::protocol::v5::V5;
use crate::protocol::{Packet, Protocol};
#[cfg(any(feature = "use-rustls", feature = "use-native-tls"))]
use crate::server::tls::{self, TLSAcceptor};
use crate::{meters, BrokerStats, ConnectionSettings, Meter};
// wasmgate: for ServerSettings::max_connections
use flume::{RecvError, SendError, Sender};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tracing::{debug, error, field, info, warn, Instrument};
use uuid::Uuid;

#[cfg(feature = "websocket")]
use async_tungstenite::tokio::accept_hdr_async;
#[cfg(feature = "websocket")]
use async_tungstenite::tungstenite::handshake::server::{
    Callback, ErrorResponse, Request, Response,
};
#[cfg(feature = "websocket")]
use async_tungstenite::tungstenite::http::HeaderValue;
#[cfg(feature = "websocket")]
use ws_stream_tungstenite::WsStream;

use metrics::gauge;
use metrics_exporter_prometheus::PrometheusBuilder;
use std::time::Duration;
use std::{io, thread};

use crate::link::console;
use crate::link::local::{self, LinkRx, LinkTx};
use crate::router::{Event, Router};
use crate::{Config, ConnectionId, ServerSettings};

use tokio::net::{TcpListener, TcpStream};
use tokio::time::error::Elapsed;
use tokio::{task, time};

#[derive(Debug, thiserror::Error)]
#[error("Acceptor error")]
pub enum Error {
    #[error("I/O {0}")]
    Io(#[from] io::Error),
    #[error("Timeout")]
    Timeout(#[from] Elapsed),
    /// wasmgate: from a [`crate::Handshake`]; not `#[from]`, to keep it apart
    /// from rumqttd's own I/O errors.
    #[error("handshake: {0}")]
    Handshake(io::Error),
    #[error("Channel recv error")]
    Recv(#[from] RecvError),
    #[error("Channel send error")]
    Send(#[from] SendError<(ConnectionId, Event)>),
    #[cfg(any(feature = "use-rustls", feature = "use-native-tls"))]
    #[error("Certs error = {0}")]
    Certs(#[from] tls::Error),
    #[error("Accept error = {0}")]
    Accept(String),
    #[error("Remote error = {0}")]
    Remote(#[from] remote::Error),
    #[error("Invalid configuration")]
    Config(String),
}

pub struct Broker {
    config: Arc<Config>,
    router_tx: Sender<(ConnectionId, Event)>,
    // wasmgate: shared by the router and the listeners
    stats: Arc<BrokerStats>,
}

impl Broker {
    pub fn new(config: Config) -> Broker {
        let config = Arc::new(config);
        let router_config = config.router.clone();
        let router: Router = Router::new(config.id, router_config);
        let stats = router.stats();

        // Setup cluster if cluster settings are configured.
        match config.cluster.clone() {
            Some(_cluster_config) => {
                // let node_id = cluster_config.node_id;
                // let listen = cluster_config.listen;
                // let seniors = cluster_config.seniors;
                // let mut cluster = RemoteCluster::new(node_id, &listen, seniors);
                // Broker::setup_remote_cluster(&mut router, node_id, &mut cluster);

                // Start router first and then cluster in the background
                let router_tx = router.spawn();
                // cluster.spawn();
                Broker {
                    config,
                    router_tx,
                    stats,
                }
            }
            None => {
                let router_tx = router.spawn();
                Broker {
                    config,
                    router_tx,
                    stats,
                }
            }
        }
    }

    // pub fn new_local_cluster(
    //     config: Config,
    //     node_id: NodeId,
    //     seniors: Vec<(NodeId, Sender<ReplicationData>)>,
    // ) -> (Broker, Sender<ReplicationData>) {
    //     let config = Arc::new(config);
    //     let router_config = config.router.clone();

    //     let mut router = Router::new(config.id, router_config);
    //     let (mut cluster, tx) = LocalCluster::new(node_id, seniors);
    //     Broker::setup_local_cluster(&mut router, node_id, &mut cluster);

    //     // Start router first and then cluster in the background
    //     let router_tx = router.spawn();
    //     cluster.spawn();

    //     (Broker { config, router_tx }, tx)
    // }

    // fn setup_remote_cluster(router: &mut Router, node_id: NodeId, cluster: &mut RemoteCluster) {
    //     // Retrieve pre-configured list of router <-> replica link from router
    //     // and add the link to cluster
    //     let nodes: Vec<NodeId> = (0..MAX_NODES).filter(|v| *v != node_id).collect();
    //     for node_id in nodes {
    //         let link = router.get_replica_handle(node_id);
    //         cluster.add_replica_router_handle(node_id, link);
    //     }
    // }

    // fn setup_local_cluster(router: &mut Router, node_id: NodeId, cluster: &mut LocalCluster) {
    //     // Retrieve pre-configured list of router <-> replica link from router
    //     // and add the link to cluster
    //     let nodes: Vec<NodeId> = (0..MAX_NODES).filter(|v| *v != node_id).collect();
    //     for node_id in nodes {
    //         let link = router.get_replica_handle(node_id);
    //         cluster.add_replica_router_handle(node_id, link);
    //     }
    // }

    /// wasmgate: what this broker refused to hold (connections past a
    /// listener's cap, retained messages past the bounds) and the size of its
    /// retained store.
    pub fn stats(&self) -> Arc<BrokerStats> {
        self.stats.clone()
    }

    // Link to get meters
    pub fn meters(&self) -> Result<meters::MetersLink, meters::LinkError> {
        let link = meters::MetersLink::new(self.router_tx.clone())?;
        Ok(link)
    }

    // Link to get alerts
    pub fn alerts(&self) -> Result<alerts::AlertsLink, alerts::LinkError> {
        let link = alerts::AlertsLink::new(self.router_tx.clone())?;
        Ok(link)
    }

    pub fn link(&self, client_id: &str) -> Result<(LinkTx, LinkRx), local::LinkError> {
        // Register this connection with the router. Router replies with ack which if ok will
        // start the link. Router can sometimes reject the connection (ex. max connection limit).
        let (link_tx, link_rx, _ack) =
            LinkBuilder::new(client_id, self.router_tx.clone()).build()?;
        Ok((link_tx, link_rx))
    }

    #[tracing::instrument(skip(self))]
    pub fn start(&mut self) -> Result<(), Error> {
        if self.config.v4.is_none()
            && self.config.v5.is_none()
            && (cfg!(not(feature = "websocket")) || self.config.ws.is_none())
        {
            return Err(Error::Config(
                "Atleast one server config must be specified, \
                consider adding either of [v4.x]/[v5.x] or [ws.x] (if enabled) in config file."
                    .to_string(),
            ));
        }

        // we don't know which servers (v4/v5/ws) user will spawn
        // so we collect handles for all of the spawned servers
        let mut server_thread_handles = Vec::new();

        if let Some(metrics_config) = self.config.metrics.clone() {
            let timer_thread = thread::Builder::new().name("timer".to_owned());
            let router_tx = self.router_tx.clone();
            timer_thread.spawn(move || {
                let mut runtime = tokio::runtime::Builder::new_current_thread();
                let runtime = runtime.enable_all().build().unwrap();

                runtime.block_on(async move {
                    timer::start(metrics_config, router_tx).await;
                });
            })?;
        }

        // Spawn bridge in a separate thread.
        if let Some(bridge_config) = self.config.bridge.clone() {
            let bridge_thread = thread::Builder::new().name(bridge_config.name.clone());
            let router_tx = self.router_tx.clone();
            bridge_thread.spawn(move || {
                let mut runtime = tokio::runtime::Builder::new_current_thread();
                let runtime = runtime.enable_all().build().unwrap();

                runtime.block_on(async move {
                    if let Err(e) = bridge::start(bridge_config, router_tx, V4).await {
                        error!(error=?e, "Bridge Link error");
                    };
                });
            })?;
        }

        // Spawn servers in a separate thread.
        if let Some(v4_config) = &self.config.v4 {
            for (_, config) in v4_config.clone() {
                let server_thread = thread::Builder::new().name(config.name.clone());
                let mut server = Server::new(config, self.router_tx.clone(), V4);
                server.stats = self.stats.clone(); // wasmgate
                let handle = server_thread.spawn(move || {
                    let mut runtime = tokio::runtime::Builder::new_current_thread();
                    let runtime = runtime.enable_all().build().unwrap();

                    runtime.block_on(async {
                        if let Err(e) = server.start(LinkType::Remote).await {
                            error!(error=?e, "Server error - V4");
                        }
                    });
                })?;
                server_thread_handles.push(handle)
            }
        }

        if let Some(v5_config) = &self.config.v5 {
            for (_, config) in v5_config.clone() {
                let server_thread = thread::Builder::new().name(config.name.clone());
                let mut server = Server::new(config, self.router_tx.clone(), V5);
                server.stats = self.stats.clone(); // wasmgate
                let handle = server_thread.spawn(move || {
                    let mut runtime = tokio::runtime::Builder::new_current_thread();
                    let runtime = runtime.enable_all().build().unwrap();

                    runtime.block_on(async {
                        if let Err(e) = server.start(LinkType::Remote).await {
                            error!(error=?e, "Server error - V5");
                        }
                    });
                })?;
                server_thread_handles.push(handle)
            }
        }

        #[cfg(not(feature = "websocket"))]
        if self.config.ws.is_some() {
            warn!("websocket feature is disabled, [ws] config will be ignored.");
        }

        #[cfg(feature = "websocket")]
        if let Some(ws_config) = &self.config.ws {
            for (_, config) in ws_config.clone() {
                let server_thread = thread::Builder::new().name(config.name.clone());
                //TODO: Add support for V5 procotol with websockets. Registered in config or on ServerSettings
                let mut server = Server::new(config, self.router_tx.clone(), V4);
                server.stats = self.stats.clone(); // wasmgate
                let handle = server_thread.spawn(move || {
                    let mut runtime = tokio::runtime::Builder::new_current_thread();
                    let runtime = runtime.enable_all().build().unwrap();

                    runtime.block_on(async {
                        if let Err(e) = server.start(LinkType::Websocket).await {
                            error!(error=?e, "Server error - WS");
                        }
                    });
                })?;
                server_thread_handles.push(handle)
            }
        }

        if let Some(prometheus_setting) = &self.config.prometheus {
            let timeout = prometheus_setting.interval;
            // If port is specified use it instead of listen.
            // NOTE: This means listen is ignored when `port` is specified.
            // `port` will be removed in future release in favour of `listen`
            let addr = {
                #[allow(deprecated)]
                match prometheus_setting.port {
                    Some(port) => SocketAddr::new("127.0.0.1".parse().unwrap(), port),
                    None => prometheus_setting.listen.unwrap_or(SocketAddr::new(
                        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
                        9042,
                    )),
                }
            };
            let metrics_thread = thread::Builder::new().name("Metrics".to_owned());
            let meter_link = self.meters().unwrap();
            metrics_thread.spawn(move || {
                let builder = PrometheusBuilder::new().with_http_listener(addr);
                builder.install().unwrap();

                let total_publishes = gauge!("metrics.router.total_publishes");
                let total_connections = gauge!("metrics.router.total_connections");
                let failed_publishes = gauge!("metrics.router.failed_publishes");
                loop {
                    if let Ok(metrics) = meter_link.recv() {
                        for m in metrics {
                            match m {
                                Meter::Router(_, ref r) => {
                                    total_connections.set(r.total_connections as f64);
                                    total_publishes.set(r.total_publishes as f64);
                                    failed_publishes.set(r.failed_publishes as f64);
                                }
                                _ => continue,
                            }
                        }
                    }

                    std::thread::sleep(Duration::from_secs(timeout));
                }
            })?;
        }

        if let Some(console) = self.config.console.clone() {
            let console_link = ConsoleLink::new(console, self.router_tx.clone());

            let console_link = Arc::new(console_link);
            let console_thread = thread::Builder::new().name("Console".to_string());
            console_thread.spawn(move || {
                let mut runtime = tokio::runtime::Builder::new_current_thread();
                let runtime = runtime.enable_all().build().unwrap();
                runtime.block_on(console::start(console_link));
            })?;
        }

        // in ideal case, where server doesn't crash, join() will never resolve
        // we still try to join threads so that we don't return from function
        // unless everything crashes.
        server_thread_handles.into_iter().for_each(|handle| {
            // join() might panic in case the thread panics
            // we just ignore it
            let _ = handle.join();
        });

        Ok(())
    }
}

#[derive(Copy, Clone)]
pub enum LinkType {
    #[cfg(feature = "websocket")]
    Websocket,
    Remote,
}

#[derive(PartialEq)]
enum AwaitingWill {
    Cancel,
    Fire,
}

pub struct Server<P> {
    config: ServerSettings,
    router_tx: Sender<(ConnectionId, Event)>,
    protocol: P,
    awaiting_will_handler: Arc<Mutex<HashMap<String, Sender<AwaitingWill>>>>,
    // wasmgate: where refused connections are counted
    pub(crate) stats: Arc<BrokerStats>,
}

/// wasmgate: one connection of a listener, counted while it lives.
struct ConnectionGuard(Arc<AtomicUsize>);

impl ConnectionGuard {
    fn new(active: &Arc<AtomicUsize>) -> ConnectionGuard {
        active.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard(active.clone())
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<P: Protocol + Clone + Send + 'static> Server<P> {
    pub fn new(
        config: ServerSettings,
        router_tx: Sender<(ConnectionId, Event)>,
        protocol: P,
    ) -> Server<P> {
        Server {
            config,
            router_tx,
            protocol,
            awaiting_will_handler: Arc::new(Mutex::new(HashMap::default())),
            stats: Arc::default(),
        }
    }

    // Depending on TLS or not create a new Network.
    // wasmgate: a future that owns what it needs, so that the handshake runs
    // in the connection's task and not in the accept loop, where one peer
    // that stops halfway through a TLS handshake held every other connection
    // back (and a peer that never spoke, forever).
    fn handshake(
        &self,
        stream: TcpStream,
        #[cfg(any(feature = "use-rustls", feature = "use-native-tls"))] tls: Option<
            Arc<TLSAcceptor>,
        >,
    ) -> impl std::future::Future<Output = Result<(Box<dyn N>, Option<String>), Error>> + Send + 'static
    {
        let own = self.config.handshake.clone();
        async move {
            if let Some(handshake) = own {
                let network = (handshake.0)(stream).await.map_err(Error::Handshake)?;
                return Ok((network, None));
            }
            #[cfg(any(feature = "use-rustls", feature = "use-native-tls"))]
            if let Some(acceptor) = tls {
                let (tenant_id, network) = acceptor.accept(stream).await?;
                return Ok((network, tenant_id));
            }
            Ok((Box::new(stream) as Box<dyn N>, None))
        }
    }

    pub async fn start(&mut self, link_type: LinkType) -> Result<(), Error> {
        let listener = TcpListener::bind(&self.config.listen).await?;
        let delay = Duration::from_millis(self.config.next_connection_delay_ms);
        let mut count: usize = 0;

        let config = Arc::new(self.config.connections.clone());
        // wasmgate: this listener's connections alive now, CONNECT or not
        let active = Arc::new(AtomicUsize::new(0));
        self.stats
            .listeners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(self.config.name.clone(), active.clone());
        info!(
            config = self.config.name,
            listen_addr = self.config.listen.to_string(),
            "Listening for remote connections",
        );
        // wasmgate: built once (it was for every connection, reading the
        // certificate files each time).
        #[cfg(any(feature = "use-rustls", feature = "use-native-tls"))]
        let tls = match &self.config.tls {
            Some(c) if self.config.handshake.is_none() => Some(Arc::new(TLSAcceptor::new(c)?)),
            _ => None,
        };
        // wasmgate: see ServerSettings::accept_gate.
        if let Some(mut gate) = self.config.accept_gate.clone() {
            if gate.wait_for(|open| *open).await.is_err() {
                // The gate's sender is gone: nobody will open it, and the
                // process is ending; accept nothing.
                std::future::pending::<()>().await;
            }
        }
        loop {
            // Await new network connection.
            let (stream, addr) = match listener.accept().await {
                Ok((s, r)) => (s, r),
                Err(e) => {
                    error!(error=?e, "Unable to accept socket.");
                    continue;
                }
            };

            // wasmgate: at the cap, accept and close at once rather than stop
            // accepting: the peer learns at once (and backs off) instead of
            // waiting in the kernel's backlog, the backlog cannot fill with a
            // flood, and each refusal is counted.
            if let Some(max) = self.config.max_connections {
                if active.load(Ordering::Relaxed) >= max {
                    self.stats
                        .connections_refused
                        .fetch_add(1, Ordering::Relaxed);
                    warn!(
                        name = self.config.name,
                        ?addr,
                        max,
                        "listener at max_connections, closing new connection"
                    );
                    drop(stream);
                    time::sleep(delay).await;
                    continue;
                }
            }
            let connection_guard = ConnectionGuard::new(&active);

            // wasmgate: debug (was info): one line per connection.
            debug!(name=?self.config.name, ?addr, count, "accept");

            let handshake = self.handshake(
                stream,
                #[cfg(any(feature = "use-rustls", feature = "use-native-tls"))]
                tls.clone(),
            );
            let handshake_timeout = Duration::from_millis(config.connection_timeout_ms.into());
            let name = self.config.name.clone();
            let config = config.clone();
            let router_tx = self.router_tx.clone();
            let will_handlers = self.awaiting_will_handler.clone();
            count += 1;

            let protocol = self.protocol.clone();
            task::spawn(async move {
                let (network, tenant_id) = match time::timeout(handshake_timeout, handshake).await {
                    Ok(Ok(o)) => o,
                    // wasmgate: the embedding program's handshake has said why.
                    Ok(Err(Error::Handshake(e))) => {
                        debug!(name, ?addr, error = %e, "handshake refused");
                        return;
                    }
                    Ok(Err(e)) => {
                        warn!(name, ?addr, error = %e, "handshake failed, connection closed");
                        return;
                    }
                    Err(_) => {
                        warn!(name, ?addr, timeout = ?handshake_timeout, "no handshake in time, connection closed");
                        return;
                    }
                };
                match link_type {
                    #[cfg(feature = "websocket")]
                    LinkType::Websocket => {
                        let stream = match accept_hdr_async(network, WSCallback).await {
                            Ok(s) => Box::new(WsStream::new(s)),
                            Err(e) => {
                                error!(error=?e, "Websocket failed handshake");
                                return;
                            }
                        };
                        remote(
                            config,
                            tenant_id.clone(),
                            router_tx,
                            stream,
                            protocol,
                            will_handlers,
                            connection_guard,
                        )
                        .instrument(tracing::info_span!(
                            "websocket_link",
                            client_id = field::Empty,
                            connection_id = field::Empty
                        ))
                        .await
                    }
                    LinkType::Remote => {
                        remote(
                            config,
                            tenant_id.clone(),
                            router_tx,
                            network,
                            protocol,
                            will_handlers,
                            connection_guard,
                        )
                        .instrument(tracing::error_span!(
                            "remote_link",
                            ?tenant_id,
                            client_id = field::Empty,
                            connection_id = field::Empty,
                        ))
                        .await
                    }
                }
            });

            time::sleep(delay).await;
        }
    }
}

/// Configures the Websocket connection to indicate the correct protocol
/// by adding the "sec-websocket-protocol" with value of "mqtt" to the response header
#[cfg(feature = "websocket")]
struct WSCallback;
#[cfg(feature = "websocket")]
impl Callback for WSCallback {
    fn on_request(
        self,
        _request: &Request,
        mut response: Response,
    ) -> Result<Response, ErrorResponse> {
        response
            .headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_static("mqtt"));
        Ok(response)
    }
}

/// A new network connection should wait for a mqtt connect packet. This should be handled
/// asynchronously to avoid blocking other new connections while this connection is
/// waiting for mqtt connect packet. Also this honours connection wait time as per config to prevent
/// denial of service attacks (rogue clients which only establish network connections without
/// sending a mqtt connection packet to make the server reach its concurrent connection limit).
async fn remote<P: Protocol>(
    config: Arc<ConnectionSettings>,
    tenant_id: Option<String>,
    router_tx: Sender<(ConnectionId, Event)>,
    stream: Box<dyn N>,
    protocol: P,
    will_handlers: Arc<Mutex<HashMap<String, Sender<AwaitingWill>>>>,
    connection_guard: ConnectionGuard,
) {
    let mut network = Network::new(
        stream,
        config.max_payload_size,
        config.max_inflight_count,
        protocol,
    );

    let dynamic_filters = config.dynamic_filters;

    let connect_packet = match mqtt_connect(config, &mut network).await {
        Ok(p) => p,
        Err(e) => {
            // wasmgate: debug, not error: a device that connects and goes
            // (or a port scanner) is not an error; refused logins are
            // logged at warn where they are refused.
            debug!(error=?e, "Error while handling MQTT connect packet");
            return;
        }
    };

    let (mut client_id, clean_session) = match &connect_packet {
        Packet::Connect(ref connect, _, _, _, _) => {
            (connect.client_id.clone(), connect.clean_session)
        }
        _ => unreachable!(),
    };

    let mut assigned_client_id = None;
    if client_id.is_empty() {
        let uuid = Uuid::new_v4().simple();
        client_id = format!("rumqtt-{uuid}");
        assigned_client_id = Some(client_id.clone());
    }

    if let Some(tenant_id) = &tenant_id {
        // client_id is set to "tenant_id.client_id"
        // this is to make sure we are consistent,
        // as Connection uses this format of client_id
        client_id = format!("{tenant_id}.{client_id}");
    }

    // wasmgate: take the previous sender out of the map before using it, so
    // that the lock is not held (and poisoned) by what follows.
    let previous = lock_wills(&will_handlers).remove(&client_id);
    if let Some(sender) = previous {
        let awaiting_will = if clean_session {
            AwaitingWill::Fire
        } else {
            AwaitingWill::Cancel
        };
        // wasmgate: was `.unwrap()`. The previous connection with this client id
        // may be gone without having removed its sender (it ended before its
        // link started: connection limit, CONNACK write to a reset socket), so
        // the receiver is dropped and `try_send` fails. Nobody waits for its
        // will then: nothing to do.
        if let Err(e) = sender.try_send(awaiting_will) {
            info!(error = ?e, "previous connection is no longer waiting on its will");
        }
    }

    let (will_tx, will_rx) = flume::bounded::<AwaitingWill>(1);
    // wasmgate: keep a clone to recognise our own entry when removing it.
    lock_wills(&will_handlers).insert(client_id.clone(), will_tx.clone());

    // Start the link
    let mut link = match RemoteLink::new(
        router_tx.clone(),
        tenant_id.clone(),
        network,
        connect_packet,
        dynamic_filters,
        assigned_client_id,
    )
    .await
    {
        Ok(l) => l,
        Err(e) => {
            error!(error=?e, "Remote link error");
            // wasmgate: this connection ends here; remove its will sender, or
            // the next connection with this client id finds a sender whose
            // receiver is gone (it used to panic on that).
            remove_own_will(&will_handlers, &client_id, &will_tx);
            return;
        }
    };

    let connection_id = link.connection_id;
    let will_delay_interval = link.will_delay_interval;
    let mut send_disconnect = true;

    match link.start().await {
        // Connection got closed. This shouldn't usually happen.
        Ok(_) => debug!("connection-stop"),
        // No need to send a disconnect message when disconnection
        // originated internally in the router.
        Err(remote::Error::Link(e)) => {
            debug!(error=?e, "router-drop");
            send_disconnect = false;
        }
        // Connection was closed by peer
        Err(remote::Error::Network(network::Error::Io(err)) | remote::Error::Io(err))
            if err.kind() == io::ErrorKind::ConnectionAborted =>
        {
            debug!(error=?err, "disconnected");
        }
        // Any other error
        // wasmgate: debug too; a device going away is not an error.
        Err(e) => {
            debug!(error=?e, "disconnected");
        }
    };

    // this is important to stop the connection
    // wasmgate: and drop it before sending Disconnect (it was after): the
    // router ignores a Disconnect for a connection id whose link is still
    // alive, i.e. an id it already disconnected and gave to a new connection.
    drop(link);
    drop(connection_guard); // wasmgate: the socket is closed

    if send_disconnect {
        let disconnect = Event::Disconnect;
        let message = (connection_id, disconnect);
        router_tx.send(message).ok();
    }

    let publish_will = match tokio::time::timeout(
        Duration::from_secs(will_delay_interval as u64),
        will_rx.recv_async(),
    )
    .await
    {
        Ok(w) => w.is_ok_and(|k| k == AwaitingWill::Fire),
        Err(_) => {
            // no need to keep the sender after timeout
            // wasmgate: only if it is still ours: a newer connection with this
            // client id may have replaced it, and it was removing theirs.
            remove_own_will(&will_handlers, &client_id, &will_tx);
            // as will delay interval has passed, publish the will message
            true
        }
    };

    if publish_will {
        let message = Event::PublishWill((client_id, tenant_id));
        // is this connection_id really correct at this point?
        // as we have disconnected already, some other connection
        // might be using this connection ID!
        // It won't matter in this case as we don't use it
        // but might affect logs?
        router_tx.send((connection_id, message)).ok();
    }
}

type WillHandlers = Arc<Mutex<HashMap<String, Sender<AwaitingWill>>>>;

// wasmgate: nothing panics while holding this lock now, but a poisoned map of
// senders is still a map of senders: never let it take every later CONNECT down.
fn lock_wills(
    will_handlers: &WillHandlers,
) -> std::sync::MutexGuard<'_, HashMap<String, Sender<AwaitingWill>>> {
    will_handlers
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

// wasmgate: removes `client_id`'s entry only if it is `own`, this connection's
// sender, not one a newer connection with the same client id put there.
fn remove_own_will(will_handlers: &WillHandlers, client_id: &str, own: &Sender<AwaitingWill>) {
    let mut handlers = lock_wills(will_handlers);
    if handlers
        .get(client_id)
        .is_some_and(|sender| sender.same_channel(own))
    {
        handlers.remove(client_id);
    }
}
