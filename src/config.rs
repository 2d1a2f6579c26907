//! The command line: clap definitions, and flags > environment > defaults
//! resolved once into [`ServeConfig`].

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// The default listen address (loopback only).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:11435";

/// aliasd: short, stable names for Ollama models, with a durable history.
#[derive(Debug, Parser)]
#[command(name = "aliasd", version, about, long_about = None)]
pub struct Cli {
    /// The aliasd server to talk to, as host:port or a URL.
    #[arg(long, global = true, env = "ALIASD_HOST", default_value = DEFAULT_LISTEN)]
    pub host: String,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// A token to send as `Authorization: Bearer` (client commands).
    #[arg(
        long = "auth",
        global = true,
        env = "ALIASD_TOKEN",
        hide_env_values = true
    )]
    pub auth: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Commands,
}

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line of text each (colours at a terminal).
    Text,
    /// One JSON object each: time, level, target, message and fields.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Commands {
    /// Run the registry server.
    #[command(after_help = SERVE_ENV_HELP)]
    Serve(Box<ServeArgs>),
    /// Create an alias, or point an existing one at a new target.
    Create {
        /// The alias, e.g. `coder`.
        alias: String,
        /// The model or alias it points at.
        target: String,
        /// Make a prefix alias (matches every name starting with ALIAS).
        #[arg(long)]
        prefix: bool,
    },
    /// List aliases.
    Ls {
        /// Only aliases whose direct target is this.
        #[arg(long)]
        target: Option<String>,
        /// Only aliases in this state (active, dangling, shadowed).
        #[arg(long)]
        state: Option<String>,
    },
    /// List the fleet's nodes: live or not, how far each has applied the log,
    /// how many models it has (a server started with --nats).
    Nodes,
    /// Delete an alias (never a model).
    Rm {
        /// The alias.
        alias: String,
    },
    /// Show what a name resolves to.
    Resolve {
        /// A model or alias name.
        name: String,
    },
    /// Show the latest changes, oldest first.
    History {
        /// Only this alias.
        alias: Option<String>,
        /// How many of the latest events.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Print changes as they happen.
    Watch {
        /// Replay every event after this seq first.
        #[arg(long)]
        since: Option<u64>,
        /// Only this alias.
        #[arg(long)]
        alias: Option<String>,
    },
    /// Manage webhooks: signed POSTs of every matching event to a URL.
    Webhook {
        /// The action.
        #[command(subcommand)]
        action: WebhookAction,
    },
    /// Offline journal maintenance (the server must not be running).
    Journal {
        /// The action.
        #[command(subcommand)]
        action: JournalAction,
    },
    /// Print a shell completion script (e.g. `aliasd completions bash >
    /// /etc/bash_completion.d/aliasd`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `aliasd man > /usr/local/share/man/man1/aliasd.1`.
    Man,
}

/// `aliasd webhook ...`.
#[derive(Debug, Subcommand)]
pub enum WebhookAction {
    /// Add a webhook; prints its secret, which is shown this once.
    Add {
        /// Where to POST events (http:// or https://).
        url: String,
        /// Only events of this type (repeatable), e.g. alias.updated.
        #[arg(long = "type", value_name = "TYPE")]
        types: Vec<String>,
        /// Only events about this alias.
        #[arg(long)]
        alias: Option<String>,
    },
    /// List webhooks.
    Ls,
    /// Delete a webhook; its deliveries stop at once.
    Rm {
        /// The webhook's id.
        id: String,
    },
}

/// `aliasd journal ...`.
#[derive(Debug, Subcommand)]
pub enum JournalAction {
    /// Check checksums, seq continuity and snapshots; exit 1 on any damage.
    Verify(JournalDir),
    /// Print every event as NDJSON.
    Dump(JournalDir),
    /// Write a snapshot now.
    Compact(JournalDir),
    /// Keep the good prefix of a journal damaged in the middle.
    Repair {
        /// The journal.
        #[command(flatten)]
        dir: JournalDir,
        /// Do it, after saying what will be dropped.
        #[arg(long)]
        yes: bool,
    },
}

