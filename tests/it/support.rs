//! Test support: a temporary Ollama model store, the real `aliasd` binary
//! serving it on a free loopback port ([`Server`]; [`Server::builder`] for
//! flags, environment, a journal directory of the test's or an open-file
//! limit, restarts after a stop or a `kill -9`, starts that must be refused),
//! a tiny HTTP/1.1 client that can send any header and body and returns
//! status, headers and JSON, an SSE client ([`sse`]), a tmpfs to fill, and
//! the journal's files and commands.
//!
//! Every test builds its own store, journal and server; nothing is shared.

#![allow(dead_code)] // Each test module uses a different part of this.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

pub mod nats;
pub mod sse;

/// How long a server may take to start or stop, or to answer one request:
/// a bound against a hang. A start-up that reconciles thousands of aliases
/// on a loaded 2-core machine took over 10 s.
const DEADLINE: Duration = Duration::from_secs(60);

/// How long any single expected thing may take (an event, a refusal to
/// start): a generous bound that only guards against a hang.
pub const WAIT: Duration = Duration::from_secs(20);

/// The fields every event carries (SPEC §4, and `node` from §8: null on a
/// single host); `prefix_matching` is an extra.
pub const EVENT_FIELDS: [&str; 11] = [
    "seq",
    "id",
    "time",
    "type",
    "alias",
    "target",
    "previous_target",
    "digest",
    "actor",
    "request_id",
    "node",
];

/// Environment variables that would change what the binary does.
const ALIASD_ENV: &[&str] = &[
    "ALIASD_HOST",
    "ALIASD_TOKEN",
    "ALIASD_TOKENS",
    "ALIASD_READ_TOKENS",
    "ALIASD_LISTEN",
    "ALIASD_JOURNAL",
    "ALIASD_POLL_MS",
    "ALIASD_CORS_ORIGINS",
    "ALIASD_HEADER_TIMEOUT_MS",
    "ALIASD_IDLE_TIMEOUT_MS",
    "ALIASD_NATS",
    "ALIASD_FLEET",
    "ALIASD_NODE",
    "ALIASD_NATS_TOKEN",
    "OLLAMA_MODELS",
];

/// The `aliasd` binary under test.
pub fn aliasd_bin() -> &'static str {
    env!("CARGO_BIN_EXE_aliasd")
}

/// A fresh `aliasd` command with none of the caller's aliasd settings.
pub fn aliasd() -> Command {
    let mut command = Command::new(aliasd_bin());
    for var in ALIASD_ENV {
        command.env_remove(var);
    }
    command
}

/// Polls `f` every 10 ms until it returns `Some`, for at most `within`.
#[track_caller]
pub fn wait_for<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = f() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `sha256:<hex>` of a manifest's bytes.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", aliasd::digest::sha256_hex(bytes))
}

/// `manifests/registry.ollama.ai/<namespace>/<model>/<tag>` for `[namespace/]model[:tag]`.
fn manifest_rel_path(name: &str) -> PathBuf {
    let (path, tag) = match name.rsplit_once(':') {
        Some((path, tag)) => (path, tag),
        None => (name, "latest"),
    };
    let (namespace, model) = match path.split_once('/') {
        Some((namespace, model)) => (namespace, model),
        None => ("library", path),
    };
    assert!(
        !model.contains('/'),
        "test names are [namespace/]model[:tag], not {name:?}"
    );
    ["manifests", "registry.ollama.ai", namespace, model, tag]
        .iter()
        .collect()
}

