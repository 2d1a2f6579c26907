//! The `aliasd` binary: parse the command line, set up logging, dispatch to
//! the server, a client command, or an offline journal command.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use aliasd::client::{self, Client};
use aliasd::config::{Cli, Commands, ServeArgs};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json_logs = matches!(&cli.command, Commands::Serve(args) if args.log_format == aliasd::config::LogFormat::Json);
    let serving = matches!(&cli.command, Commands::Serve(_));
    // Held until the command is done: dropping it writes the log lines still
    // queued (the server's; see `init_tracing`).
    let log_writer = match init_tracing(json_logs, serving) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("aliasd: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let res = match cli.command {
        Commands::Serve(args) => serve(*args),
        Commands::Journal { action } => aliasd::offline::run(action, cli.json),
        Commands::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "aliasd", &mut std::io::stdout());
            Ok(())
        }
        Commands::Man => {
            let command = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(command)
                .render(&mut std::io::stdout())
                .context("writing the man page")
        }
        command => Client::new(&cli.host, cli.auth.clone())
            .and_then(|client| run_client(&client, cli.json, command)),
    };
    // The queued lines first, so that the last error comes after them.
    drop(log_writer);
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aliasd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The variables that filter the logs, the first one set winning.
const LOG_FILTER_VARS: [&str; 2] = ["ALIASD_LOG", "RUST_LOG"];

/// The filter when no variable sets one: `info`, but the NATS client's own
/// lines only from `warn` (it logs every reconnect attempt at `info`; aliasd
/// says once that NATS is lost and once that it is back).
const DEFAULT_LOG_FILTER: &str = "info,async_nats=warn";

/// Logs to stderr, filtered by `ALIASD_LOG`, else `RUST_LOG`, else `info`
/// (tracing's `EnvFilter` directives: `debug`, `aliasd=debug,info`, ...).
///
/// The server (`serving`) writes its access lines, one per request,
/// through a worker thread (`aliasd::logging::LogWriter`: in batches, off
/// the runtime's threads) and returns its guard, which must live until the
/// server has stopped; in the text format it puts the access line together
/// itself (`aliasd::logging::log_access`); every other line, and every line of the other
/// commands, is written to stderr directly.
///
/// # Errors
///
/// The filter does not parse: it is refused rather than ignored, since logs
/// silently missing are found only when they are needed.
fn init_tracing(
    json: bool,
    serving: bool,
) -> anyhow::Result<Option<tracing_appender::non_blocking::WorkerGuard>> {
    let mut filter = None;
    for var in LOG_FILTER_VARS {
        let value = match std::env::var(var) {
            Ok(value) if !value.trim().is_empty() => value,
            Ok(_) | Err(std::env::VarError::NotPresent) => continue,
            Err(std::env::VarError::NotUnicode(_)) => {
                anyhow::bail!(
                    "{var} is not UTF-8; set it to a log filter such as info or aliasd=debug,info"
                )
            }
        };
        let parsed = tracing_subscriber::EnvFilter::builder()
            .parse(&value)
            .map_err(|e| {
                anyhow::anyhow!("{var}={value:?} is not a log filter ({e}); use a level such as info or debug, or directives such as aliasd=debug,info")
            })?;
        filter = Some(parsed);
        break;
    }
    let filter = filter.unwrap_or_else(|| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    // Colours only for a person at a terminal, not in a log file or journald.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    if serving {
        let (writer, guard) = aliasd::logging::LogWriter::stderr();
        if !json {
            writer.write_access_lines_directly(colour);
        }
        install_logs(filter, json, colour, writer);
        Ok(Some(guard))
    } else {
        install_logs(filter, json, colour, std::io::stderr);
        Ok(None)
    }
}

/// Installs the global subscriber: `filter`, to `writer`, as JSON or as text
/// (the access line by `aliasd::logging::TextFormat`).
fn install_logs<W>(filter: tracing_subscriber::EnvFilter, json: bool, colour: bool, writer: W)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    if json {
        logs.json().init();
    } else {
        logs.with_ansi(colour)
            .event_format(aliasd::logging::TextFormat::default())
            .init();
    }
}

