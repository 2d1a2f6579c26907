//! Fleet mode (SPEC §8): one aliasd per Ollama host, every node sharing one
//! event log in NATS JetStream.
//!
//! What lives where (names from SPEC §8):
//! - the stream `<FLEET>_LOG`: one message per commit, appended with
//!   `Nats-Expected-Last-Sequence`, so event seqs stay gap-free and identical
//!   on every node (the JetStream `EventLog`, whose local journal is this
//!   node's replica);
//! - the key-value bucket `<FLEET>_NODES`: one record per node, refreshed by
//!   its heartbeat and expiring when the node stops;
//! - the key-value bucket `<FLEET>_SNAPSHOTS`: snapshots, so that a new node
//!   does not replay the whole history.
//!
//! This module holds what every part of fleet mode shares: its settings
//! ([`FleetConfig`]), the names of the stream and buckets, and the connection
//! ([`connect`]).

use std::time::Duration;

pub mod nodes;

/// How this node joins a fleet (`aliasd serve --nats ...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetConfig {
    /// NATS server URLs (`nats://host:4222`, ...), tried in turn.
    pub urls: Vec<String>,
    /// The fleet's name: the prefix of its stream and buckets.
    pub fleet: String,
    /// This node's name (unique in the fleet; the host name by default).
    pub node: String,
    /// Replicas of the stream and buckets when this node creates them.
    pub replicas: usize,
    /// A NATS credentials file (`--nats-creds`).
    pub creds: Option<std::path::PathBuf>,
    /// A NATS token (`--nats-token`).
    pub token: Option<String>,
}

impl FleetConfig {
    /// The stream that holds the fleet's log: `<FLEET>_LOG`.
    pub fn log_stream(&self) -> String {
        format!("{}_LOG", self.fleet)
    }

    /// The key-value bucket of node records: `<FLEET>_NODES`.
    pub fn nodes_bucket(&self) -> String {
        format!("{}_NODES", self.fleet)
    }

    /// The key-value bucket of snapshots: `<FLEET>_SNAPSHOTS`.
    pub fn snapshots_bucket(&self) -> String {
        format!("{}_SNAPSHOTS", self.fleet)
    }

    /// The URLs as one string, for messages (`nats://a:4222,nats://b:4222`).
    pub fn urls_display(&self) -> String {
        self.urls.join(",")
    }
}

/// Checks a fleet or node name: it becomes part of stream, bucket and key
/// names, which NATS limits to `[A-Za-z0-9_-]`.
///
/// # Errors
///
/// The name is empty, longer than 64 bytes, or has another character.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    match ok {
        true => Ok(()),
        false => Err(format!(
            "{what} {name:?} is not valid: use 1-64 letters, digits, '_' or '-' (it names NATS streams, buckets and keys)"
        )),
    }
}

/// This machine's host name, cut to a valid node name (`ALIASD_NODE`'s default).
pub fn default_node_name() -> String {
    let uname = rustix::system::uname();
    let host = uname.nodename().to_string_lossy();
    let host = host.split('.').next().unwrap_or_default();
    let name: String = host
        .chars()
        .map(
            |c| match c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                true => c,
                false => '_',
            },
        )
        .take(64)
        .collect();
    match name.is_empty() {
        true => "node".to_string(),
        false => name,
    }
}

/// Connects to NATS. The client reconnects by itself after a loss (forever,
/// with backoff), and the first connection is retried in the background as
/// well: a node starts and serves reads while NATS is down.
///
/// # Errors
///
/// A bad URL, or an unreadable credentials file.
pub async fn connect(config: &FleetConfig) -> anyhow::Result<async_nats::Client> {
    use anyhow::Context;
    let mut options = async_nats::ConnectOptions::new()
        .name(format!(
            "aliasd {} ({})",
            config.node,
            env!("CARGO_PKG_VERSION")
        ))
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_secs(5)));
    if let Some(token) = &config.token {
        options = options.token(token.clone());
    }
    if let Some(creds) = &config.creds {
        options = options
            .credentials_file(creds)
            .await
            .with_context(|| format!("reading the NATS credentials file {}", creds.display()))?;
    }
    let urls = config
        .urls
        .iter()
        .map(|url| {
            url.parse::<async_nats::ServerAddr>()
                .with_context(|| format!("{url:?} is not a NATS URL (nats://host:port)"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    options
        .connect(urls)
        .await
        .with_context(|| format!("connecting to NATS at {}", config.urls_display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_nats_rules() {
        assert!(check_name("fleet", "aliasd").is_ok());
        assert!(check_name("node", "gpu-01_a").is_ok());
        for bad in ["", "a.b", "a b", "a*", "a>", &"x".repeat(65)] {
            assert!(check_name("node", bad).is_err(), "{bad:?}");
        }
        assert!(check_name("node", &default_node_name()).is_ok());
    }

    #[test]
    fn stream_and_buckets_are_named_after_the_fleet() {
        let config = FleetConfig {
            urls: vec!["nats://127.0.0.1:4222".into()],
            fleet: "lab".into(),
            node: "a".into(),
            replicas: 1,
            creds: None,
            token: None,
        };
        assert_eq!(config.log_stream(), "lab_LOG");
        assert_eq!(config.nodes_bucket(), "lab_NODES");
        assert_eq!(config.snapshots_bucket(), "lab_SNAPSHOTS");
    }
}