/// The journal directory of an offline command.
#[derive(Debug, Args)]
pub struct JournalDir {
    /// The journal directory.
    #[arg(long = "journal", env = "ALIASD_JOURNAL")]
    pub journal: Option<PathBuf>,
}

impl JournalDir {
    /// The directory, defaulted.
    pub fn resolve(&self) -> PathBuf {
        self.journal.clone().unwrap_or_else(default_journal_dir)
    }
}

/// The environment `aliasd serve` reads, listed after its flags in
/// `serve --help` (the variables of flags are also named beside each flag).
const SERVE_ENV_HELP: &str = "\
Environment:
  OLLAMA_MODELS        the model store (--models)
  ALIASD_JOURNAL       the journal directory (--journal)
  ALIASD_LISTEN        the listen address (--listen)
  ALIASD_TOKENS        read-write tokens, NAME=SECRET,NAME=SECRET (--token)
  ALIASD_READ_TOKENS   read-only tokens, NAME=SECRET,... (--read-token)
  ALIASD_CORS_ORIGINS  browser origins allowed (--cors-origin)
  ALIASD_POLL_MS       poll the store instead of watching it (--poll-ms)
  ALIASD_LOG_FORMAT    text or json (--log-format)
  ALIASD_LOG           the log filter, e.g. info or aliasd=debug,info (else RUST_LOG, else info)";

/// The help of `--models`, with the default it resolves to here.
fn models_help() -> String {
    format!(
        "The Ollama model store [default: {}]",
        default_shown(default_models_dir())
    )
}

/// The help of `--journal` (of `serve`), with the default it resolves to here.
fn journal_help() -> String {
    format!(
        "The journal directory [default: {}]",
        default_shown(default_journal_dir())
    )
}

/// A default directory under `$HOME` as help shows it; without `$HOME`
/// there is none, and the flag must be given.
fn default_shown(dir: PathBuf) -> String {
    match has_home() {
        true => dir.display().to_string(),
        false => "none: $HOME is not set, so give this flag".to_string(),
    }
}

