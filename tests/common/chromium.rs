//! A real browser for the browser suite: Debian's headless Chromium driven
//! through ChromeDriver (WebDriver, with `fantoccini`), one ChromeDriver
//! and one fresh profile per test, at most two browsers at once on the
//! CI machine's two cores.
//!
//! Runs when `LATCHKEY_TEST_CHROMEDRIVER` names the `chromedriver` binary
//! (`.ci/run` installs Debian's `chromium` and `chromium-driver` and sets
//! it); the Chromium binary is `LATCHKEY_TEST_CHROMIUM` (default
//! `/usr/bin/chromium`). axe-core comes from `tests/browser/node_modules`
//! (`npm ci --prefix tests/browser`, pinned by its lock file).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, SemaphorePermit};
use url::Url;

use super::process::KillOnDrop;

/// Two browsers at once: each is a handful of processes.
static BROWSERS: Semaphore = Semaphore::const_new(2);

/// How long a browser waits for a page, an element or a URL.
pub const PAGE_WAIT: Duration = Duration::from_secs(20);

/// How a browser is started.
#[derive(Default)]
pub struct Options {
    /// `pageLoadStrategy: none`: navigation commands return at once, so a
    /// test can act while a page is still loading (a request held at the
    /// IdP); the test then waits for what it expects explicitly.
    pub no_page_load_wait: bool,
    /// `--host-resolver-rules` entries (`MAP name 127.0.0.1`).
    pub resolve: Vec<String>,
    /// Base64 SHA-256 hashes of server public keys (SPKI) to trust, for
    /// the https tests' certificates.
    pub trust_spki: Vec<String>,
}

impl Options {
    /// [`no_page_load_wait`](Self::no_page_load_wait): for tests that act
    /// while a navigation is held.
    pub fn acting_while_loading() -> Self {
        Self {
            no_page_load_wait: true,
            ..Self::default()
        }
    }

    /// Trusting the server certificate of `pki` (the https tests').
    pub fn trusting(pki: &super::tls::TestPki) -> Self {
        Self {
            trust_spki: vec![pki.server_spki_sha256.clone()],
            ..Self::default()
        }
    }
}

/// A headless Chromium session, with what the test needs to look at it.
pub struct Browser {
    /// The WebDriver session.
    pub client: Client,
    /// Where screenshots go: `target/browser-shots/<test>-<step>.png`.
    name: String,
    _driver: KillOnDrop,
    _profile: tempfile::TempDir,
    _permit: SemaphorePermit<'static>,
}

/// Where `chromedriver` is, when the suite is to run.
pub fn chromedriver() -> Option<String> {
    std::env::var("LATCHKEY_TEST_CHROMEDRIVER").ok()
}

