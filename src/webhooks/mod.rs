//! Webhooks (SPEC §9): every committed event that matches a webhook's
//! filters is POSTed to its URL as the event's JSON, signed as the Standard
//! Webhooks specification says, in seq order, at least once, from the event
//! log, so a restart, a crash or a receiver that is down loses nothing.
//!
//! Layout: this file is the manager ([`Webhooks`]: create, list, delete, the
//! delivery log, one worker task per webhook); `store.rs` keeps definitions
//! and cursors beside the journal with fsync; `worker.rs` is the delivery
//! loop (a `crate::feed::Subscription` from the webhook's cursor, retries
//! with backoff); `sign.rs` the signatures.
//!
//! Invariants: a worker is the only writer of its webhook's cursor and
//! writes it only after the deliveries it covers (at least once, never a
//! skip); each webhook has its own task, so a slow or dead receiver delays
//! no other webhook, no writer and no SSE subscriber (the feed's broadcast
//! never waits for a reader); no lock is held across an `.await`, and no
//! delivery waits on a file write (a webhook's cursor is written by a task
//! of its own). A URL that would reach this aliasd's own listener is refused
//! at creation and again before each connection (a name may come to
//! resolve to it, a restart may move the listener onto its port). The
//! delivery log (the last [`ATTEMPTS_KEPT`] attempts) is kept in memory
//! only: it starts empty after a restart.

pub mod sign;
pub mod store;
mod worker;

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{broadcast, watch};

use crate::event::EventType;
use crate::feed::{EventFilter, LiveBatch, Subscription};
use crate::log::SharedLog;
use crate::registry::Registry;
use sign::SigningKey;
use store::{StoredWebhook, WebhookDir};

/// Attempts kept per webhook for `GET /api/webhooks/{id}/deliveries`.
pub const ATTEMPTS_KEPT: usize = 100;

/// Webhooks at most (each is a task and a file).
const MAX_WEBHOOKS: usize = 1000;

/// The longest URL accepted.
const MAX_URL_LEN: usize = 2048;

/// How long a deletion waits for the webhook's worker to stop (it stops at
/// its next poll; this only bounds a worker that hangs).
const WORKER_STOP: Duration = Duration::from_secs(5);

/// How often the queue-lag gauges are refreshed.
const LAG_REFRESH: Duration = Duration::from_secs(1);

/// When deliveries are retried (SPEC §9); tests shorten it.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// The wait after the first failure; it doubles after each failure.
    pub first: Duration,
    /// The longest wait between attempts while not yet failing.
    pub max: Duration,
    /// After failing this long without a success, the webhook is `failing`.
    pub failing_after: Duration,
    /// The wait between attempts once `failing`.
    pub failing_every: Duration,
    /// An attempt with no answer within this has failed.
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            first: Duration::from_secs(1),
            max: Duration::from_secs(600),
            failing_after: Duration::from_secs(24 * 3600),
            failing_every: Duration::from_secs(3600),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Settings of the webhook manager.
#[derive(Debug, Clone)]
pub struct WebhooksConfig {
    /// The journal directory; definitions live in its `webhooks/`.
    pub journal_dir: PathBuf,
    /// The address aliasd listens on: a URL that reaches it is refused.
    pub listen: SocketAddr,
    /// When to retry.
    pub retry: RetryPolicy,
}

/// Why a webhook request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookError {
    /// The request is not acceptable; the message says why and what to send.
    #[error("{0}")]
    Invalid(String),
    /// No webhook has this id.
    #[error("no webhook {0}; list them with GET /api/webhooks")]
    NotFound(String),
    /// Too many webhooks already.
    #[error("too many webhooks ({MAX_WEBHOOKS}); delete some first")]
    TooMany,
    /// The definition could not be written or removed durably.
    #[error("writing the webhook's file failed: {0}")]
    Storage(String),
}

