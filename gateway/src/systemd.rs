//! systemd's readiness and watchdog protocol (`Type=notify`, `WatchdogSec=`),
//! without a dependency: one datagram to `$NOTIFY_SOCKET` per message.
//! Outside systemd (no `$NOTIFY_SOCKET`) every call does nothing.

use std::time::Duration;

/// Tells systemd the gateway is up: the broker listens, functions are deployed.
pub fn ready() {
    send("READY=1");
}

/// Tells systemd the gateway is stopping (so it does not count as a crash).
pub fn stopping() {
    send("STOPPING=1");
}

/// How often to ping the watchdog: half of `$WATCHDOG_USEC`, as systemd
/// advises; `None` when no watchdog is set.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Pings the watchdog; called from the async runtime, so a stuck reactor
/// (the failure the watchdog is for) stops the pings and systemd restarts us.
pub fn watchdog() {
    send("WATCHDOG=1");
}

#[cfg(unix)]
fn send(message: &str) {
    use std::os::unix::net::UnixDatagram;
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(socket) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        // An abstract socket name (Linux).
        abstract_addr(name).and_then(|addr| socket.send_to_addr(message.as_bytes(), &addr))
    } else {
        socket.send_to(message.as_bytes(), &path)
    };
    if let Err(e) = sent {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

#[cfg(target_os = "linux")]
fn abstract_addr(name: &[u8]) -> std::io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    std::os::unix::net::SocketAddr::from_abstract_name(name)
}

#[cfg(all(unix, not(target_os = "linux")))]
fn abstract_addr(_name: &[u8]) -> std::io::Result<std::os::unix::net::SocketAddr> {
    Err(std::io::Error::other("abstract sockets are Linux-only"))
}

#[cfg(not(unix))]
fn send(_message: &str) {}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn ready_reaches_the_notify_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        // Set only for this process's test thread's call; tests in this
        // module do not run concurrently with others reading the variable.
        std::env::set_var("NOTIFY_SOCKET", &path);
        ready();
        std::env::remove_var("NOTIFY_SOCKET");
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }
}