/// Every regular file under `dir`, by path relative to `dir`, with its bytes.
pub fn files_under(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let path = entry.expect("read_dir entry").path();
            let kind = std::fs::symlink_metadata(&path).expect("stat").file_type();
            if kind.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).expect("under root").to_path_buf();
                out.insert(rel, std::fs::read(&path).expect("read file"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// A model store laid out like Ollama's, in a temporary directory.
///
/// The store is `<base>/models`, so that tests can check nothing was written
/// next to it either. Clones share the directory (for servers started one
/// after another on the same store); it goes with the last of them.
#[derive(Clone)]
pub struct TestStore {
    base: Arc<TempDir>,
}

impl Default for TestStore {
    fn default() -> TestStore {
        TestStore::new()
    }
}

impl TestStore {
    /// An empty store: `manifests/` and `blobs/`.
    pub fn new() -> TestStore {
        TestStore::new_in(&std::env::temp_dir())
    }

    /// An empty store in a new directory under `parent` (a small file system, say).
    pub fn new_in(parent: &Path) -> TestStore {
        let base = tempfile::Builder::new()
            .prefix("aliasd-it-store")
            .tempdir_in(parent)
            .expect("tempdir");
        let store = TestStore {
            base: Arc::new(base),
        };
        std::fs::create_dir_all(store.root().join("manifests")).expect("mkdir manifests");
        std::fs::create_dir_all(store.root().join("blobs")).expect("mkdir blobs");
        store
    }

    /// A store with these models.
    pub fn with_models(names: &[&str]) -> TestStore {
        let store = TestStore::new();
        for name in names {
            store.add_model(name);
        }
        store
    }

    /// The directory holding the store (and nothing else).
    pub fn base(&self) -> &Path {
        self.base.path()
    }

    /// The store's root, given to `--models`.
    pub fn root(&self) -> PathBuf {
        self.base.path().join("models")
    }

    /// Where the manifest of `[namespace/]model[:tag]` lives.
    pub fn manifest_path(&self, name: &str) -> PathBuf {
        self.root().join(manifest_rel_path(name))
    }

    /// The manifest at `name`'s path, if there is a file.
    pub fn read(&self, name: &str) -> Option<Vec<u8>> {
        match std::fs::read(self.manifest_path(name)) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => panic!("reading {name}: {e}"),
        }
    }

    /// Writes a blob and returns its digest, `sha256:<hex>`.
    fn add_blob(&self, content: &[u8]) -> String {
        let hex = aliasd::digest::sha256_hex(content);
        let path = self.root().join("blobs").join(format!("sha256-{hex}"));
        std::fs::write(path, content).expect("write blob");
        format!("sha256:{hex}")
    }

    /// Adds a model as `ollama pull` would: a config blob, a weights blob, and
    /// a manifest with an extra field aliasd must copy verbatim. Returns the
    /// manifest bytes.
    pub fn add_model(&self, name: &str) -> Vec<u8> {
        self.add_model_version(name, 1)
    }

    /// Like [`TestStore::add_model`], with different blobs per `version` (a re-pull).
    pub fn add_model_version(&self, name: &str, version: u32) -> Vec<u8> {
        let config = format!(r#"{{"model_format":"gguf","model":{name:?},"version":{version}}}"#);
        let weights = format!("GGUF weights of {name}, version {version}").repeat(3);
        let config_digest = self.add_blob(config.as_bytes());
        let weights_digest = self.add_blob(weights.as_bytes());
        let manifest = format!(
            concat!(
                r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","#,
                r#""config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{}","size":{}}},"#,
                r#""layers":[{{"mediaType":"application/vnd.ollama.image.model","digest":"{}","size":{}}}],"#,
                r#""annotations":{{"x":"y","model":{:?}}}}}"#
            ),
            config_digest,
            config.len(),
            weights_digest,
            weights.len(),
            name
        );
        let path = self.manifest_path(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir model");
        std::fs::write(&path, manifest.as_bytes()).expect("write manifest");
        manifest.into_bytes()
    }

    /// The size Ollama shows for `add_model_version(name, version)`: config plus layers.
    pub fn model_size(name: &str, version: u32) -> u64 {
        let config = format!(r#"{{"model_format":"gguf","model":{name:?},"version":{version}}}"#);
        let weights = format!("GGUF weights of {name}, version {version}").repeat(3);
        (config.len() + weights.len()) as u64
    }

    /// Removes a model's manifest, as `ollama rm` would (blobs stay).
    pub fn remove_model(&self, name: &str) {
        std::fs::remove_file(self.manifest_path(name)).expect("remove manifest");
    }

    /// Every file in the store with its bytes.
    pub fn snapshot(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        files_under(&self.root())
    }

    /// Every file in the base directory (the store and anything beside it).
    pub fn snapshot_base(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        files_under(self.base())
    }

    /// Gives the store's root and its directories down to
    /// `manifests/registry.ollama.ai/library` to `uid` (user and group), as
    /// Ollama's store belongs to `ollama`. Needs root.
    #[cfg(unix)]
    pub fn give_to(&self, uid: u32) {
        for dir in [
            "",
            "manifests",
            "manifests/registry.ollama.ai",
            "manifests/registry.ollama.ai/library",
        ] {
            std::os::unix::fs::chown(self.root().join(dir), Some(uid), Some(uid)).expect("chown");
        }
    }
}

/// Asserts that this process runs as root: a test of what aliasd does as
/// root, or one that mounts a file system, needs it (CI runs as root).
#[cfg(unix)]
#[track_caller]
pub fn assert_root(why: &str) {
    // A file this process makes belongs to its effective user.
    use std::os::unix::fs::MetadataExt;
    let probe = tempfile::NamedTempFile::new().expect("tempfile");
    let uid = probe.as_file().metadata().expect("stat").uid();
    assert_eq!(uid, 0, "this test needs root: {why} (CI runs as root)");
}

/// A response as the tests see it.
pub struct Resp {
    /// The status code.
    pub status: u16,
    /// Header names (lowercase) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
    /// The body as JSON, `Null` if it is not JSON.
    pub json: Value,
}

impl std::fmt::Debug for Resp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "HTTP {} {:?} {}",
            self.status,
            self.headers,
            shorten(&String::from_utf8_lossy(&self.body))
        )
    }
}

impl Resp {
    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Asserts the status and that the body is JSON; returns it.
    #[track_caller]
    pub fn expect(&self, status: u16) -> &Value {
        assert_eq!(self.status, status, "{self:?}");
        assert!(
            self.header("content-type")
                .is_some_and(|v| v.starts_with("application/json")),
            "not JSON: {self:?}"
        );
        &self.json
    }

    /// Asserts an error: this status, the body exactly `{"error": "<message>"}`
    /// with a message containing `fragment` (case-insensitive). Returns the message.
    #[track_caller]
    pub fn expect_error(&self, status: u16, fragment: &str) -> String {
        let json = self.expect(status);
        let object = json.as_object().unwrap_or_else(|| panic!("{self:?}"));
        assert_eq!(object.len(), 1, "error body has other keys: {self:?}");
        let message = object["error"]
            .as_str()
            .unwrap_or_else(|| panic!("error is not a string: {self:?}"));
        assert!(!message.is_empty(), "{self:?}");
        assert!(
            message.to_lowercase().contains(&fragment.to_lowercase()),
            "error {:?} does not mention {fragment:?}",
            shorten(message)
        );
        message.to_string()
    }
}

/// At most 500 characters of `text`, for failure messages.
fn shorten(text: &str) -> String {
    match text.char_indices().nth(500) {
        Some((end, _)) => format!("{}... ({} bytes)", &text[..end], text.len()),
        None => text.to_string(),
    }
}

/// Sends one HTTP/1.1 request (`Connection: close`) and reads the whole response.
///
/// `headers` are sent as given; `Content-Length` is added for a body.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Resp {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    stream.set_write_timeout(Some(DEADLINE)).expect("timeout");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).expect("write head");
    if let Some(body) = body {
        // The server may answer (413) and close before reading it all.
        let _ = stream.write_all(body);
    }
    let mut raw = Vec::new();
    if let Err(e) = stream.read_to_end(&mut raw) {
        // A reset after the response arrived (unread request body) is fine.
        assert!(
            !raw.is_empty(),
            "{method} {path}: reading the response: {e}"
        );
    }
    parse_response(&raw).unwrap_or_else(|| {
        panic!(
            "{method} {path}: not an HTTP response: {:?}",
            String::from_utf8_lossy(&raw)
        )
    })
}