/// `aliasd serve` flags.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The Ollama model store (default `~/.ollama/models`).
    #[arg(long, env = "OLLAMA_MODELS", value_name = "DIR", help = models_help())]
    pub models: Option<PathBuf>,
    /// The journal directory (default `~/.ollama/aliasd/journal`).
    #[arg(long, env = "ALIASD_JOURNAL", value_name = "DIR", help = journal_help())]
    pub journal: Option<PathBuf>,
    /// The address to listen on. On a loopback address (the default) only
    /// requests whose Host names this machine (localhost, *.localhost, an IP
    /// address) are served, a guard against DNS rebinding; on any other
    /// address (0.0.0.0, say) Host is not checked, and --token should be set.
    #[arg(long, env = "ALIASD_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Log lines as text for people, or as one JSON object per line for a
    /// log collector.
    #[arg(long, env = "ALIASD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// An Ollama server (`http://host:port`) to forward every other route to,
    /// with aliases resolved in inference requests (docs/API.md).
    #[arg(long)]
    pub upstream: Option<String>,
    /// Keep at least the last N events (older segments go once a snapshot covers them).
    #[arg(long)]
    pub retain: Option<u64>,
    /// Journal segment size in bytes (tests use small segments to exercise
    /// retention).
    #[arg(long, hide = true, default_value_t = 64 << 20)]
    pub segment_bytes: u64,
    /// Write a snapshot after this many events (or as many events as there
    /// are aliases, if that is more: a snapshot's cost grows with the index).
    #[arg(long, default_value_t = 10_000)]
    pub snapshot_every: u64,
    /// Poll the store every this many milliseconds instead of using the
    /// platform's file watcher (for network file systems).
    #[arg(long, env = "ALIASD_POLL_MS")]
    pub poll_ms: Option<u64>,
    /// A read-write token, NAME=SECRET (repeatable; also $ALIASD_TOKENS, comma-separated).
    #[arg(long = "token", value_name = "NAME=SECRET")]
    pub tokens: Vec<String>,
    /// A read-only token, NAME=SECRET (repeatable; also $ALIASD_READ_TOKENS).
    #[arg(long = "read-token", value_name = "NAME=SECRET")]
    pub read_tokens: Vec<String>,
    /// A browser origin allowed to call the API besides this machine's own
    /// pages, e.g. https://app.example (repeatable or comma-separated, like
    /// OLLAMA_ORIGINS; `*` allows any, a trailing `*` matches a prefix).
    /// Requests from any other origin get 403.
    #[arg(
        long = "cors-origin",
        alias = "origins",
        value_name = "ORIGIN",
        env = "ALIASD_CORS_ORIGINS",
        value_delimiter = ','
    )]
    pub origins: Vec<String>,
    /// Event-stream subscribers allowed at once (at most three quarters of
    /// the connections allowed).
    #[arg(long, default_value_t = 4096)]
    pub max_subscribers: u64,
    /// Seconds a request's body may take to arrive.
    #[arg(long, default_value_t = 30)]
    pub request_timeout_secs: u64,
    /// Connections open at once; past it new ones wait until one closes.
    /// Default: the open-file limit (raised to the hard limit at start-up)
    /// less a reserve, halved with --upstream.
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Milliseconds a request's head may take to arrive, from the
    /// connection's start or the head's first byte.
    #[arg(
        long,
        hide = true,
        env = "ALIASD_HEADER_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub header_timeout_ms: u64,
    /// Milliseconds a keep-alive connection may stay idle between requests.
    #[arg(
        long,
        hide = true,
        env = "ALIASD_IDLE_TIMEOUT_MS",
        default_value_t = 75_000
    )]
    pub idle_timeout_ms: u64,
    /// Join a fleet: NATS server URLs (comma-separated), whose JetStream
    /// holds the log every node shares (SPEC §8). Without it aliasd serves
    /// this host alone.
    #[arg(
        long,
        env = "ALIASD_NATS",
        value_name = "URL[,URL...]",
        value_delimiter = ','
    )]
    pub nats: Vec<String>,
    /// The fleet's name: its stream is <FLEET>_LOG, its buckets <FLEET>_NODES
    /// and <FLEET>_SNAPSHOTS.
    #[arg(long, env = "ALIASD_FLEET", default_value = "aliasd")]
    pub fleet: String,
    /// This node's name in the fleet [default: the host name].
    #[arg(long, env = "ALIASD_NODE")]
    pub node: Option<String>,
    /// Replicas of the fleet's stream and buckets when this node creates them
    /// (3 on a NATS cluster).
    #[arg(long, default_value_t = 1)]
    pub nats_replicas: usize,
    /// A NATS credentials file.
    #[arg(long, value_name = "FILE")]
    pub nats_creds: Option<PathBuf>,
    /// A NATS token.
    #[arg(long, env = "ALIASD_NATS_TOKEN", hide_env_values = true)]
    pub nats_token: Option<String>,
    /// Milliseconds before the first retry of a failed webhook delivery
    /// (doubling after each failure); tests shorten it.
    #[arg(
        long,
        hide = true,
        env = "ALIASD_WEBHOOK_FIRST_RETRY_MS",
        default_value_t = 1_000
    )]
    pub webhook_first_retry_ms: u64,
    /// Milliseconds of failures after which a webhook is `failing` (and
    /// retried at the failing interval); tests shorten it.
    #[arg(
        long,
        hide = true,
        env = "ALIASD_WEBHOOK_FAILING_AFTER_MS",
        default_value_t = 24 * 3600 * 1000
    )]
    pub webhook_failing_after_ms: u64,
    /// Milliseconds between retries of a `failing` webhook; tests shorten it.
    #[arg(
        long,
        hide = true,
        env = "ALIASD_WEBHOOK_FAILING_RETRY_MS",
        default_value_t = 3600 * 1000
    )]
    pub webhook_failing_retry_ms: u64,
    /// The client's global `--host`, declared here hidden so that clap does
    /// not list the global one in `serve --help`; the server ignores it (it
    /// listens on `--listen`). clap fills it from the global flag's value.
    #[arg(long = "host", id = "host", hide = true, value_name = "HOST")]
    pub client_host: Option<String>,
    /// The client's global `--json`, hidden here likewise; ignored.
    #[arg(long = "json", id = "json", hide = true)]
    pub client_json: bool,
    /// The client's global `--auth`, hidden here likewise; ignored (the
    /// server's tokens are `--token`).
    #[arg(long = "auth", id = "auth", hide = true, value_name = "SECRET")]
    pub client_auth: Option<String>,
}

