//! The dashboard (SPEC §10, issue 21) in a real headless browser: Debian's
//! `chromium` driven through `chromedriver` with fantoccini, against the real
//! binary on a test store. Each browser test is one browser session; the
//! browser's console log is read at the end and must hold no error but the
//! refusals the test provoked on purpose.
//!
//! With `ALIASD_SCREENSHOTS=<dir>` (relative to the crate, e.g. `docs`), the
//! first test saves `dashboard-desktop.png` (1280x800) and
//! `dashboard-phone.png` (390x844) there, as shown in the README.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::Locator;
use serde_json::{json, Value};

use crate::support::*;

/// Debian's chromedriver, from the `chromium-driver` package.
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Debian's Chromium, from the `chromium` package.
const CHROMIUM: &str = "/usr/bin/chromium";

/// How soon a change made elsewhere must show in an open page (issue 21: a
/// row re-pointed from the CLI changes "live within 1 s").
const LIVE: Duration = Duration::from_secs(1);

const ADMIN_SECRET: &str = "s3cret-admin-4711";
const VIEWER_SECRET: &str = "s3cret-viewer-4712";

/// The port in chromedriver's "started successfully on port N." line, if
/// it says so in time; what it writes after that is read and dropped, so
/// that it never blocks on a full pipe.
fn chromedriver_port(stdout: std::process::ChildStdout) -> Option<u16> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            let Ok(line) = line else { return };
            let port = line
                .split_once("started successfully on port ")
                .and_then(|(_, rest)| rest.trim_end_matches('.').trim().parse::<u16>().ok());
            if let Some(port) = port {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(port);
                }
            }
        }
    });
    rx.recv_timeout(WAIT).ok()
}