/// Parses a whole HTTP/1.1 response as [`http`] reads it.
pub fn parse_response(raw: &[u8]) -> Option<Resp> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    if chunked {
        body = dechunk(&body)?;
    }
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    Some(Resp {
        status,
        headers,
        body,
        json,
    })
}

fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&raw[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(raw.get(..size)?);
        raw = raw.get(size + 2..)?;
    }
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// What every start of a server is given besides its store and journal.
#[derive(Debug, Default)]
struct Launch {
    /// Extra `serve` flags.
    args: Vec<String>,
    /// Extra environment variables.
    env: Vec<(String, String)>,
    /// An open-file limit, soft and hard.
    fd_limit: Option<u32>,
}

impl Launch {
    /// `aliasd serve` on this store and journal, listening on `listen`, its
    /// stderr into `log`.
    fn command(&self, store: &Path, journal: &Path, listen: &str, log: &Path) -> Command {
        let mut command = match self.fd_limit {
            None => Command::new(aliasd_bin()),
            Some(limit) => {
                // The shell sets the limit, soft and hard so that aliasd
                // cannot raise it, then becomes aliasd.
                let mut shell = Command::new("sh");
                shell
                    .arg("-c")
                    .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
                    .arg(aliasd_bin());
                shell
            }
        };
        for var in ALIASD_ENV {
            command.env_remove(var);
        }
        command
            .arg("serve")
            .arg("--models")
            .arg(store)
            .arg("--journal")
            .arg(journal)
            .arg("--listen")
            .arg(listen)
            .args(&self.args)
            .env("ALIASD_LOG", "debug")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("create log"));
        command
    }
}