/// A webhook's state (SPEC §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookState {
    /// Delivering, or retrying for less than the failing threshold.
    Active,
    /// Every attempt has failed for longer than the threshold; retried hourly.
    Failing,
    /// Deleted: its worker has stopped.
    Disabled,
}

impl HookState {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            HookState::Active => "active",
            HookState::Failing => "failing",
            HookState::Disabled => "disabled",
        }
    }
}

/// One delivery attempt, as `GET /api/webhooks/{id}/deliveries` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    /// The event's seq.
    pub seq: u64,
    /// The receiver's status code, if it answered.
    pub status: Option<u16>,
    /// What went wrong, if it did.
    pub error: Option<String>,
    /// How long the attempt took.
    pub duration_ms: u64,
    /// When it started, RFC 3339 UTC.
    pub time: String,
}

/// A webhook as the API shows it; `secret` only in the answer to its creation.
#[derive(Debug, Clone, Serialize)]
pub struct WebhookView {
    /// Its id.
    pub id: String,
    /// Where events go.
    pub url: String,
    /// Wanted types; empty means all.
    pub types: Vec<String>,
    /// Wanted alias; null means all.
    pub alias: Option<String>,
    /// When it was created.
    pub created_at: String,
    /// Every event up to this seq was delivered (or filtered out).
    pub cursor: u64,
    /// `active`, `failing` or `disabled`.
    pub state: &'static str,
    /// `whsec_<base64>`, shown once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// A webhook to create.
#[derive(Debug, Clone, Default)]
pub struct NewWebhook {
    /// Where to POST.
    pub url: String,
    /// A secret of the caller's, or `None` to generate one.
    pub secret: Option<String>,
    /// Wanted types (wire names); empty means all.
    pub types: Vec<String>,
    /// Wanted alias.
    pub alias: Option<String>,
}

/// The webhook manager: a cheap handle (see the module docs).
#[derive(Clone)]
pub struct Webhooks(Arc<Shared>);

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks").finish_non_exhaustive()
    }
}

/// What the manager and its workers share.
pub(crate) struct Shared {
    dir: WebhookDir,
    listen: SocketAddr,
    pub(crate) retry: RetryPolicy,
    pub(crate) log: SharedLog,
    /// How far the index has applied the log: deliveries stop there.
    applied: crate::feed::AppliedSeq,
    /// A receiver of the live broadcast that is never read: workers
    /// `resubscribe` from it (it does not keep the channel open, and an
    /// unread receiver never slows the sender).
    live: Mutex<broadcast::Receiver<Arc<LiveBatch>>>,
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    /// The client for URLs on another port than the listener's (no address
    /// they resolve to can be this aliasd).
    client: reqwest::Client,
    /// The client for names on the listener's port: its resolver refuses a
    /// name that resolves to the listener ([`LoopGuard`]).
    guarded: reqwest::Client,
    /// Webhooks by id. Locked only to look up, insert or remove.
    hooks: Mutex<HashMap<String, Arc<Hook>>>,
    /// Worker tasks, for a clean stop at shutdown.
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// Where a webhook's URL connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// An address in the URL: fixed, checked as it is.
    Addr(SocketAddr),
    /// A name, on this port: what it resolves to is checked when connecting
    /// if the port is the listener's.
    Name(u16),
}

impl Target {
    fn of(url: &reqwest::Url) -> Target {
        let port = url.port_or_known_default().unwrap_or(80);
        let host = url.host_str().unwrap_or_default();
        // An IPv6 host comes in brackets.
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        match bare.parse::<IpAddr>() {
            Ok(ip) => Target::Addr(SocketAddr::new(ip, port)),
            Err(_) => Target::Name(port),
        }
    }
}

