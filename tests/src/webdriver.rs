//! A real browser for the tests of what sluice serves to one (the console): headless Debian
//! Chromium, driven by its ChromeDriver over the W3C WebDriver HTTP protocol. Only the few
//! commands the tests use are here: open a page, evaluate a query in it, take a screenshot.
//!
//! Both programs come from the Debian packages `chromium` and `chromium-driver`, which
//! `scripts/services.sh up` installs; without them a test fails (never skips) saying so.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use serde_json::{Value, json};

use crate::{free_port, http_request, wait_for};

/// How long one WebDriver command may take: starting a browser on a loaded machine is slow.
const COMMAND_PATIENCE: Duration = Duration::from_secs(60);

/// A headless Chromium, and the ChromeDriver session that drives it; both end when dropped.
#[derive(Debug)]
pub struct Browser {
    driver: Child,
    address: SocketAddr,
    session: String,
}

impl Browser {
    /// Starts ChromeDriver on a free loopback port (its log goes to `log`) and a headless
    /// Chromium session of `width`×`height` pixels.
    pub fn start(log: &Path, width: u32, height: u32) -> Result<Browser> {
        let missing = "the browser tests need Debian's chromium and chromium-driver: \
                       install them with `scripts/services.sh up`";
        let chromium = program("chromium").context(missing)?;
        let chromedriver = program("chromedriver").context(missing)?;
        let port = free_port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?)
            .spawn()
            .context("starting chromedriver")?;
        let mut browser = Browser {
            driver,
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            session: String::new(),
        };
        wait_for("chromedriver to answer /status", || {
            let status = browser.command("GET", "/status", None).ok()?;
            (status["ready"] == true).then_some(())
        })?;
        let session = browser.command(
            "POST",
            "/session",
            Some(json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": chromium,
                    // Root in a container has no user namespace for Chromium's sandbox.
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage", format!("--window-size={width},{height}")],
                },
            }}})),
        )?;
        browser.session = session["sessionId"]
            .as_str()
            .context("the new session has no sessionId")?
            .to_owned();
        Ok(browser)
    }

    /// Opens `url` and waits for it to load.
    pub fn open(&self, url: &str) -> Result<()> {
        self.session_command("POST", "/url", Some(json!({ "url": url })))
            .map(|_| ())
    }

    /// The text of the first element matching CSS `selector` (`None` if there is none), read in
    /// one script so that a page redrawing itself cannot change it half way.
    pub fn text(&self, selector: &str) -> Result<Option<String>> {
        let script = "const e = document.querySelector(arguments[0]); \
                      return e === null ? null : e.textContent;";
        let value = self.session_command(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": [selector] })),
        )?;
        Ok(value.as_str().map(str::to_owned))
    }

    /// A PNG of what the window shows.
    pub fn screenshot(&self) -> Result<Vec<u8>> {
        let encoded = self.session_command("GET", "/screenshot", None)?;
        let encoded = encoded.as_str().context("the screenshot is not a string")?;
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .context("the screenshot is not base64")
    }

    fn session_command(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        self.command(method, &format!("/session/{}{path}", self.session), body)
    }

    /// Sends one command; its answer's `value`, or the error WebDriver gave.
    fn command(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let body = body.map(|b| b.to_string());
        let (status, answer) = http_request(
            self.address,
            method,
            path,
            body.as_deref(),
            COMMAND_PATIENCE,
        )
        .with_context(|| format!("WebDriver {method} {path}"))?;
        let answer: Value = serde_json::from_str(&answer)
            .with_context(|| format!("WebDriver {method} {path} answered no JSON: {answer}"))?;
        if status != 200 {
            bail!(
                "WebDriver {method} {path} answered {status}: {} ({})",
                answer["value"]["error"],
                answer["value"]["message"]
            );
        }
        Ok(answer["value"].clone())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.command("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Where `name` is on `PATH`.
fn program(name: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .with_context(|| format!("{name} is not on PATH"))
}
