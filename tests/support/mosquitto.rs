//! A real mosquitto for a test: its own config, port and log in a temp dir,
//! started on a free loopback port and killed when dropped.
//!
//! ```ignore
//! mod support;
//! use support::mosquitto::Mosquitto;
//!
//! let mut broker = Mosquitto::start();
//! let port = broker.port();
//! broker.restart(); // same port: clients reconnect to it
//! ```
//!
//! Needs the `mosquitto` binary: `.ci/run` (through `.ci/setup`) installs it,
//! or `apt-get install mosquitto`. It is looked for in `$MOSQUITTO`, then
//! `/usr/sbin/mosquitto`, then on `PATH`.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// How long mosquitto gets to accept connections, or to exit on SIGTERM.
const PATIENCE: Duration = Duration::from_secs(10);

/// What a mosquitto in front of a wasmgate needs, beyond its defaults:
///
/// - `max_queued_messages 0` (no limit): with the default, 1000, mosquitto
///   silently drops QoS 1 messages for an offline persistent session once
///   1000 wait, so a gateway that is down (restarting, upgrading) while
///   devices keep publishing loses messages.
/// - `max_inflight_messages 1000`: with the default, 20, only 20 messages
///   at a time reach the gateway before it acknowledges them, and it
///   acknowledges only after the function ran and its effects are stored;
///   its queue and workers would sit mostly idle.
pub const GATEWAY_SETTINGS: &str = "max_queued_messages 0\nmax_inflight_messages 1000\n";

/// A running (or stopped) mosquitto owned by one test.
#[derive(Debug)]
pub struct Mosquitto {
    port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl Mosquitto {
    /// Anonymous access, no persistence, on a free loopback port.
    #[track_caller]
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// Like [`start`](Self::start), with extra config lines appended; `{dir}`
    /// in them is replaced by the broker's temp dir (for `persistence_location`,
    /// password files, ...).
    #[track_caller]
    pub fn start_with(extra_config: &str) -> Self {
        // A port picked by binding port 0 can be taken by someone else before
        // mosquitto binds it; try a few.
        let mut last_log = String::new();
        for _ in 0..5 {
            let dir = tempfile::Builder::new()
                .prefix("wasmgate-mosquitto-")
                .tempdir()
                .expect("a temp dir for mosquitto");
            let port = free_port();
            let config = config(port, dir.path(), extra_config);
            std::fs::write(dir.path().join("mosquitto.conf"), config)
                .expect("write mosquitto.conf");
            let mut broker = Self {
                port,
                dir,
                child: None,
            };
            match broker.spawn() {
                Ok(()) => return broker,
                Err(log) => last_log = log,
            }
        }
        panic!("mosquitto did not start; its log:\n{last_log}");
    }

    /// Settings a broker in front of a gateway needs; users must set them too
    /// (see [`GATEWAY_SETTINGS`]).
    #[track_caller]
    pub fn start_for_gateway() -> Self {
        Self::start_with(GATEWAY_SETTINGS)
    }

    /// A persistent broker: sessions and queued QoS 1 messages survive
    /// [`stop`](Self::stop) + [`restart`](Self::restart) (not [`kill`](Self::kill),
    /// which is a crash: mosquitto saves on a clean shutdown).
    #[track_caller]
    pub fn start_persistent() -> Self {
        Self::start_with("persistence true\npersistence_location {dir}/\n")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The temp dir holding the config, the log and any persistence file.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything mosquitto logged so far (all runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => child
                .try_wait()
                .map(|status| status.is_none())
                .unwrap_or(false),
            None => false,
        }
    }

    /// A clean shutdown (SIGTERM): clients see the connection close, a
    /// persistent broker saves its state. SIGKILL if it takes over 10 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let terminated = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .is_ok_and(|status| status.success());
        if terminated {
            let deadline = Instant::now() + PATIENCE;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// SIGHUP: mosquitto reloads its config (ACL and password files
    /// included) without dropping any connection.
    #[track_caller]
    pub fn reload(&self) {
        let child = self.child.as_ref().expect("mosquitto is running");
        let status = Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -HUP failed");
    }

    /// A crash (SIGKILL): nothing is saved.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the broker if it runs, then starts it again on the same port
    /// with the same config, and waits until it accepts connections.
    #[track_caller]
    pub fn restart(&mut self) {
        self.stop();
        if let Err(log) = self.spawn() {
            panic!(
                "mosquitto did not restart on port {}; its log:\n{log}",
                self.port
            );
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.log")
    }

    /// Starts the process and waits for the port; on failure, the log.
    fn spawn(&mut self) -> Result<(), String> {
        let mut child = Command::new(binary())
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run mosquitto ({e}); install it with .ci/setup or apt-get install mosquitto")
            });
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("(exited with {status})\n{}", self.log()));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "(not listening after {PATIENCE:?})\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

fn config(port: u16, dir: &Path, extra: &str) -> String {
    let dir = dir.display().to_string();
    format!(
        "# Written by the wasmgate test harness (tests/support/mosquitto.rs).\n\
         listener {port} 127.0.0.1\n\
         allow_anonymous true\n\
         # Started as root (containers), mosquitto would switch to the `mosquitto`\n\
         # user and lose access to this dir; as anyone else this line does nothing.\n\
         user root\n\
         log_dest file {dir}/mosquitto.log\n\
         log_type error\n\
         log_type warning\n\
         log_type notice\n\
         log_type information\n\
         connection_messages true\n\
         {}\n",
        extra.replace("{dir}", &dir)
    )
}

fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("MOSQUITTO") {
        return path.into();
    }
    let sbin = Path::new("/usr/sbin/mosquitto");
    if sbin.exists() {
        sbin.into()
    } else {
        "mosquitto".into()
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}