/// A new temporary directory.
pub fn tempdir(prefix: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("tempdir")
}

/// What an `aliasd serve` that refused to start said.
#[derive(Debug)]
pub struct Refused {
    /// Its exit code.
    pub code: Option<i32>,
    /// What it wrote to stderr.
    pub stderr: String,
}

/// Runs `command`, which must exit on its own in time; returns its exit code
/// and what it wrote into `log`.
fn run_refused(mut command: Command, log: &Path) -> Refused {
    let child = command.spawn().expect("spawn aliasd serve");
    let Some(status) = wait_or_kill(child, WAIT) else {
        panic!(
            "aliasd serve was still running after {WAIT:?}; it should have refused to start:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    };
    Refused {
        code: status.code(),
        stderr: std::fs::read_to_string(log).expect("read log"),
    }
}

/// Waits for `child` to exit for at most `limit`; kills it and returns
/// `None` if it is still running then (a test must fail, not hang).
pub fn wait_or_kill(
    mut child: std::process::Child,
    limit: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How a [`Server`] starts: `Server::builder(store).args(..).env(..).journal(dir).start()`.
pub struct ServerBuilder {
    store: TestStore,
    journal: Option<PathBuf>,
    launch: Launch,
}

impl ServerBuilder {
    /// Extra `serve` flags.
    pub fn args(mut self, args: &[&str]) -> ServerBuilder {
        self.launch.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// An environment variable for the server.
    pub fn env(mut self, key: &str, value: &str) -> ServerBuilder {
        self.launch.env.push((key.to_string(), value.to_string()));
        self
    }

    /// The journal in `dir`, which the test owns (it need not exist yet);
    /// without this, a new temporary directory.
    pub fn journal(mut self, dir: &Path) -> ServerBuilder {
        self.journal = Some(dir.to_path_buf());
        self
    }

    /// Runs the server under this open-file limit (soft and hard).
    pub fn fd_limit(mut self, limit: u32) -> ServerBuilder {
        self.launch.fd_limit = Some(limit);
        self
    }

    /// Starts the server and waits until it answers.
    pub fn start(self) -> Server {
        let (journal, journal_tmp) = match self.journal {
            Some(dir) => (dir, None),
            None => {
                let tmp = tempdir("aliasd-it-journal");
                (tmp.path().to_path_buf(), Some(tmp))
            }
        };
        let mut server = Server {
            store: self.store,
            journal,
            _journal_tmp: journal_tmp,
            logs: tempdir("aliasd-it-logs"),
            launch: self.launch,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            child: None,
            starts: 0,
        };
        server.spawn();
        server
    }

    /// Runs the server expecting it to refuse to start (exit on its own,
    /// before it is ready); returns what it said.
    pub fn start_refused(self) -> Refused {
        let journal_tmp = tempdir("aliasd-it-journal");
        let journal = self.journal.unwrap_or_else(|| journal_tmp.path().into());
        let logs = tempdir("aliasd-it-logs");
        let log = logs.path().join("stderr.log");
        let command = self
            .launch
            .command(&self.store.root(), &journal, "127.0.0.1:0", &log);
        run_refused(command, &log)
    }
}

/// The real `aliasd serve`, on its own store, journal and port; killed on drop.
pub struct Server {
    /// The model store it serves.
    pub store: TestStore,
    journal: PathBuf,
    /// The journal's directory when the test chose none.
    _journal_tmp: Option<TempDir>,
    logs: TempDir,
    launch: Launch,
    addr: SocketAddr,
    child: Option<Child>,
    starts: u32,
}

impl Server {
    /// How to start a server on `store` with flags, environment, a journal
    /// directory of the test's or an open-file limit.
    pub fn builder(store: TestStore) -> ServerBuilder {
        ServerBuilder {
            store,
            journal: None,
            launch: Launch::default(),
        }
    }

    /// Starts a server on a store holding these models.
    pub fn with_models(names: &[&str]) -> Server {
        Server::start(TestStore::with_models(names))
    }

    /// Starts a server on `store` with a new journal.
    pub fn start(store: TestStore) -> Server {
        Server::builder(store).start()
    }

    /// Starts a server on `store` with a new journal and extra `serve` flags.
    pub fn start_with_args(store: TestStore, args: &[&str]) -> Server {
        Server::builder(store).args(args).start()
    }

    /// The journal directory.
    pub fn journal_dir(&self) -> &Path {
        &self.journal
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:<port>`, for `--host`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    fn log_path(&self, start: u32) -> PathBuf {
        self.logs.path().join(format!("stderr-{start}.log"))
    }

    /// What the server has written to stderr since its last start.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.log_path(self.starts)).unwrap_or_default()
    }

    /// What every start of the server has written to stderr.
    pub fn all_stderr(&self) -> String {
        (1..=self.starts)
            .map(|start| std::fs::read_to_string(self.log_path(start)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Spawns the binary on a free port and waits until `/healthz` answers;
    /// picks another port if the one chosen was taken meanwhile.
    fn spawn(&mut self) {
        assert!(self.child.is_none(), "already running");
        for _attempt in 0..5 {
            self.starts += 1;
            self.addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let mut command = self.launch.command(
                &self.store.root(),
                &self.journal,
                &self.addr.to_string(),
                &self.log_path(self.starts),
            );
            self.child = Some(command.spawn().expect("spawn aliasd serve"));
            match self.wait_ready() {
                Ok(()) => return,
                Err(status) => {
                    self.child = None;
                    let stderr = self.stderr();
                    if stderr.contains("cannot listen") {
                        continue;
                    }
                    panic!("aliasd serve exited with {status} before it was ready:\n{stderr}");
                }
            }
        }
        panic!("could not find a free port for aliasd serve");
    }

    /// Polls `/healthz` until it answers 200; `Err` if the process exited first.
    fn wait_ready(&mut self) -> Result<(), std::process::ExitStatus> {
        let deadline = Instant::now() + DEADLINE;
        // The log line proves this child, not another process, holds the port.
        let listening = format!("listening on http://{}", self.addr);
        loop {
            let child = self.child.as_mut().expect("running");
            if let Some(status) = child.try_wait().expect("try_wait") {
                return Err(status);
            }
            if self.stderr().contains(&listening) && self.get("/healthz").status == 200 {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "aliasd serve not ready after {DEADLINE:?}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the server gracefully (SIGTERM) and asserts it exits 0 in time.
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                assert!(
                    status.success(),
                    "aliasd exited with {status} on SIGTERM:\n{}",
                    self.stderr()
                );
                return;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "aliasd did not stop within {DEADLINE:?} of SIGTERM:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server with SIGKILL: no chance to clean up, as in a crash.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("kill -9");
        child.wait().expect("wait");
    }

    /// Starts the server again on the same store and journal (after
    /// [`Server::stop`] or [`Server::kill9`]).
    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// Stops and starts again.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Runs another `aliasd serve` on this server's store and journal, with
    /// its flags, expecting it to refuse to start (a journal in use or
    /// damaged); returns what it said.
    pub fn refused_start(&self) -> Refused {
        let log = self.logs.path().join("refused.log");
        let command = self
            .launch
            .command(&self.store.root(), &self.journal, "127.0.0.1:0", &log);
        run_refused(command, &log)
    }

    /// Any request.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Resp {
        http(self.addr, method, path, headers, body)
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Resp {
        self.request("GET", path, &[], None)
    }

    /// `method path` with a JSON body.
    pub fn send_json(&self, method: &str, path: &str, body: &Value) -> Resp {
        self.send_json_with(method, path, &[], body)
    }

    /// `method path` with a JSON body and extra headers.
    pub fn send_json_with(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &Value,
    ) -> Resp {
        let mut all = vec![("Content-Type", "application/json")];
        all.extend_from_slice(headers);
        self.request(method, path, &all, Some(body.to_string().as_bytes()))
    }

    /// `DELETE path`.
    pub fn delete(&self, path: &str) -> Resp {
        self.request("DELETE", path, &[], None)
    }

    /// `PUT /api/aliases/{alias}` with `{"target"}`.
    pub fn put_alias(&self, alias: &str, target: &str) -> Resp {
        self.send_json(
            "PUT",
            &alias_path(alias),
            &serde_json::json!({ "target": target }),
        )
    }

    /// Creates or retargets an alias, asserting success; returns the Alias body.
    #[track_caller]
    pub fn create(&self, alias: &str, target: &str) -> Value {
        let resp = self.put_alias(alias, target);
        assert!(resp.status == 200 || resp.status == 201, "{resp:?}");
        resp.json
    }

    /// `GET /api/aliases`'s list.
    #[track_caller]
    pub fn aliases(&self) -> Vec<Value> {
        let resp = self.get("/api/aliases");
        aliases_of(&resp)
    }

    /// `GET /api/aliases`'s list as alias name -> Alias body.
    #[track_caller]
    pub fn aliases_by_name(&self) -> BTreeMap<String, Value> {
        by_name(self.aliases())
    }

    /// The seq `/healthz` reports.
    #[track_caller]
    pub fn seq(&self) -> u64 {
        let resp = self.get("/healthz");
        resp.expect(200)["seq"]
            .as_u64()
            .unwrap_or_else(|| panic!("{resp:?}"))
    }

    /// Polls until `/healthz` reports at least `seq`.
    #[track_caller]
    pub fn wait_seq(&self, seq: u64) {
        wait_for(&format!("seq {seq}"), WAIT, || {
            (self.seq() >= seq).then_some(())
        });
    }

    /// `/api/history?{query}`: the events and `next` (asserting there is
    /// nothing else in the body).
    #[track_caller]
    pub fn history(&self, query: &str) -> (Vec<Value>, Option<u64>) {
        let resp = self.get(&format!("/api/history?{query}"));
        let body = resp.expect(200);
        let object = body.as_object().expect("an object");
        assert_eq!(object.len(), 2, "{resp:?}");
        (
            body["events"].as_array().expect("events").clone(),
            body["next"].as_u64(),
        )
    }

    /// Every event in the journal, walked in pages of 10,000.
    #[track_caller]
    pub fn all_events(&self) -> Vec<Value> {
        let mut events = Vec::new();
        let mut since = 0;
        loop {
            let (page, next) = self.history(&format!("since={since}&limit=10000"));
            events.extend(page);
            match next {
                Some(next) => since = next,
                None => return events,
            }
        }
    }

    /// One batch of prefix-alias puts (no manifest to write, so it is quick):
    /// `<stem><i>-` -> `target` for `i` in `range`. Each op is one event.
    #[track_caller]
    pub fn batch_prefix_puts(&self, stem: &str, range: std::ops::Range<usize>, target: &str) {
        let ops: Vec<Value> = range
            .map(|i| {
                serde_json::json!({ "op": "put", "alias": format!("{stem}{i:05}-"), "target": target, "prefix_matching": true })
            })
            .collect();
        let n_ops = ops.len();
        let resp = self.send_json("POST", "/api/aliases", &serde_json::json!({ "ops": ops }));
        let body = resp.expect(200);
        assert_eq!(
            body["aliases"].as_array().map(Vec::len),
            Some(n_ops),
            "{resp:?}"
        );
    }

    /// Runs a client command against this server.
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        run_cli(&["--host", &self.host()], args)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- aliasd stderr ---\n{}", self.stderr());
        }
    }
}

/// The `aliases` list of a `GET /api/aliases` response.
#[track_caller]
pub fn aliases_of(resp: &Resp) -> Vec<Value> {
    resp.expect(200)["aliases"]
        .as_array()
        .unwrap_or_else(|| panic!("{resp:?}"))
        .clone()
}

/// The seqs of these events.
pub fn seqs_of(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect()
}

/// Alias bodies by their `alias`.
pub fn by_name(aliases: Vec<Value>) -> BTreeMap<String, Value> {
    aliases
        .into_iter()
        .map(|a| (a["alias"].as_str().expect("alias").to_string(), a))
        .collect()
}

/// The path of an alias resource.
pub fn alias_path(alias: &str) -> String {
    format!("/api/aliases/{}", aliasd::client::encode_path(alias))
}

/// What a client command did.
#[derive(Debug)]
pub struct CliOutput {
    /// Exit code.
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl CliOutput {
    /// Asserts exit 0 and returns stdout as JSON.
    #[track_caller]
    pub fn json(&self) -> Value {
        assert_eq!(self.code, Some(0), "{self:?}");
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }
}

/// Runs `aliasd <global...> <args...>` and waits for it.
pub fn run_cli(global: &[&str], args: &[&str]) -> CliOutput {
    let Output {
        status,
        stdout,
        stderr,
    } = aliasd()
        .args(global)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run aliasd");
    CliOutput {
        code: status.code(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// The files of a journal directory with this extension (`seg`, `snap`), sorted.
pub fn files_with_ext(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read journal dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    files.sort();
    files
}

/// Runs `aliasd journal <args> --journal dir`.
pub fn journal_cmd(dir: &Path, args: &[&str]) -> CliOutput {
    let dir = dir.to_str().expect("utf-8 path");
    let mut all = vec!["journal"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--journal", dir]);
    run_cli(&[], &all)
}

/// Runs `aliasd journal repair` without `--yes` on `dir`: it must exit 1 and
/// change no file. Returns what it said (what it would do).
#[track_caller]
pub fn journal_repair_dry_run(dir: &Path) -> CliOutput {
    let before = files_under(dir);
    let out = journal_cmd(dir, &["repair"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(
        files_under(dir),
        before,
        "repair without --yes changed files"
    );
    out
}

/// Where each record of a segment starts: (seq, offset, length with header).
/// The writer may have written zeros ahead of the last record: they are not records.
pub fn record_offsets(segment: &[u8]) -> Vec<(u64, usize, usize)> {
    let mut offsets = Vec::new();
    let mut at = 24; // The segment header.
    while at + 20 <= segment.len() && segment[at..].iter().any(|&b| b != 0) {
        let len = u32::from_le_bytes(segment[at + 4..at + 8].try_into().unwrap()) as usize;
        let seq = u64::from_le_bytes(segment[at + 8..at + 16].try_into().unwrap());
        offsets.push((seq, at, 20 + len));
        at += 20 + len;
    }
    assert!(at <= segment.len(), "the last record runs past the file");
    offsets
}

/// Bytes of a segment up to the end of its last record.
pub fn segment_data_len(segment: &[u8]) -> usize {
    record_offsets(segment)
        .last()
        .map_or(24, |(_, offset, len)| offset + len)
}

/// A tmpfs mounted for one test (a small disk to fill, or one to make
/// read-only); unmounted on drop. Mounting needs root (CI runs as root).
pub struct TmpfsMount {
    dir: TempDir,
}

impl TmpfsMount {
    /// Mounts a tmpfs of `size` (e.g. `1m`); panics saying why where it cannot.
    #[track_caller]
    pub fn new(size: &str) -> TmpfsMount {
        assert_root("it mounts a small file system");
        let dir = tempdir("aliasd-tmpfs");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stdin(Stdio::null())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount -t tmpfs failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        TmpfsMount { dir }
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Remounts it read-only: then even root cannot write in it.
    #[track_caller]
    pub fn make_read_only(&self) {
        let status = Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(self.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "cannot remount read-only: {status}");
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}