/// A headless Chromium, driven through its own chromedriver on a free port;
/// the session is closed and the driver killed on drop.
struct Browser {
    runtime: tokio::runtime::Runtime,
    client: Option<fantoccini::Client>,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a fresh profile.
    fn start() -> Browser {
        assert!(
            std::path::Path::new(CHROMEDRIVER).exists() && std::path::Path::new(CHROMIUM).exists(),
            "the dashboard tests need Chromium and its driver: install them with \
             `apt-get install -y chromium chromium-driver` (.ci/run does)"
        );
        // It picks its own port and says which once it is ready for
        // sessions (a port chosen here and bound later by chromedriver
        // could be taken meanwhile).
        let mut driver = Command::new(CHROMEDRIVER)
            .arg("--port=0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        let Some(port) = chromedriver_port(driver.stdout.take().expect("piped stdout")) else {
            let _ = driver.kill();
            let _ = driver.wait();
            panic!("chromedriver did not say which port it listens on");
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let profile = tempdir("aliasd-it-chromium");
        let mut browser = Browser {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime"),
            client: None,
            driver,
            _profile: profile,
        };
        wait_for("chromedriver to listen", WAIT, || {
            TcpStream::connect(addr).ok()
        });
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-dev-shm-usage",
                    "--window-size=1280,800",
                    format!("--user-data-dir={}", browser._profile.path().display()),
                ],
            },
            "goog:loggingPrefs": { "browser": "ALL" },
        });
        let capabilities = capabilities.as_object().expect("an object").clone();
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = browser
            .runtime
            .block_on(
                fantoccini::ClientBuilder::new(connector)
                    .capabilities(capabilities)
                    .connect(&format!("http://{addr}")),
            )
            .unwrap_or_else(|e| panic!("cannot start a Chromium session: {e}"));
        browser.client = Some(client);
        browser
    }

    fn client(&self) -> &fantoccini::Client {
        self.client.as_ref().expect("a session")
    }

    fn goto(&self, url: &str) {
        self.runtime
            .block_on(self.client().goto(url))
            .unwrap_or_else(|e| panic!("goto {url}: {e}"));
    }

    fn find(&self, css: &str) -> Option<Element> {
        self.runtime
            .block_on(self.client().find(Locator::Css(css)))
            .ok()
    }

    #[track_caller]
    fn element(&self, css: &str) -> Element {
        self.find(css)
            .unwrap_or_else(|| panic!("no element {css} in the page"))
    }

    /// The visible text of the first element matching `css`, if there is one.
    fn text(&self, css: &str) -> Option<String> {
        let element = self.find(css)?;
        self.runtime.block_on(element.text()).ok()
    }

    fn attr(&self, css: &str, name: &str) -> Option<String> {
        let element = self.find(css)?;
        self.runtime.block_on(element.attr(name)).ok().flatten()
    }

    fn count(&self, css: &str) -> usize {
        self.runtime
            .block_on(self.client().find_all(Locator::Css(css)))
            .map_or(0, |all| all.len())
    }

    /// Waits until the text at `css` satisfies `ok`; returns it.
    #[track_caller]
    fn wait_text(&self, css: &str, within: Duration, ok: impl Fn(&str) -> bool) -> String {
        let mut last = None;
        let deadline = Instant::now() + within;
        loop {
            let text = self.text(css);
            if let Some(text) = text.as_deref().filter(|t| ok(t)) {
                return text.to_string();
            }
            if text.is_some() {
                last = text;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {within:?} waiting on {css}; it last said {last:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[track_caller]
    fn wait_present(&self, css: &str, within: Duration) {
        wait_for(&format!("{css} in the page"), within, || self.find(css));
    }

    #[track_caller]
    fn wait_absent(&self, css: &str, within: Duration) {
        wait_for(&format!("{css} gone from the page"), within, || {
            self.find(css).is_none().then_some(())
        });
    }

    #[track_caller]
    fn click(&self, css: &str) {
        let element = self.element(css);
        self.runtime
            .block_on(element.click())
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Types `text` into the field at `css`, replacing what it held.
    #[track_caller]
    fn fill(&self, css: &str, text: &str) {
        let element = self.element(css);
        self.runtime
            .block_on(async {
                element.clear().await?;
                element.send_keys(text).await
            })
            .unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    /// Sends one key to the element at `css` (focusing it first).
    #[track_caller]
    fn press(&self, css: &str, key: fantoccini::key::Key) {
        let element = self.element(css);
        self.runtime
            .block_on(element.send_keys(&char::from(key).to_string()))
            .unwrap_or_else(|e| panic!("press a key on {css}: {e}"));
    }

    /// Runs `script` (a function body) in the page; returns what it returns.
    fn eval(&self, script: &str) -> Value {
        self.runtime
            .block_on(self.client().execute(script, Vec::new()))
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// A command of Chrome's DevTools protocol, through chromedriver.
    fn cdp(&self, cmd: &str, params: Value) {
        let command = SessionCommand {
            path: "goog/cdp/execute",
            body: json!({ "cmd": cmd, "params": params }),
        };
        self.runtime
            .block_on(self.client().issue_cmd(command))
            .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    }

    /// Makes the page's viewport `width` x `height` CSS pixels (a phone's
    /// when `mobile`), as if the window were that size.
    fn viewport(&self, width: u32, height: u32, mobile: bool) {
        self.cdp(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile }),
        );
    }

    /// A PNG of the viewport.
    fn screenshot(&self) -> Vec<u8> {
        self.runtime
            .block_on(self.client().screenshot())
            .expect("screenshot")
    }

    /// The console entries logged since the last call (chromedriver's log).
    fn console(&self) -> Vec<Value> {
        let command = SessionCommand {
            path: "se/log",
            body: json!({ "type": "browser" }),
        };
        let entries = self
            .runtime
            .block_on(self.client().issue_cmd(command))
            .unwrap_or_else(|e| panic!("reading the console log: {e}"));
        entries.as_array().cloned().unwrap_or_default()
    }

    /// Asserts that the console holds no error but a failed request to
    /// `/api/` answered with one of `expected` statuses (Chrome logs every
    /// such response, and the test provoked these on purpose).
    #[track_caller]
    fn assert_no_console_errors(&self, expected: &[u16]) {
        let entries = self.console();
        let errors: Vec<&Value> = entries
            .iter()
            .filter(|entry| entry["level"] == "SEVERE")
            .filter(|entry| {
                let message = entry["message"].as_str().unwrap_or_default();
                let provoked = entry["source"] == "network"
                    && message.contains("/api/")
                    && expected
                        .iter()
                        .any(|status| message.contains(&format!("status of {status} ")));
                !provoked
            })
            .collect();
        assert!(errors.is_empty(), "console errors: {errors:#?}");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let closing = async { tokio::time::timeout(WAIT, client.close()).await };
            let _ = self.runtime.block_on(closing);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// A `POST /session/{id}/<path>` of chromedriver's own (not in W3C WebDriver).
#[derive(Debug)]
struct SessionCommand {
    path: &'static str,
    body: Value,
}

impl WebDriverCompatibleCommand for SessionCommand {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        let session = session_id.unwrap_or_default();
        base_url.join(&format!("session/{session}/{}", self.path))
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (axum::http::Method, Option<String>) {
        (axum::http::Method::POST, Some(self.body.to_string()))
    }
}

/// The dashboard's URL on `server`.
fn page(server: &Server) -> String {
    format!("http://{}/", server.addr())
}

/// The CSS selector of a cell of an alias's row.
fn cell(alias: &str, column: &str) -> String {
    format!("#alias-rows tr[data-alias=\"{alias}\"] td[data-col=\"{column}\"]")
}

/// The first 12 hex digits of a digest, as the page shows it.
fn short_digest(digest: &Value) -> String {
    digest
        .as_str()
        .map(|d| d.trim_start_matches("sha256:")[..12].to_string())
        .unwrap_or_default()
}

/// Where screenshots go, if they are wanted (`ALIASD_SCREENSHOTS`).
fn screenshot_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("ALIASD_SCREENSHOTS")?;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(dir);
    std::fs::create_dir_all(&dir).expect("create the screenshot directory");
    Some(dir)
}

/// Asserts that the aliases table shows what `/api/aliases` says, row for
/// row in the API's order (the page's default sort), with each row's actor
/// being the actor of the event with the row's seq.
#[track_caller]
fn assert_aliases_match(browser: &Browser, server: &Server) {
    let aliases = server.aliases();
    let events = server.all_events();
    let shown: Vec<String> = browser
        .eval(
            "return [...document.querySelectorAll('#alias-rows tr')].map((row) => row.dataset.alias);",
        )
        .as_array()
        .expect("an array")
        .iter()
        .map(|name| name.as_str().expect("a name").to_string())
        .collect();
    let names: Vec<String> = aliases
        .iter()
        .map(|a| a["alias"].as_str().expect("alias").to_string())
        .collect();
    assert_eq!(shown, names, "the rows are not the API's aliases");
    for alias in &aliases {
        let name = alias["alias"].as_str().expect("alias");
        let resolved = alias["resolved"].as_str().unwrap_or("\u{2014}");
        let actor = events
            .iter()
            .find(|e| e["seq"] == alias["seq"])
            .and_then(|e| e["actor"].as_str())
            .expect("the event of the alias's seq");
        let expected = [
            (
                "target",
                alias["target"].as_str().expect("target").to_string(),
            ),
            ("resolved", resolved.to_string()),
            ("state", alias["state"].as_str().expect("state").to_string()),
            ("digest", short_digest(&alias["digest"])),
            ("actor", actor.to_string()),
        ];
        for (column, want) in expected {
            assert_eq!(
                browser.text(&cell(name, column)).as_deref(),
                Some(want.as_str()),
                "{name}'s {column}"
            );
        }
    }
}

/// Asserts that the models table shows what `/api/models` says.
#[track_caller]
fn assert_models_match(browser: &Browser, server: &Server) {
    let models = server.get("/api/models").expect(200)["models"]
        .as_array()
        .expect("models")
        .clone();
    assert_eq!(browser.count("#model-rows tr"), models.len());
    for model in &models {
        let name = model["name"].as_str().expect("name");
        let row = format!("#model-rows tr[data-model=\"{name}\"]");
        let aliases: Vec<&str> = model["aliases"]
            .as_array()
            .expect("aliases")
            .iter()
            .map(|a| a.as_str().expect("alias"))
            .collect();
        let aliases = if aliases.is_empty() {
            "\u{2014}".to_string()
        } else {
            aliases.join(", ")
        };
        assert_eq!(
            browser.text(&format!("{row} td[data-col=\"aliases\"]")),
            Some(aliases),
            "{name}'s aliases"
        );
        assert_eq!(
            browser.attr(&format!("{row} td[data-col=\"size\"]"), "title"),
            Some(format!("{} bytes", model["size"])),
            "{name}'s size"
        );
    }
}

/// Submits the create / re-point form.
fn put_through_form(browser: &Browser, alias: &str, target: &str) {
    browser.fill("#put-alias", alias);
    browser.fill("#put-target", target);
    browser.click("#put-form button[type=submit]");
}

/// Waits for the form's message to be the API's refusal.
#[track_caller]
fn expect_form_error(browser: &Browser, css: &str, api: Resp, status: u16, fragment: &str) {
    let message = api.expect_error(status, fragment);
    let want = format!("{message} ({status})");
    browser.wait_text(css, WAIT, |text| text == want);
}

#[test]
fn dashboard_shows_the_registry_and_follows_it_live() {
    let store = TestStore::with_models(&["llama3", "qwen2.5-coder:7b", "mistral"]);
    let server = Server::start(store);
    server.create("chat", "llama3");
    server.create("fast", "chat");
    server.create("coder", "qwen2.5-coder:7b");
    let resp = server.send_json(
        "PUT",
        "/api/aliases/code-",
        &json!({ "target": "qwen2.5-coder:7b", "prefix_matching": true }),
    );
    assert_eq!(resp.status, 201, "{resp:?}");
    let browser = Browser::start();
    browser.goto(&page(&server));
    browser.wait_text("#live", WAIT, |t| t == "live");
    browser.wait_present(&cell("coder", "actor"), WAIT);
    // The actors come from the history read after the lists.
    browser.wait_text(&cell("chat", "actor"), WAIT, |t| {
        t.starts_with("anonymous@")
    });

    // What the page shows is what the API says.
    assert_aliases_match(&browser, &server);
    assert_models_match(&browser, &server);
    for node in [
        "chat",
        "fast",
        "coder",
        "code-",
        "llama3",
        "qwen2.5-coder:7b",
        "mistral",
    ] {
        assert!(
            browser
                .find(&format!("#graph-svg g[data-node=\"{node}\"]"))
                .is_some(),
            "no {node} in the chain graph"
        );
    }
    assert_eq!(
        browser.count("#graph-svg path.edge"),
        4,
        "one edge per alias"
    );
    assert_eq!(
        browser.count("#feed li"),
        4,
        "the feed shows the events so far"
    );

    // Create through the form: the row appears, and the event in the feed.
    put_through_form(&browser, "writer", "llama3");
    browser.wait_text("#put-msg", WAIT, |t| t == "created writer \u{2192} llama3");
    browser.wait_text(&cell("writer", "resolved"), WAIT, |t| t == "llama3");
    assert_eq!(server.aliases_by_name()["writer"]["target"], "llama3");
    browser.wait_present(
        "#feed li[data-alias=\"writer\"][data-type=\"alias.created\"]",
        WAIT,
    );

    // Re-pointed from the CLI: the row changes in place, without a reload.
    browser.eval("window.stillTheSamePage = true; return null;");
    let out = server.cli(&["create", "writer", "mistral"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let started = Instant::now();
    browser.wait_text(&cell("writer", "target"), LIVE, |t| t == "mistral");
    let took = started.elapsed();
    // Highlighted for a moment (the class goes when its animation ends).
    let class = browser
        .attr("#alias-rows tr[data-alias=\"writer\"]", "class")
        .unwrap_or_default();
    assert!(
        class.contains("flash"),
        "the changed row is not highlighted: {class:?}"
    );
    browser.wait_text(&cell("writer", "resolved"), LIVE, |t| t == "mistral");
    assert_eq!(
        browser.eval("return window.stillTheSamePage === true;"),
        true
    );
    eprintln!("the CLI's re-point showed in the page {took:?} after the CLI returned");
    let class = browser
        .attr("#alias-rows tr[data-alias=\"coder\"]", "class")
        .unwrap_or_default();
    assert!(!class.contains("flash"), "an unchanged row is highlighted");

    // Its model removed from the store: the row turns dangling, live.
    server.store.remove_model("mistral");
    browser.wait_text(&cell("writer", "state"), WAIT, |t| t == "dangling");
    browser.wait_text(&cell("writer", "resolved"), WAIT, |t| t == "\u{2014}");
    browser.wait_absent("#model-rows tr[data-model=\"mistral\"]", WAIT);
    browser.wait_present("#graph-svg g.node-missing[data-node=\"mistral\"]", WAIT);
    browser.wait_present(
        "#feed li[data-alias=\"writer\"][data-type=\"target.removed\"]",
        WAIT,
    );
    assert_aliases_match(&browser, &server);
    assert_models_match(&browser, &server);

    // Refusals show the API's own words: 400 cycle, 404 unknown target,
    // 409 would shadow a model. Each is asked of the API as well (it
    // refuses again, changing nothing) to know the words.
    put_through_form(&browser, "chat", "fast");
    expect_form_error(
        &browser,
        "#put-msg",
        server.put_alias("chat", "fast"),
        400,
        "cycle",
    );
    put_through_form(&browser, "ghost", "no-such-model");
    expect_form_error(
        &browser,
        "#put-msg",
        server.put_alias("ghost", "no-such-model"),
        404,
        "no-such-model",
    );
    put_through_form(&browser, "qwen2.5-coder:7b", "llama3");
    expect_form_error(
        &browser,
        "#put-msg",
        server.put_alias("qwen2.5-coder:7b", "llama3"),
        409,
        "model",
    );
    assert_eq!(
        server.aliases().len(),
        5,
        "a refused change changed something"
    );

    // The filter and the sort, from the keyboard.
    browser.fill("#filter", "dangling");
    browser.wait_text("#alias-count", WAIT, |t| t == "1 of 5");
    assert_eq!(browser.count("#alias-rows tr"), 1);
    assert!(browser.find(&cell("writer", "state")).is_some());
    browser.fill("#filter", "");
    browser.wait_text("#alias-count", WAIT, |t| t == "5");
    browser.click("#alias-table th[data-sort=\"target\"] button");
    let targets = browser.eval(
        "return [...document.querySelectorAll('#alias-rows td[data-col=\"target\"]')].map((c) => c.textContent);",
    );
    let mut sorted: Vec<String> = serde_json::from_value(targets.clone()).expect("strings");
    sorted.sort_by_key(|t| t.to_lowercase());
    assert_eq!(targets, json!(sorted), "not sorted by target");
    assert_eq!(
        browser.attr("#alias-table th[data-sort=\"target\"]", "aria-sort"),
        Some("ascending".into())
    );

    // The history search pages through /api/history.
    browser.fill("#history-alias", "writer");
    browser.click("#history-form button[type=submit]");
    browser.wait_text("#history-msg", WAIT, |t| t.starts_with("3 events"));
    let (events, _) = server.history("alias=writer");
    let shown = browser.eval(
        "return [...document.querySelectorAll('#history-results li')].map((li) => [Number(li.dataset.seq), li.dataset.type]);",
    );
    let expected: Vec<Value> = events
        .iter()
        .map(|e| json!([e["seq"], e["type"]]))
        .collect();
    assert_eq!(shown, json!(expected));

    if let Some(dir) = screenshot_dir() {
        browser.fill("#history-alias", "");
        browser.click("#history-form button[type=submit]");
        browser.wait_text("#history-msg", WAIT, |t| t.contains("events"));
        browser.eval("window.scrollTo(0, 0); return null;");
        browser.viewport(1280, 800, false);
        std::fs::write(dir.join("dashboard-desktop.png"), browser.screenshot()).expect("save");
        browser.viewport(390, 844, true);
        browser.eval("window.scrollTo(0, 0); return null;");
        std::fs::write(dir.join("dashboard-phone.png"), browser.screenshot()).expect("save");
    }
    // At a phone's width nothing runs off the side of the page.
    browser.viewport(390, 844, true);
    let overflow =
        browser.eval("return [document.documentElement.scrollWidth, window.innerWidth];");
    assert!(
        overflow[0].as_u64() <= overflow[1].as_u64(),
        "the page is wider than a phone: {overflow}"
    );
    browser.cdp("Emulation.clearDeviceMetricsOverride", json!({}));

    // Delete, with a confirmation: first from the keyboard, cancelled (Enter
    // on the row's button opens it with Cancel focused, Escape closes it
    // and gives the focus back), then confirmed.
    let delete = "#alias-rows tr[data-alias=\"writer\"] button[data-action=\"delete\"]";
    browser.press(delete, fantoccini::key::Key::Enter);
    browser.wait_text("#confirm-name", WAIT, |t| t == "writer");
    assert_eq!(
        browser.eval("return document.activeElement.id;"),
        "confirm-cancel"
    );
    browser.press("#confirm-cancel", fantoccini::key::Key::Escape);
    browser.wait_text("#delete-msg", WAIT, |t| t == "nothing deleted");
    assert_eq!(
        browser.eval(
            "const focused = document.activeElement; \
             return [focused.dataset.action, focused.closest('tr') && focused.closest('tr').dataset.alias];"
        ),
        json!(["delete", "writer"])
    );
    assert!(browser.find("#confirm-dialog[open]").is_none());
    assert!(server.aliases_by_name().contains_key("writer"));
    browser.click("#alias-rows tr[data-alias=\"writer\"] button[data-action=\"delete\"]");
    browser.wait_present("#confirm-dialog[open]", WAIT);
    browser.click("#confirm-ok");
    browser.wait_text("#delete-msg", WAIT, |t| t == "deleted writer");
    browser.wait_absent("#alias-rows tr[data-alias=\"writer\"]", WAIT);
    assert!(!server.aliases_by_name().contains_key("writer"));
    browser.wait_present(
        "#feed li[data-alias=\"writer\"][data-type=\"alias.deleted\"]",
        WAIT,
    );

    browser.assert_no_console_errors(&[400, 404, 409]);
}

#[test]
fn dashboard_asks_for_a_token_and_sends_it_on_every_call() {
    let admin = format!("admin={ADMIN_SECRET}");
    let viewer = format!("viewer={VIEWER_SECRET}");
    let server = Server::builder(TestStore::with_models(&["llama3"]))
        .args(&["--token", &admin, "--read-token", &viewer])
        .start();
    let as_admin = format!("Bearer {ADMIN_SECRET}");
    let put = |alias: &str| {
        let resp = server.send_json_with(
            "PUT",
            &alias_path(alias),
            &[("Authorization", &as_admin)],
            &json!({ "target": "llama3" }),
        );
        assert_eq!(resp.status, 201, "{resp:?}");
    };
    put("chat");
    let missing = server.get("/api/aliases").expect_error(401, "token");

    let browser = Browser::start();
    browser.goto(&page(&server));
    // The page loads without a token, then asks for one with the API's words.
    browser.wait_present("#token-dialog[open]", WAIT);
    browser.wait_text("#token-reason", WAIT, |t| t == missing);
    browser.fill("#token-input", "not-a-token");
    browser.click("#token-form button[type=submit]");
    browser.wait_present("#token-dialog[open]", WAIT);
    browser.wait_text("#token-reason", WAIT, |t| t == "invalid token");

    // A read-only token: everything reads, the live stream included.
    browser.fill("#token-input", VIEWER_SECRET);
    browser.click("#token-form button[type=submit]");
    browser.wait_text(&cell("chat", "target"), WAIT, |t| t == "llama3");
    browser.wait_text("#live", WAIT, |t| t == "live");
    put("coder");
    browser.wait_text(&cell("coder", "target"), WAIT, |t| t == "llama3");
    browser.wait_text(&cell("coder", "actor"), WAIT, |t| t.starts_with("admin@"));

    // ...and a delete is refused with the API's 403.
    browser.click("#alias-rows tr[data-alias=\"chat\"] button[data-action=\"delete\"]");
    browser.wait_present("#confirm-dialog[open]", WAIT);
    browser.click("#confirm-ok");
    let refused = server
        .request(
            "DELETE",
            "/api/aliases/chat",
            &[("Authorization", &format!("Bearer {VIEWER_SECRET}"))],
            None,
        )
        .expect_error(403, "read-only");
    let want = format!("{refused} (403)");
    browser.wait_text("#delete-msg", WAIT, |t| t == want);
    assert!(
        server
            .request(
                "GET",
                "/api/aliases/chat",
                &[("Authorization", &as_admin)],
                None
            )
            .status
            == 200
    );

    // Another token, from the header's button: now the delete goes through.
    browser.click("#token-button");
    browser.wait_present("#token-dialog[open]", WAIT);
    browser.fill("#token-input", ADMIN_SECRET);
    browser.click("#token-form button[type=submit]");
    browser.click("#alias-rows tr[data-alias=\"chat\"] button[data-action=\"delete\"]");
    browser.wait_present("#confirm-dialog[open]", WAIT);
    browser.click("#confirm-ok");
    browser.wait_text("#delete-msg", WAIT, |t| t == "deleted chat");
    browser.wait_absent("#alias-rows tr[data-alias=\"chat\"]", WAIT);
    browser.wait_present(
        "#feed li[data-alias=\"chat\"][data-type=\"alias.deleted\"]",
        WAIT,
    );

    // The token is the tab's (sessionStorage, not localStorage) and never
    // went into a URL: not the page's, not any request's.
    assert_eq!(
        browser.eval("return [sessionStorage.getItem('aliasd.token'), localStorage.length];"),
        json!([ADMIN_SECRET, 0])
    );
    let urls = browser.eval(
        "return performance.getEntriesByType('resource').map((e) => e.name).concat([location.href]);",
    );
    let urls: Vec<String> = serde_json::from_value(urls).expect("strings");
    assert!(
        urls.iter().any(|u| u.contains("/api/events")),
        "no event stream among {urls:?}"
    );
    for url in &urls {
        assert!(
            !url.contains(ADMIN_SECRET) && !url.contains(VIEWER_SECRET),
            "a token in a URL: {url}"
        );
    }

    // A reload keeps the tab's token: no prompt.
    browser
        .runtime
        .block_on(browser.client().refresh())
        .expect("reload");
    browser.wait_text(&cell("coder", "target"), WAIT, |t| t == "llama3");
    browser.wait_text("#live", WAIT, |t| t == "live");
    assert!(browser.find("#token-dialog[open]").is_none());

    browser.assert_no_console_errors(&[401, 403]);
}

#[test]
fn dashboard_files_need_no_token_and_carry_strict_headers() {
    let server = Server::builder(TestStore::with_models(&["llama3"]))
        .args(&["--token", &format!("admin={ADMIN_SECRET}")])
        .start();
    // The files hold no data: they load without a token, the data does not.
    server.get("/api/aliases").expect_error(401, "token");
    let browser_accept = [(
        "Accept",
        "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    )];
    let index = server.request("GET", "/", &browser_accept, None);
    assert_eq!(index.status, 200, "{index:?}");
    let html = String::from_utf8_lossy(&index.body).to_string();
    assert!(
        html.contains("<script type=\"module\" src=\"/ui/app.js\">"),
        "{html}"
    );
    assert!(!html.contains("<script>"), "an inline script");
    for (path, content_type) in [
        ("/", "text/html"),
        ("/ui/index.html", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/api.js", "text/javascript"),
        ("/ui/graph.js", "text/javascript"),
        ("/ui/style.css", "text/css"),
        ("/ui/favicon.svg", "image/svg+xml"),
    ] {
        let resp = server.get(path);
        assert_eq!(resp.status, 200, "{path}: {resp:?}");
        assert!(
            resp.header("content-type")
                .is_some_and(|v| v.starts_with(content_type)),
            "{path}: {resp:?}"
        );
        let csp = resp.header("content-security-policy").unwrap_or_default();
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp:?} lacks {directive}");
        }
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        assert_eq!(
            resp.header("x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
        assert_eq!(resp.header("x-frame-options"), Some("DENY"), "{path}");
        assert_eq!(resp.header("cache-control"), Some("no-cache"), "{path}");
        // A browser's copy is revalidated with the ETag.
        let etag = resp.header("etag").expect("an ETag").to_string();
        let again = server.request("GET", path, &[("If-None-Match", &etag)], None);
        assert_eq!(again.status, 304, "{path}: {again:?}");
        assert!(again.body.is_empty());
    }
    server
        .get("/ui/nope.js")
        .expect_error(404, "no dashboard file");
    // Only reading the files is open: anything else at `/` still needs a token.
    server
        .request("POST", "/", &[], Some(b"{}"))
        .expect_error(401, "token");
}

#[test]
fn root_goes_to_the_upstream_unless_a_browser_asks() {
    // A stand-in Ollama that answers every request as Ollama answers `/`.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let upstream = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                use std::io::{BufRead, BufReader, Write};
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    line.clear();
                }
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 17\r\nConnection: close\r\n\r\nOllama is running",
                );
            });
        }
    });
    let server = Server::start_with_args(
        TestStore::with_models(&["llama3"]),
        &["--upstream", &format!("http://{upstream}")],
    );
    for accept in [None, Some("*/*"), Some("application/json")] {
        let headers: Vec<(&str, &str)> = accept.iter().map(|a| ("Accept", *a)).collect();
        let resp = server.request("GET", "/", &headers, None);
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(
            resp.body, b"Ollama is running",
            "Accept {accept:?}: {resp:?}"
        );
    }
    let resp = server.request("GET", "/", &[("Accept", "text/html,*/*;q=0.8")], None);
    assert_eq!(resp.status, 200, "{resp:?}");
    assert!(resp
        .header("content-type")
        .is_some_and(|v| v.starts_with("text/html")));
    assert_eq!(resp.header("vary"), Some("Accept"));
    // The files are aliasd's own either way.
    let resp = server.get("/ui/app.js");
    assert!(
        resp.status == 200
            && resp
                .header("content-type")
                .is_some_and(|v| v.starts_with("text/javascript")),
        "{resp:?}"
    );
}

/// In a fleet (SPEC §10), the dashboard shows the nodes and each alias's
/// state on each node, live; on a single host it shows neither.
#[test]
fn dashboard_shows_the_fleets_nodes_and_each_alias_state_per_node() {
    use crate::support::nats::NatsServer;
    let nats = NatsServer::start();
    let url = nats.url();
    let fleet_node = |name: &str, models: &[&str]| {
        Server::builder(TestStore::with_models(models))
            .args(&["--nats", &url, "--node", name])
            .start()
    };
    let a = fleet_node("a", &["llama3"]);
    let _b = fleet_node("b", &["qwen"]);
    wait_for("both nodes live on a", WAIT, || {
        let resp = a.get("/api/nodes");
        let nodes = resp.expect(200)["nodes"].as_array()?.clone();
        (nodes.iter().filter(|n| n["live"] == true).count() == 2).then_some(())
    });
    a.put_alias("coder", "llama3").expect(201);
    // b has no llama3: it says so in the log.
    wait_for("b's report on a", WAIT, || {
        let resp = a.get(&alias_path("coder"));
        (resp.expect(200)["nodes"]["b"]["state"] == "dangling").then_some(())
    });

    let browser = Browser::start();
    browser.goto(&page(&a));
    let live = |node: &str| format!("#node-rows tr[data-node=\"{node}\"] td[data-col=\"live\"]");
    browser.wait_text(&live("a"), WAIT, |t| t == "live");
    browser.wait_text(&live("b"), WAIT, |t| t == "live");
    let on =
        |node: &str| format!("#node-matrix-rows tr[data-alias=\"coder\"] td[data-node=\"{node}\"]");
    browser.wait_text(&on("a"), WAIT, |t| t == "active");
    browser.wait_text(&on("b"), WAIT, |t| t == "dangling");
    assert_eq!(
        browser.text("#node-rows tr[data-node=\"b\"] td[data-col=\"models\"]"),
        Some("qwen".to_string())
    );
    // Live: the model goes on a; a's own state follows in the page.
    a.store.remove_model("llama3");
    browser.wait_text(&on("a"), WAIT, |t| t == "dangling");
    browser.assert_no_console_errors(&[]);

    // A single host: no nodes section, and no request for one.
    let single = Server::with_models(&["llama3"]);
    single.create("coder", "llama3");
    browser.goto(&page(&single));
    browser.wait_present(&cell("coder", "state"), WAIT);
    let hidden = browser.eval("return document.getElementById('nodes').hidden;");
    assert_eq!(hidden, Value::Bool(true));
    browser.assert_no_console_errors(&[]);
}