/// One webhook at run time.
pub(crate) struct Hook {
    pub(crate) id: String,
    pub(crate) url: String,
    /// Where `url` connects: checked against the listener before each attempt.
    target: Target,
    pub(crate) key: SigningKey,
    pub(crate) types: Vec<EventType>,
    alias: Option<String>,
    created_at: String,
    /// Cursor, state and the delivery log; locked briefly, never across an await.
    status: Mutex<HookStatus>,
    /// Set to stop the worker (delete, shutdown).
    stop: watch::Sender<bool>,
    /// Set once the worker has returned: after it, no POST is made.
    ended: watch::Sender<bool>,
    /// Asks the hook's persister task to write the file (cursor, state);
    /// requests made while it writes come down to one more write.
    pub(crate) persist_wanted: tokio::sync::Notify,
    /// Held while the file is written or removed; `true` once deleted, so a
    /// late cursor write cannot bring a deleted webhook's file back.
    file: Mutex<bool>,
}

struct HookStatus {
    cursor: u64,
    state: HookState,
    failing_since_ms: Option<u64>,
    attempts: VecDeque<Attempt>,
}

impl Webhooks {
    /// Loads the webhooks stored beside the journal and starts a worker for
    /// each. Call within the tokio runtime.
    ///
    /// # Errors
    ///
    /// The directory cannot be created or listed, or the HTTP client cannot be
    /// set up (a stored webhook that is not valid is skipped with a warning).
    pub fn start(config: WebhooksConfig, registry: &Registry) -> anyhow::Result<Webhooks> {
        use anyhow::Context;
        let dir = WebhookDir::open(&config.journal_dir).with_context(|| {
            format!(
                "creating {}",
                config.journal_dir.join(store::DIR_NAME).display()
            )
        })?;
        let stored = dir.load().context("reading the webhook definitions")?;
        let builder = || {
            reqwest::Client::builder()
                .user_agent(concat!("aliasd-webhooks/", env!("CARGO_PKG_VERSION")))
                .timeout(config.retry.timeout)
                .connect_timeout(config.retry.timeout)
                .redirect(reqwest::redirect::Policy::none())
                // Deliveries go straight to the receiver: an `http_proxy` set for
                // something else must not see them (or their signatures).
                .no_proxy()
        };
        let client = builder()
            .build()
            .context("setting up the webhook HTTP client")?;
        let guarded = builder()
            .dns_resolver(Arc::new(LoopGuard {
                listen: config.listen,
            }))
            .build()
            .context("setting up the webhook HTTP client")?;
        let webhooks = Webhooks(Arc::new(Shared {
            dir,
            listen: config.listen,
            retry: config.retry,
            log: registry.log().clone(),
            applied: registry.applied_seq(),
            live: Mutex::new(registry.subscribe()),
            metrics: registry.metrics().clone(),
            client,
            guarded,
            hooks: Mutex::default(),
            tasks: Mutex::default(),
        }));
        for record in stored {
            let id = record.id.clone();
            match Hook::from_stored(record) {
                Ok(hook) => webhooks.launch(Arc::new(hook)),
                Err(e) => tracing::warn!(
                    webhook = %id,
                    "webhook file in {} is not valid ({e}); skipped (fix or remove it)",
                    store::DIR_NAME
                ),
            }
        }
        let n_hooks = webhooks.0.hooks.lock().unwrap().len();
        if n_hooks > 0 {
            tracing::info!(webhooks = n_hooks, "webhooks resumed from their cursors");
        }
        tokio::spawn(refresh_lag(Arc::downgrade(&webhooks.0)));
        Ok(webhooks)
    }