/// `target/browser-shots`, made if missing.
pub fn shots_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("browser-shots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Browser {
    /// A fresh browser for test `name` (no cookies, no history).
    pub async fn start(driver: &str, name: &str, options: Options) -> Self {
        let permit = BROWSERS.acquire().await.unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start chromedriver");
        let deadline = std::time::Instant::now() + super::TEST_TIMEOUT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(child.try_wait().unwrap().is_none(), "chromedriver exited");
            assert!(
                std::time::Instant::now() < deadline,
                "chromedriver never listened"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let driver = KillOnDrop(child);
        let profile = tempfile::tempdir().unwrap();
        let mut args = vec![
            "--headless=new".to_owned(),
            "--no-sandbox".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-gpu".into(),
            "--no-first-run".into(),
            "--no-default-browser-check".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-features=Translate,OptimizationHints,MediaRouter".into(),
            "--window-size=1000,760".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        if !options.resolve.is_empty() {
            args.push(format!(
                "--host-resolver-rules={}",
                options.resolve.join(",")
            ));
        }
        if !options.trust_spki.is_empty() {
            args.push(format!(
                "--ignore-certificate-errors-spki-list={}",
                options.trust_spki.join(",")
            ));
        }
        let binary =
            std::env::var("LATCHKEY_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let capabilities = json!({
            "browserName": "chrome",
            "pageLoadStrategy": if options.no_page_load_wait { "none" } else { "normal" },
            "goog:chromeOptions": { "binary": binary, "args": args },
            "goog:loggingPrefs": { "browser": "ALL", "performance": "ALL" },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a Chromium session");
        Self {
            client,
            name: name.to_owned(),
            _driver: driver,
            _profile: profile,
            _permit: permit,
        }
    }

    /// Opens `url` and waits for it to load (unless `no_page_load_wait`).
    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    /// The address in the location bar.
    pub async fn url(&self) -> Url {
        self.client.current_url().await.unwrap()
    }

    /// Waits until the location bar's path is `path` (and its query `query`).
    pub async fn wait_for_path(&self, path: &str, query: Option<&str>) {
        let deadline = std::time::Instant::now() + PAGE_WAIT;
        loop {
            let url = self.url().await;
            if url.path() == path && url.query() == query {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never reached {path}?{query:?}: at {url}; shown:\n{}",
                self.text().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for an element matching the CSS selector `css`.
    pub async fn wait_for(&self, css: &str) -> fantoccini::elements::Element {
        match self
            .client
            .wait()
            .at_most(PAGE_WAIT)
            .for_element(Locator::Css(css))
            .await
        {
            Ok(element) => element,
            Err(e) => panic!(
                "no {css} ({e}) at {}; shown:\n{}",
                self.url().await,
                self.text().await
            ),
        }
    }

    /// The page's visible text.
    pub async fn text(&self) -> String {
        match self.client.find(Locator::Css("body")).await {
            Ok(body) => body.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Waits until the page's text contains `needle`; returns the text.
    pub async fn wait_for_text(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + PAGE_WAIT;
        loop {
            let text = self.text().await;
            if text.contains(needle) {
                return text;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{needle:?} never appeared at {}; shown:\n{text}",
                self.url().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Fills the development IdP's form with `user` (whose password is
    /// the user name) without submitting it.
    pub async fn fill_idp_form(&self, user: &str) {
        self.wait_for("input#username")
            .await
            .send_keys(user)
            .await
            .unwrap();
        self.client
            .find(Locator::Css("input#password"))
            .await
            .unwrap()
            .send_keys(user)
            .await
            .unwrap();
    }

    /// Where the IdP form's "Sign in" button is on the screen (its centre),
    /// for [`click_at`](Self::click_at).
    pub async fn sign_in_button(&self) -> (f64, f64) {
        let (x, y, width, height) = self
            .wait_for("button[value=login]")
            .await
            .rectangle()
            .await
            .unwrap();
        (x + width / 2.0, y + height / 2.0)
    }

    /// A mouse click at `at` on whatever the browser shows there, as a
    /// person's: with `pageLoadStrategy: none` it returns before the
    /// navigation it starts has finished, and it reaches a page that is
    /// still shown while its successor loads (a second press of a form's
    /// button).
    pub async fn click_at(&self, (x, y): (f64, f64)) {
        use fantoccini::actions::{InputSource, MOUSE_BUTTON_LEFT, MouseActions, PointerAction};
        let click = MouseActions::new("mouse".into())
            .then(PointerAction::MoveTo {
                duration: None,
                x,
                y,
            })
            .then(PointerAction::Down {
                button: MOUSE_BUTTON_LEFT,
            })
            .then(PointerAction::Up {
                button: MOUSE_BUTTON_LEFT,
            });
        self.client.perform_actions(click).await.unwrap();
    }

    /// Signs `user` in at the development IdP's form, which must be
    /// showing or on its way.
    pub async fn sign_in_at_idp(&self, user: &str) {
        self.fill_idp_form(user).await;
        self.client
            .find(Locator::Css("button[value=login]"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
    }

    /// Saves a screenshot as `target/browser-shots/<test>-<step>.png`.
    pub async fn shot(&self, step: &str) -> PathBuf {
        let png = self.client.screenshot().await.unwrap();
        let path = shots_dir().join(format!("{}-{step}.png", self.name));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// The browser's log entries of `kind` (`browser`: the console;
    /// `performance`: DevTools events) since the last call.
    async fn log(&self, kind: &'static str) -> Vec<Value> {
        let entries = self.client.issue_cmd(GetLog(kind)).await.unwrap();
        entries.as_array().cloned().unwrap_or_default()
    }

    /// The console's errors (`SEVERE`: failed loads, CSP violations,
    /// script errors) since the last call.
    /// The page's own status is not one of them: Chromium logs an error
    /// page's 4xx or 5xx as a failed load, and saying so is its job.
    pub async fn console_errors(&self) -> Vec<String> {
        let own_status = format!(
            "{} - Failed to load resource: the server responded with a status of",
            self.url().await
        );
        self.log("browser")
            .await
            .into_iter()
            .filter(|entry| entry["level"] == "SEVERE")
            .map(|entry| entry["message"].as_str().unwrap_or_default().to_owned())
            .filter(|message| !message.starts_with(&own_status))
            .collect()
    }

    /// Every top-level document the browser requested since the last call
    /// (redirects included), in order.
    pub async fn documents_requested(&self) -> Vec<Url> {
        self.log("performance")
            .await
            .into_iter()
            .filter_map(|entry| {
                let event: Value = serde_json::from_str(entry["message"].as_str()?).ok()?;
                let event = &event["message"];
                (event["method"] == "Network.requestWillBeSent"
                    && event["params"]["type"] == "Document")
                    .then(|| Url::parse(event["params"]["request"]["url"].as_str()?).ok())?
            })
            .collect()
    }

    /// axe-core's serious and critical violations on the current page
    /// (`id: help (n elements)`).
    pub async fn accessibility_violations(&self) -> Vec<String> {
        let axe = std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/browser/node_modules/axe-core/axe.min.js"),
        )
        .expect("axe-core: run `npm ci --prefix tests/browser`");
        self.client.execute(&axe, vec![]).await.unwrap();
        let found = self
            .client
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 axe.run(document, { resultTypes: ['violations'] })
                    .then(r => done(r.violations.map(v => ({
                        id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.length }))))
                    .catch(e => done([{ id: 'axe-failed', impact: 'critical', help: String(e), nodes: 0 }]));",
                vec![],
            )
            .await
            .unwrap();
        found
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|v| v["impact"] == "serious" || v["impact"] == "critical")
            .map(|v| format!("{}: {} ({} elements)", v["id"], v["help"], v["nodes"]))
            .collect()
    }

    /// Checks the current page as a person with a screen reader and a
    /// strict browser would see it: no console errors (its CSP blocked
    /// nothing, nothing failed to load) and no serious accessibility
    /// violation; saves its screenshot as `step`.
    pub async fn check_page(&self, step: &str) {
        self.check_page_errors_only(step).await;
        let violations = self.accessibility_violations().await;
        assert!(
            violations.is_empty(),
            "{step} ({}): accessibility violations {violations:#?}",
            self.url().await
        );
    }

    /// Saves a screenshot as `step` and checks the console has no errors
    /// (for pages that are not latchkey's own, such as the sample app's).
    pub async fn check_page_errors_only(&self, step: &str) {
        self.shot(step).await;
        let errors = self.console_errors().await;
        assert!(
            errors.is_empty(),
            "{step} ({}): console errors {errors:#?}",
            self.url().await
        );
    }

    /// Opens a new tab and switches to it; returns the handle of the tab
    /// it came from.
    pub async fn new_tab(&self) -> fantoccini::wd::WindowHandle {
        let was = self.client.window().await.unwrap();
        let tab = self.client.new_window(true).await.unwrap();
        self.client.switch_to_window(tab.handle).await.unwrap();
        was
    }

    /// Switches to tab `handle`.
    pub async fn switch_to(&self, handle: &fantoccini::wd::WindowHandle) {
        self.client.switch_to_window(handle.clone()).await.unwrap();
    }

    /// Ends the session (the ChromeDriver is killed when dropped).
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

/// ChromeDriver's log command (`POST /session/{id}/se/log`), which the
/// WebDriver standard does not have.
#[derive(Debug)]
struct GetLog(&'static str);

impl WebDriverCompatibleCommand for GetLog {
    fn endpoint(&self, base: &Url, session: Option<&str>) -> Result<Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &Url) -> (hyper::Method, Option<String>) {
        (
            hyper::Method::POST,
            Some(json!({ "type": self.0 }).to_string()),
        )
    }
}