/// The user's home directory, or the current directory if unknown (start-up
/// refuses to use that: see [`ServeArgs::check_defaults`]).
fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Whether `$HOME` is set to something.
fn has_home() -> bool {
    std::env::var_os("HOME").is_some_and(|home| !home.is_empty())
}

/// `~/.ollama/models`.
pub fn default_models_dir() -> PathBuf {
    home().join(".ollama").join("models")
}

/// `~/.ollama/aliasd/journal`.
pub fn default_journal_dir() -> PathBuf {
    home().join(".ollama").join("aliasd").join("journal")
}

impl ServeArgs {
    /// Refuses to fall back to the working directory: with no `$HOME`, the
    /// store and the journal must be given.
    ///
    /// # Errors
    ///
    /// `$HOME` is unset and `--models` or `--journal` is missing.
    pub fn check_defaults(&self) -> Result<(), String> {
        if has_home() {
            return Ok(());
        }
        let mut missing = Vec::new();
        if self.models.is_none() {
            missing.push("--models DIR (or $OLLAMA_MODELS)");
        }
        if self.journal.is_none() {
            missing.push("--journal DIR (or $ALIASD_JOURNAL)");
        }
        match missing.is_empty() {
            true => Ok(()),
            false => Err(format!(
                "$HOME is not set, so there is no default store or journal (~/.ollama/...); give {}",
                missing.join(" and ")
            )),
        }
    }

    /// The HTTP settings these flags (and `$ALIASD_TOKENS`, `$ALIASD_READ_TOKENS`) mean.
    ///
    /// # Errors
    ///
    /// A malformed token (the message never contains the secret).
    pub fn http_config(&self) -> Result<crate::http::HttpConfig, String> {
        use crate::http::auth::Token;
        let mut tokens = Vec::new();
        for (specs, env, read_only) in [
            (&self.tokens, "ALIASD_TOKENS", false),
            (&self.read_tokens, "ALIASD_READ_TOKENS", true),
        ] {
            for spec in specs {
                tokens.push(Token::parse(spec, read_only)?);
            }
            if let Ok(list) = std::env::var(env) {
                tokens.extend(
                    Token::parse_list(&list, read_only).map_err(|e| format!("${env}: {e}"))?,
                );
            }
        }
        Ok(crate::http::HttpConfig {
            tokens,
            origins: self
                .origins
                .iter()
                .map(|o| o.trim().to_string())
                .filter(|o| !o.is_empty())
                .collect(),
            check_host: self.listen.ip().is_loopback(),
            max_subscribers: self.max_subscribers,
            request_timeout: std::time::Duration::from_secs(self.request_timeout_secs.max(1)),
            header_timeout: std::time::Duration::from_millis(self.header_timeout_ms.max(1)),
            idle_timeout: std::time::Duration::from_millis(self.idle_timeout_ms.max(1)),
            ..crate::http::HttpConfig::default()
        })
    }