fn run_client(client: &Client, json: bool, command: Commands) -> anyhow::Result<()> {
    match command {
        Commands::Create {
            alias,
            target,
            prefix,
        } => client::create(client, json, &alias, &target, prefix),
        Commands::Ls { target, state } => {
            client::ls(client, json, target.as_deref(), state.as_deref())
        }
        Commands::Rm { alias } => client::rm(client, json, &alias),
        Commands::Nodes => client::nodes(client, json),
        Commands::Resolve { name } => client::resolve(client, json, &name),
        Commands::History { alias, limit } => {
            client::history(client, json, alias.as_deref(), limit)
        }
        Commands::Watch { since, alias } => client::watch(client, json, since, alias.as_deref()),
        Commands::Webhook { action } => client::webhook(client, json, action),
        Commands::Serve(_)
        | Commands::Journal { .. }
        | Commands::Completions { .. }
        | Commands::Man => unreachable!("dispatched in main"),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    aliasd::without_huge_pages();
    args.check_defaults().map_err(anyhow::Error::msg)?;
    let config = args.registry_config();
    let fleet = args.fleet_config().map_err(anyhow::Error::msg)?;
    let mut http = args
        .http_config()
        .map_err(|e| anyhow::anyhow!("bad token: {e}"))?;
    http.proxy = args
        .upstream
        .as_deref()
        .map(aliasd::http::proxy::Proxy::new)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    limit_connections(&mut http, args.max_connections);
    if !http.tokens.is_empty() {
        tracing::info!(
            tokens = http.tokens.len(),
            "authentication required on every route but /healthz"
        );
    } else if !args.listen.ip().is_loopback() {
        tracing::warn!("listening on {} without tokens: anyone who can reach it can change aliases (set --token)", args.listen);
    }
    // The address first: a port in use is said at once, before the journal
    // is opened and the store reconciled.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let listen = args.listen;
    let listener = {
        let _entered = runtime.enter();
        bind(listen).with_context(|| {
            format!("cannot listen on {listen}; is another aliasd running? (use --listen)")
        })?
    };
    tracing::info!(
        models = %config.models_dir.display(),
        journal = %config.journal_dir.display(),
        "starting aliasd"
    );
    // Watch the store before the start-up reconcile scans it, so that nothing
    // changed between that scan and the watch is missed.
    let store = aliasd::store::Store::new(&config.models_dir);
    store
        .ensure_layout()
        .with_context(|| format!("creating model store {}", config.models_dir.display()))?;
    // notify reports paths under the directory as it was given; make it
    // absolute. Only the operator's path to the store is resolved: a
    // `manifests` that is a symlink is never followed (the watch refuses it,
    // as every file operation does).
    let manifests_dir = std::fs::canonicalize(&config.models_dir)
        .map(|root| root.join(aliasd::name::MANIFESTS_DIR))
        .unwrap_or_else(|_| store.manifests_dir());
    let watch_mode = args.watch_mode();
    if matches!(watch_mode, aliasd::watcher::WatchMode::Notify { .. }) {
        // The recursive watch visits every directory in turn: list them first, in parallel.
        store.warm_directories();
    }
    let watching = aliasd::watcher::Watching::start(manifests_dir, watch_mode);
    let journal_dir = config.journal_dir.clone();
    let webhook_retry = args.webhook_retry();
    let (registry, writer, fleet_log) = match fleet {
        None => {
            let (registry, writer) = aliasd::registry::Registry::start(config)?;
            (registry, writer, None)
        }
        Some(fleet) => {
            let (registry, writer, log) = start_fleet(&runtime, config, fleet)?;
            (registry, writer, Some(log))
        }
    };
    let res = runtime.block_on(async move {
        if let Some(log) = fleet_log {
            let listen = listener.local_addr()?.to_string();
            aliasd::fleet::nodes::start(log.client(), log.fleet_config(), &registry, listen);
            reconcile_when_nats_returns(log, registry.clone());
        }
        let _watcher = watching.run(registry.clone());
        let shutdown = shutdown_signal()?;
        tracing::info!("listening on http://{}", listener.local_addr()?);
        if let Some(proxy) = &http.proxy {
            tracing::info!("forwarding other routes to Ollama at {}", proxy.base());
        }
        let webhooks = aliasd::webhooks::Webhooks::start(
            aliasd::webhooks::WebhooksConfig {
                journal_dir,
                listen: listener.local_addr()?,
                retry: webhook_retry,
            },
            &registry,
        )?;
        registry.install_webhooks(webhooks.clone());
        let state = aliasd::http::AppState::new(registry, http);
        aliasd::http::serve(listener, state, shutdown).await?;
        webhooks.shutdown().await;
        anyhow::Ok(())
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    writer.join();
    res
}

/// Starts the registry on the fleet's log (SPEC §8): connects to NATS (in
/// the background if it is down), catches the local journal up with the
/// stream, and starts from it; with NATS down it starts from the journal as
/// it is, and catches up once NATS is back.
fn start_fleet(
    runtime: &tokio::runtime::Runtime,
    config: aliasd::registry::RegistryConfig,
    fleet: aliasd::fleet::FleetConfig,
) -> anyhow::Result<(
    aliasd::registry::Registry,
    aliasd::registry::WriterThread,
    std::sync::Arc<aliasd::log::nats::NatsLog>,
)> {
    use aliasd::log::nats::NatsLog;
    tracing::info!(
        fleet = %fleet.fleet,
        node = %fleet.node,
        nats = %fleet.urls_display(),
        "joining the fleet"
    );
    let client = runtime.block_on(aliasd::fleet::connect(&fleet))?;
    // A first connection that is under way gets a moment to finish, so that
    // a node started with NATS up catches up before it serves.
    runtime.block_on(async {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
        while client.connection_state() != async_nats::connection::State::Connected
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    });
    // A new node starts from the fleet's newest snapshot, not from seq 1.
    if let Some(seq) =
        aliasd::log::nats::seed_journal(&client, &fleet, &config.journal_dir, runtime.handle())?
    {
        tracing::info!(seq, "new journal started from the fleet's snapshot");
    }
    let mut nats_log = None;
    let retain = config.retain;
    let (registry, writer) = aliasd::registry::Registry::start_with(config, |local| {
        let log = std::sync::Arc::new(NatsLog::new(
            local,
            client,
            fleet,
            runtime.handle().clone(),
            retain,
        ));
        match log.catch_up() {
            Ok(0) => {}
            Ok(events) => tracing::info!(events, "caught up with the fleet log"),
            Err(aliasd::log::Error::Unavailable(why)) => tracing::warn!(
                "starting from the local journal without catching up: the event log is \
                 unavailable: {why}"
            ),
            Err(e) => return Err(e).context("catching up with the fleet log"),
        }
        nats_log = Some(log.clone());
        Ok(log)
    })?;
    let log = nats_log.context("the fleet log was not opened")?;
    Ok((registry, writer, log))
}

/// Reconciles the store each time NATS comes back (the connection, or the
/// stream answering again), so that what the watcher saw while it was down
/// is appended to the fleet log.
fn reconcile_when_nats_returns(
    log: std::sync::Arc<aliasd::log::nats::NatsLog>,
    registry: aliasd::registry::Registry,
) {
    tokio::spawn(async move {
        loop {
            log.reconnected().await;
            let origin = aliasd::command::Origin::system("nats");
            match registry
                .execute(aliasd::registry::Command::Reconcile, origin)
                .await
            {
                Ok(_) => {}
                Err(aliasd::registry::RegistryError::Unavailable) => return,
                Err(e) => tracing::warn!("reconcile after NATS came back failed: {e}"),
            }
        }
    });
}

/// Sets the connection cap: `--max-connections`, or what the open-file limit
/// allows once raised to the hard limit, and never more than that; and leaves
/// room under it for requests besides event streams.
fn limit_connections(http: &mut aliasd::http::HttpConfig, asked: Option<usize>) {
    use aliasd::http::server;
    let fd_limit = server::raise_fd_limit();
    let budget = server::fd_budget(fd_limit, http.proxy.is_some());
    http.max_connections = match asked {
        Some(asked) if asked > budget => {
            tracing::warn!(
                "--max-connections {asked} is more than {fd_limit} open files allow; using {budget} \
                 (raise the hard limit, `ulimit -Hn` or systemd's LimitNOFILE=, for more)"
            );
            budget
        }
        Some(asked) => asked.max(1),
        None => budget,
    };
    let subscribers = server::subscriber_budget(http.max_connections);
    if http.max_subscribers > subscribers {
        tracing::info!(
            "event-stream subscribers limited to {subscribers}, three quarters of the {} connections allowed",
            http.max_connections
        );
        http.max_subscribers = subscribers;
    }
    tracing::debug!(
        max_connections = http.max_connections,
        fd_limit,
        "connection cap"
    );
}

/// Connections the kernel queues before aliasd accepts them (capped by
/// `net.core.somaxconn`). tokio's default of 1,024 overflowed when a thousand
/// event subscribers connected at once: the dropped SYNs were retried a
/// second later.
const LISTEN_BACKLOG: u32 = 4096;

fn bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Registers the handlers for SIGINT and SIGTERM now, and returns a future
/// that completes when either arrives.
///
/// Registering before the server says it is listening matters: tokio installs
/// a signal handler only when the stream is created, and a SIGTERM that came
/// before that would meet the default action and kill the process uncleanly.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {},
                _ = terminate.recv() => {},
            }
            tracing::info!("shutting down");
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("shutting down");
        })
    }
}
