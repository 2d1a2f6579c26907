//! Real NATS servers with JetStream for the fleet's tests (SPEC §8): each
//! test starts its own on free loopback ports, in its own directory, and
//! stops only what it started (on drop at the latest).
//!
//! The binary is `nats-server` from `$PATH`, `/usr/sbin` or `/usr/bin`
//! (Debian's package; `.ci/run` installs it). Missing, a test fails with
//! the command that installs it: it never passes by skipping.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The `nats-server` binary.
pub fn nats_server_bin() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("nats-server"))
        .find(|bin| bin.is_file())
        .expect("nats-server is not installed: apt-get install -y nats-server (.ci/run does)")
}

/// What `nats-server` logs once it accepts clients.
const READY: &str = "Server is ready";

/// A free loopback port (free when asked; the server binds it next).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A JetStream server's flags on loopback `port`, storing in and logging to `dir`.
fn base_args(dir: &TempDir, port: u16) -> Vec<String> {
    vec![
        "-js".to_string(),
        "-sd".into(),
        dir.path().join("js").display().to_string(),
        "-a".into(),
        "127.0.0.1".into(),
        "-p".into(),
        port.to_string(),
        "-l".into(),
        dir.path().join("nats.log").display().to_string(),
    ]
}

/// One `nats-server` process with JetStream on, on loopback.
pub struct NatsServer {
    child: Option<Child>,
    /// Its client port.
    pub port: u16,
    args: Vec<String>,
    /// JetStream's storage and the server's log (`nats.log`), kept until drop.
    pub dir: TempDir,
}

impl NatsServer {
    /// A single server; on another free port if the one chosen was taken
    /// before it could bind it.
    pub fn start() -> NatsServer {
        for _attempt in 0..5 {
            let dir = crate::support::tempdir("nats");
            let port = free_port();
            let args = base_args(&dir, port);
            let mut server = NatsServer {
                child: None,
                port,
                args,
                dir,
            };
            server.spawn();
            match server.wait_ready(0) {
                Ok(()) => return server,
                Err(status) if server.log().contains("address already in use") => {
                    eprintln!("nats-server exited with {status}: port {port} taken; another");
                }
                Err(status) => panic!(
                    "nats-server exited with {status} before it was ready; its log:\n{}",
                    server.log()
                ),
            }
        }
        panic!("could not find a free port for nats-server");
    }

    /// Three servers in one JetStream cluster, routed to each other on loopback.
    pub fn start_cluster() -> Vec<NatsServer> {
        let cluster_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let routes = cluster_ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut servers: Vec<NatsServer> = cluster_ports
            .iter()
            .enumerate()
            .map(|(i, cluster_port)| {
                let dir = crate::support::tempdir("nats");
                let port = free_port();
                let mut args = base_args(&dir, port);
                args.extend([
                    "--server_name".into(),
                    format!("n{i}"),
                    "--cluster_name".into(),
                    "aliasd-test".into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{cluster_port}"),
                    "--routes".into(),
                    routes.clone(),
                ]);
                NatsServer {
                    child: None,
                    port,
                    args,
                    dir,
                }
            })
            .collect();
        for server in &mut servers {
            server.spawn();
        }
        for server in &mut servers {
            server.wait_listening(0);
        }
        servers
    }

    /// Its URL, `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }

    /// Stops it (SIGKILL: NATS down at once, as a crash or a cut cable).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and storage.
    pub fn start_again(&mut self) {
        let readies = self.readies();
        self.spawn();
        self.wait_listening(readies);
    }

    /// How many times its log says it was ready (the log is appended to at
    /// each start).
    fn readies(&self) -> usize {
        self.log().matches(READY).count()
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "nats-server is already running");
        let child = Command::new(nats_server_bin())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nats-server");
        self.child = Some(child);
    }

    /// Waits until this process says it is ready (more often than the
    /// `readies` of its earlier starts) and its port answers; panics with its
    /// log if it exits first or takes too long.
    fn wait_listening(&mut self, readies: usize) {
        if let Err(status) = self.wait_ready(readies) {
            panic!(
                "nats-server exited with {status} before it was ready; its log:\n{}",
                self.log()
            );
        }
    }

    /// [`NatsServer::wait_listening`], returning how it exited if it did.
    /// A port that answers is not enough: another process may hold it (one
    /// that took the port after it was chosen, this server then exiting).
    fn wait_ready(&mut self, readies: usize) -> Result<(), std::process::ExitStatus> {
        let deadline = Instant::now() + crate::support::WAIT;
        loop {
            let child = self.child.as_mut().expect("nats-server is running");
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return Err(status);
            }
            if self.readies() > readies && TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "nats-server was not ready on {} within {:?}; its log:\n{}",
                self.port,
                crate::support::WAIT,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