    /// Creates a webhook, durably, and starts delivering what is committed
    /// after it. The answer is the only one that shows the secret.
    ///
    /// # Errors
    ///
    /// A bad URL, secret, type or alias, a URL that reaches this aliasd,
    /// too many webhooks, or the file could not be written.
    pub async fn create(&self, new: NewWebhook) -> Result<WebhookView, WebhookError> {
        let url = check_url(&new.url)?;
        refuse_loop(&url, self.0.listen).await?;
        let types = new
            .types
            .iter()
            .map(|t| {
                EventType::parse(t).ok_or_else(|| {
                    let known: Vec<&str> = EventType::ALL.iter().map(|k| k.as_str()).collect();
                    WebhookError::Invalid(format!(
                        "unknown event type {t:?}; use one of {}",
                        known.join(", ")
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(alias) = &new.alias {
            crate::name::ModelName::parse(alias)
                .map_err(|e| WebhookError::Invalid(format!("bad alias filter: {e}")))?;
        }
        let key = match &new.secret {
            Some(secret) => SigningKey::parse(secret).map_err(WebhookError::Invalid)?,
            None => SigningKey::generate().map_err(WebhookError::Storage)?,
        };
        if self.0.hooks.lock().unwrap().len() >= MAX_WEBHOOKS {
            return Err(WebhookError::TooMany);
        }
        let record = StoredWebhook {
            id: crate::event::new_id(),
            url: url.to_string(),
            secret: key.to_secret(),
            types: types.iter().map(|t| t.as_str().to_string()).collect(),
            alias: new.alias.clone(),
            created_at: crate::event::now_rfc3339(),
            // What is committed from now on; the subscription reads the log
            // after this, so nothing committed meanwhile is missed.
            cursor: self.0.log.last_seq(),
            state: HookState::Active.as_str().to_string(),
            failing_since: None,
        };
        let dir = self.0.dir.clone();
        let to_save = record.clone();
        tokio::task::spawn_blocking(move || dir.save(&to_save))
            .await
            .map_err(|e| WebhookError::Storage(e.to_string()))?
            .map_err(|e| WebhookError::Storage(e.to_string()))?;
        let secret = record.secret.clone();
        let hook = Arc::new(Hook::from_stored(record).map_err(WebhookError::Invalid)?);
        tracing::info!(webhook = %hook.id, url = %hook.url, "webhook created");
        let mut view = hook.view();
        view.secret = Some(secret);
        self.launch(hook);
        Ok(view)
    }

    /// Every webhook, oldest first (no secrets).
    pub fn list(&self) -> Vec<WebhookView> {
        let hooks: Vec<Arc<Hook>> = self.0.hooks.lock().unwrap().values().cloned().collect();
        let mut views: Vec<WebhookView> = hooks.iter().map(|h| h.view()).collect();
        views.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        views
    }

    /// One webhook (no secret).
    pub fn get(&self, id: &str) -> Option<WebhookView> {
        self.hook(id).map(|h| h.view())
    }

    /// The last attempts of a webhook, oldest first.
    pub fn deliveries(&self, id: &str) -> Option<Vec<Attempt>> {
        self.hook(id)
            .map(|h| h.status.lock().unwrap().attempts.iter().cloned().collect())
    }

    /// Deletes a webhook: its worker stops at once (an attempt in flight is
    /// abandoned, its connection closed; a retry is not made), and its file
    /// is removed. Returns the webhook as it was left: `disabled`, with the
    /// cursor it reached. When this returns, the worker has ended: no POST
    /// follows.
    ///
    /// # Errors
    ///
    /// No such webhook, or its file could not be removed.
    pub async fn delete(&self, id: &str) -> Result<WebhookView, WebhookError> {
        let hook = self
            .0
            .hooks
            .lock()
            .unwrap()
            .remove(id)
            .ok_or_else(|| WebhookError::NotFound(id.to_string()))?;
        hook.status.lock().unwrap().state = HookState::Disabled;
        hook.stop.send_replace(true);
        self.0.metrics.forget_webhook(&hook.id);
        let dir = self.0.dir.clone();
        let removing = hook.clone();
        tokio::task::spawn_blocking(move || {
            let mut deleted = removing.file.lock().unwrap();
            *deleted = true;
            dir.remove(&removing.id)
        })
        .await
        .map_err(|e| WebhookError::Storage(e.to_string()))?
        .map_err(|e| WebhookError::Storage(e.to_string()))?;
        // The worker stops at its next poll (an attempt in flight is dropped,
        // a wait cut short); wait for that, so that nothing is sent after
        // the answer. The bound only guards against a worker that hangs.
        let mut ended = hook.ended.subscribe();
        if tokio::time::timeout(WORKER_STOP, ended.wait_for(|ended| *ended))
            .await
            .is_err()
        {
            tracing::error!(webhook = %hook.id, "webhook worker did not stop within {WORKER_STOP:?} of its deletion");
        }
        tracing::info!(webhook = %hook.id, "webhook deleted");
        Ok(hook.view())
    }

    /// Stops every worker, each writing its cursor, waiting a few seconds at
    /// most. Called at shutdown.
    pub async fn shutdown(&self) {
        let hooks: Vec<Arc<Hook>> = self.0.hooks.lock().unwrap().values().cloned().collect();
        for hook in hooks {
            hook.stop.send_replace(true);
        }
        let tasks = std::mem::take(&mut *self.0.tasks.lock().unwrap());
        let all = futures_util::future::join_all(tasks);
        let _ = tokio::time::timeout(Duration::from_secs(3), all).await;
    }

    fn hook(&self, id: &str) -> Option<Arc<Hook>> {
        self.0.hooks.lock().unwrap().get(id).cloned()
    }

    /// Registers `hook` and spawns its worker.
    fn launch(&self, hook: Arc<Hook>) {
        let live = self.0.live.lock().unwrap().resubscribe();
        let cursor = hook.cursor();
        let filter = EventFilter::new(hook.alias.as_deref(), None);
        let subscription = Subscription::new(
            self.0.log.clone(),
            live,
            filter,
            Some(cursor),
            self.0.applied.clone(),
        );
        self.0
            .metrics
            .set_webhook_lag(&hook.id, self.0.log.last_seq().saturating_sub(cursor));
        self.0
            .hooks
            .lock()
            .unwrap()
            .insert(hook.id.clone(), hook.clone());
        let task = tokio::spawn(worker::run(self.0.clone(), hook, subscription));
        let mut tasks = self.0.tasks.lock().unwrap();
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }
}

impl Hook {
    fn from_stored(record: StoredWebhook) -> Result<Hook, String> {
        let key = SigningKey::parse(&record.secret)?;
        let target =
            Target::of(&reqwest::Url::parse(&record.url).map_err(|e| format!("bad url ({e})"))?);
        let types = record
            .types
            .iter()
            .map(|t| EventType::parse(t).ok_or_else(|| format!("unknown event type {t:?}")))
            .collect::<Result<Vec<_>, _>>()?;
        let state = if record.state == HookState::Failing.as_str() {
            HookState::Failing
        } else {
            HookState::Active
        };
        Ok(Hook {
            id: record.id,
            url: record.url,
            target,
            key,
            types,
            alias: record.alias,
            created_at: record.created_at,
            status: Mutex::new(HookStatus {
                cursor: record.cursor,
                state,
                failing_since_ms: record.failing_since,
                attempts: VecDeque::new(),
            }),
            stop: watch::channel(false).0,
            ended: watch::channel(false).0,
            persist_wanted: tokio::sync::Notify::new(),
            file: Mutex::new(false),
        })
    }

    fn view(&self) -> WebhookView {
        let status = self.status.lock().unwrap();
        WebhookView {
            id: self.id.clone(),
            url: self.url.clone(),
            types: self.types.iter().map(|t| t.as_str().to_string()).collect(),
            alias: self.alias.clone(),
            created_at: self.created_at.clone(),
            cursor: status.cursor,
            state: status.state.as_str(),
            secret: None,
        }
    }

    /// Whether this webhook wants events of `kind` (its alias filter is the
    /// subscription's).
    pub(crate) fn wants(&self, kind: EventType) -> bool {
        self.types.is_empty() || self.types.contains(&kind)
    }

    pub(crate) fn cursor(&self) -> u64 {
        self.status.lock().unwrap().cursor
    }

    pub(crate) fn set_cursor(&self, cursor: u64) {
        let mut status = self.status.lock().unwrap();
        status.cursor = status.cursor.max(cursor);
    }

    /// Completes once the webhook is deleted or the server stops.
    pub(crate) async fn stopped(&self) {
        let mut stop = self.stop.subscribe();
        let _ = stop.wait_for(|stop| *stop).await;
    }

    pub(crate) fn is_stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Marks the worker as ended (no POST follows); see [`Webhooks::delete`].
    pub(crate) fn mark_ended(&self) {
        self.ended.send_replace(true);
    }

    /// Asks for the file to be written soon, by the persister task, without
    /// waiting for it.
    pub(crate) fn persist_soon(&self) {
        self.persist_wanted.notify_one();
    }

    /// Adds an attempt to the delivery log, dropping the oldest past
    /// [`ATTEMPTS_KEPT`].
    pub(crate) fn record(&self, attempt: Attempt) {
        let mut status = self.status.lock().unwrap();
        if status.attempts.len() == ATTEMPTS_KEPT {
            status.attempts.pop_front();
        }
        status.attempts.push_back(attempt);
    }

    /// A delivery succeeded: back to `active`. Returns whether that changed
    /// what is stored (the file should be written).
    pub(crate) fn succeeded(&self) -> bool {
        let mut status = self.status.lock().unwrap();
        let changed = status.failing_since_ms.is_some() || status.state == HookState::Failing;
        status.failing_since_ms = None;
        if status.state == HookState::Failing {
            status.state = HookState::Active;
        }
        changed
    }

    /// An attempt failed at `now_ms`: returns since when attempts have been
    /// failing, and whether that is news (the file should be written).
    pub(crate) fn failed(&self, now_ms: u64) -> (u64, bool) {
        let mut status = self.status.lock().unwrap();
        match status.failing_since_ms {
            Some(since) => (since, false),
            None => {
                status.failing_since_ms = Some(now_ms);
                (now_ms, true)
            }
        }
    }

    /// Marks the webhook `failing`; returns whether it was not already.
    pub(crate) fn mark_failing(&self) -> bool {
        let mut status = self.status.lock().unwrap();
        let news = status.state == HookState::Active;
        if news {
            status.state = HookState::Failing;
        }
        news
    }

    /// The record to store now.
    fn stored(&self) -> StoredWebhook {
        let status = self.status.lock().unwrap();
        StoredWebhook {
            id: self.id.clone(),
            url: self.url.clone(),
            secret: self.key.to_secret(),
            types: self.types.iter().map(|t| t.as_str().to_string()).collect(),
            alias: self.alias.clone(),
            created_at: self.created_at.clone(),
            cursor: status.cursor,
            state: match status.state {
                HookState::Failing => HookState::Failing,
                _ => HookState::Active,
            }
            .as_str()
            .to_string(),
            failing_since: status.failing_since_ms,
        }
    }
}

impl Shared {
    /// The client to deliver `hook`'s events with, or why none may be made:
    /// its URL reaches this aliasd's own listener (a loop).
    pub(crate) fn client_for(&self, hook: &Hook) -> Result<&reqwest::Client, String> {
        match hook.target {
            Target::Addr(addr) if reaches_listener(addr, self.listen) => {
                Err(loop_error(&addr.to_string(), addr, self.listen))
            }
            Target::Name(port) if port == self.listen.port() => Ok(&self.guarded),
            Target::Addr(_) | Target::Name(_) => Ok(&self.client),
        }
    }

    /// Writes `hook`'s file (cursor and state) unless it was deleted; on a
    /// blocking thread. Returns the cursor written.
    pub(crate) async fn persist(&self, hook: &Arc<Hook>) -> Option<u64> {
        let dir = self.dir.clone();
        let hook = hook.clone();
        let written = tokio::task::spawn_blocking(move || {
            let deleted = hook.file.lock().unwrap();
            if *deleted {
                return Ok(None);
            }
            let record = hook.stored();
            dir.save(&record).map(|()| Some(record.cursor))
        })
        .await;
        match written {
            Ok(Ok(cursor)) => cursor,
            Ok(Err(e)) => {
                tracing::error!("writing a webhook's cursor failed (it is retried): {e}");
                None
            }
            Err(_) => None,
        }
    }
}

/// Keeps the queue-lag gauges (seq behind head) current while the manager lives.
async fn refresh_lag(shared: std::sync::Weak<Shared>) {
    let mut ticks = tokio::time::interval(LAG_REFRESH);
    loop {
        ticks.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let head = shared.log.last_seq();
        let hooks: Vec<Arc<Hook>> = shared.hooks.lock().unwrap().values().cloned().collect();
        for hook in hooks {
            shared
                .metrics
                .set_webhook_lag(&hook.id, head.saturating_sub(hook.cursor()));
        }
    }
}

/// A URL a webhook may have: `http` or `https`, with a host, no credentials.
fn check_url(url: &str) -> Result<reqwest::Url, WebhookError> {
    if url.len() > MAX_URL_LEN {
        return Err(WebhookError::Invalid(format!(
            "url is over {MAX_URL_LEN} bytes; use a shorter one"
        )));
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| {
        WebhookError::Invalid(format!(
            "url {url:?} is not a URL ({e}); send http://host[:port]/path or https://..."
        ))
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(WebhookError::Invalid(format!(
            "url scheme {:?} is not supported; use http:// or https://",
            parsed.scheme()
        )));
    }
    if parsed.host().is_none() {
        return Err(WebhookError::Invalid("url has no host".to_string()));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(WebhookError::Invalid(
            "url must not carry a user name or password; receivers verify the signature instead"
                .to_string(),
        ));
    }
    Ok(parsed)
}

/// Refuses a URL that resolves to this aliasd's own listener, where a
/// delivery would come back as a request to aliasd (a loop).
async fn refuse_loop(url: &reqwest::Url, listen: SocketAddr) -> Result<(), WebhookError> {
    let port = url.port_or_known_default().unwrap_or(80);
    let host = url.host_str().unwrap_or_default();
    // An IPv6 host comes in brackets.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((bare, port))
            .await
            .map_err(|e| {
                WebhookError::Invalid(format!("cannot resolve {bare} ({e}); check the url's host"))
            })?
            .collect(),
    };
    match addrs.iter().find(|addr| reaches_listener(**addr, listen)) {
        Some(addr) => Err(WebhookError::Invalid(format!(
            "url reaches this aliasd itself ({addr}, listening on {listen}): deliveries would loop back into it; use the receiver's address"
        ))),
        None => Ok(()),
    }
}

/// Why a delivery to `host` (reaching `addr`) is not made.
fn loop_error(host: &str, addr: SocketAddr, listen: SocketAddr) -> String {
    format!(
        "{host} reaches this aliasd itself ({addr}, listening on {listen}): the delivery would loop back into it; point the webhook at the receiver (delete it and add it again)"
    )
}

/// The resolver of the client for names on the listener's port: it resolves
/// as the system does and refuses a name any of whose addresses is the
/// listener's, before a connection is made.
struct LoopGuard {
    listen: SocketAddr,
}

impl reqwest::dns::Resolve for LoopGuard {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let listen = self.listen;
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), listen.port()))
                .await?
                .collect();
            let addrs = refuse_listener(&host, addrs, listen)?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// `addrs`, which `host` resolved to on the listener's port, unless one of
/// them reaches the listener.
fn refuse_listener(
    host: &str,
    addrs: Vec<SocketAddr>,
    listen: SocketAddr,
) -> Result<Vec<SocketAddr>, String> {
    match addrs.iter().find(|addr| reaches_listener(**addr, listen)) {
        Some(addr) => Err(loop_error(host, *addr, listen)),
        None => Ok(addrs),
    }
}

/// Whether connecting to `addr` reaches a listener on `listen`: same port,
/// and the same address, or a loopback (or unspecified) address when
/// listening on loopback, or any address of this machine when listening on
/// every address.
fn reaches_listener(addr: SocketAddr, listen: SocketAddr) -> bool {
    if addr.port() != listen.port() {
        return false;
    }
    let ip = addr.ip().to_canonical();
    let listen_ip = listen.ip().to_canonical();
    if ip == listen_ip || ip.is_unspecified() {
        return true;
    }
    if listen_ip.is_loopback() {
        return ip.is_loopback();
    }
    if listen_ip.is_unspecified() {
        // An address this machine can bind is one of its own.
        return ip.is_loopback() || std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_addresses_are_recognized() {
        let check = |addr: &str, listen: &str, expected: bool| {
            let (addr, listen): (SocketAddr, SocketAddr) =
                (addr.parse().unwrap(), listen.parse().unwrap());
            assert_eq!(
                reaches_listener(addr, listen),
                expected,
                "{addr} vs {listen}"
            );
        };
        check("127.0.0.1:11435", "127.0.0.1:11435", true);
        check("127.0.0.2:11435", "127.0.0.1:11435", true);
        check("[::ffff:127.0.0.1]:11435", "127.0.0.1:11435", true);
        check("0.0.0.0:11435", "127.0.0.1:11435", true);
        check("127.0.0.1:11435", "0.0.0.0:11435", true);
        check("127.0.0.1:8080", "127.0.0.1:11435", false);
        check("192.0.2.7:11435", "127.0.0.1:11435", false);
        check("192.0.2.7:11435", "0.0.0.0:11435", false);
    }

    #[test]
    fn names_resolving_to_the_listener_are_refused_when_connecting() {
        let listen: SocketAddr = "127.0.0.1:11435".parse().unwrap();
        let addrs = |list: &[&str]| -> Vec<SocketAddr> {
            list.iter().map(|a| a.parse().unwrap()).collect()
        };
        // A name that has come to resolve to the listener (among others).
        let refused = refuse_listener(
            "hooks.example",
            addrs(&["192.0.2.7:11435", "127.0.0.1:11435"]),
            listen,
        )
        .unwrap_err();
        assert!(
            refused.contains("hooks.example reaches this aliasd itself"),
            "{refused}"
        );
        assert!(refused.contains("127.0.0.1:11435"), "{refused}");
        assert_eq!(
            refuse_listener("hooks.example", addrs(&["192.0.2.7:11435"]), listen).unwrap(),
            addrs(&["192.0.2.7:11435"])
        );
        // Which client a URL takes: the guarded one only on the listener's port.
        let target = |url: &str| Target::of(&reqwest::Url::parse(url).unwrap());
        assert_eq!(target("http://hooks.example/x"), Target::Name(80));
        assert_eq!(target("https://hooks.example/x"), Target::Name(443));
        assert_eq!(
            target("http://[::1]:9/"),
            Target::Addr("[::1]:9".parse().unwrap())
        );
    }

    #[tokio::test]
    async fn the_guarded_resolver_refuses_localhost_on_a_loopback_listener() {
        use reqwest::dns::Resolve;
        let guard = LoopGuard {
            listen: "127.0.0.1:11435".parse().unwrap(),
        };
        let error = match guard.resolve("localhost".parse().unwrap()).await {
            Ok(addrs) => panic!("resolved: {:?}", addrs.collect::<Vec<_>>()),
            Err(e) => e.to_string(),
        };
        assert!(
            error.contains("localhost reaches this aliasd itself"),
            "{error}"
        );
    }

    #[test]
    fn urls_are_checked() {
        assert!(check_url("http://127.0.0.1:9000/hook").is_ok());
        assert!(check_url("https://example.com/x?y=1").is_ok());
        for bad in ["ftp://example.com/", "not a url", "http://u:p@example.com/"] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }
}