    /// How to follow external changes to the store.
    pub fn watch_mode(&self) -> crate::watcher::WatchMode {
        match self.poll_ms {
            Some(ms) => {
                crate::watcher::WatchMode::Poll(std::time::Duration::from_millis(ms.max(10)))
            }
            None => crate::watcher::WatchMode::Notify {
                fallback_poll: std::time::Duration::from_secs(2),
            },
        }
    }

    /// When webhook deliveries are retried (SPEC §9; shorter in tests).
    pub fn webhook_retry(&self) -> crate::webhooks::RetryPolicy {
        let defaults = crate::webhooks::RetryPolicy::default();
        let ms = |ms: u64| std::time::Duration::from_millis(ms.max(1));
        crate::webhooks::RetryPolicy {
            first: ms(self.webhook_first_retry_ms),
            max: defaults.max.max(ms(self.webhook_first_retry_ms)),
            failing_after: ms(self.webhook_failing_after_ms),
            failing_every: ms(self.webhook_failing_retry_ms),
            timeout: defaults.timeout,
        }
    }

    /// The fleet this node joins, if `--nats` is given.
    ///
    /// # Errors
    ///
    /// A fleet or node name NATS cannot use, or no replicas.
    pub fn fleet_config(&self) -> Result<Option<crate::fleet::FleetConfig>, String> {
        let urls: Vec<String> = self
            .nats
            .iter()
            .map(|u| u.trim().to_string())
            .filter(|u| !u.is_empty())
            .collect();
        if urls.is_empty() {
            return Ok(None);
        }
        let node = self
            .node
            .clone()
            .unwrap_or_else(crate::fleet::default_node_name);
        crate::fleet::check_name("--fleet", &self.fleet)?;
        crate::fleet::check_name("--node", &node)?;
        if self.nats_replicas == 0 {
            return Err("--nats-replicas must be at least 1".into());
        }
        Ok(Some(crate::fleet::FleetConfig {
            urls,
            fleet: self.fleet.clone(),
            node,
            replicas: self.nats_replicas,
            creds: self.nats_creds.clone(),
            token: self.nats_token.clone(),
        }))
    }

    /// The registry settings these flags mean.
    pub fn registry_config(&self) -> crate::registry::RegistryConfig {
        crate::registry::RegistryConfig {
            models_dir: self.models.clone().unwrap_or_else(default_models_dir),
            journal_dir: self.journal.clone().unwrap_or_else(default_journal_dir),
            retain: self.retain,
            segment_bytes: self.segment_bytes,
            snapshot_every: self.snapshot_every,
            io: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_flags_go_before_or_after() {
        let a = Cli::try_parse_from(["aliasd", "--json", "ls"]).unwrap();
        let b = Cli::try_parse_from(["aliasd", "ls", "--json", "--host", "h:1"]).unwrap();
        assert!(a.json && b.json);
        assert_eq!(b.host, "h:1");
    }

    #[test]
    fn serve_defaults_to_loopback() {
        let cli = Cli::try_parse_from(["aliasd", "serve"]).unwrap();
        let Commands::Serve(args) = cli.command else {
            panic!("not serve")
        };
        assert!(args.listen.ip().is_loopback());
        assert_eq!(args.listen.port(), 11435);
        assert!(args.http_config().unwrap().check_host);
    }

    #[test]
    fn host_is_checked_only_on_loopback_listeners() {
        for (listen, checked) in [
            ("127.0.0.1:1", true),
            ("[::1]:1", true),
            ("0.0.0.0:1", false),
            ("[::]:1", false),
            ("192.0.2.7:1", false),
        ] {
            let cli = Cli::try_parse_from(["aliasd", "serve", "--listen", listen]).unwrap();
            let Commands::Serve(args) = cli.command else {
                panic!("not serve")
            };
            assert_eq!(args.http_config().unwrap().check_host, checked, "{listen}");
        }
    }
}
