//! A small Chrome DevTools Protocol client: headless Chromium started with its own
//! profile and `--remote-debugging-port=0`, the browser's websocket read from the
//! profile's `DevToolsActivePort` file, one page attached as a flat session. Enough to
//! click, type, pick files, read the page, grant permissions and take screenshots as a
//! user's browser would — no stand-in for the browser.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{Mutex, oneshot};
use tokio_tungstenite::tungstenite::Message;

type Sink = futures::stream::SplitSink<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    Message,
>;
type Pending = Arc<std::sync::Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// How long a step waits for the page before it fails.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Browser {
    child: Child,
    sink: Mutex<Sink>,
    pending: Pending,
    next_id: AtomicU64,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts headless `chromium` and connects to it.
    pub async fn launch(chromium: &Path) -> Result<Browser, String> {
        let profile = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut child = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-port=0",
                "--window-size=1280,900",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", chromium.display()))?;
        // Chromium writes "<port>\n<browser websocket path>" once it listens.
        let active = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = loop {
            if let Ok(text) = std::fs::read_to_string(&active)
                && let Some((port, path)) = text.split_once('\n')
                && !path.trim().is_empty()
            {
                break format!("ws://127.0.0.1:{}{}", port.trim(), path.trim());
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("chromium exited before listening: {status}"));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err("chromium never wrote DevToolsActivePort".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let (socket, _) = tokio_tungstenite::connect_async(&url)
            .await
            .map_err(|e| format!("connecting to {url}: {e}"))?;
        let (sink, mut stream) = socket.split();
        let pending: Pending = Arc::default();
        let replies = pending.clone();
        tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                let Message::Text(text) = message else {
                    continue;
                };
                let Ok(value) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                // Events (no id) are not needed: steps poll the page instead.
                if let Some(id) = value.get("id").and_then(Value::as_u64)
                    && let Some(reply) = replies.lock().unwrap().remove(&id)
                {
                    let _ = reply.send(value);
                }
            }
        });
        Ok(Browser {
            child,
            sink: Mutex::new(sink),
            pending,
            next_id: AtomicU64::new(1),
            _profile: profile,
        })
    }

    /// One protocol command (to the browser, or to a page's session); its result.
    pub async fn call(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = session.into();
        }
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        self.sink
            .lock()
            .await
            .send(Message::Text(message.to_string().into()))
            .await
            .map_err(|e| format!("{method}: {e}"))?;
        let reply = tokio::time::timeout(STEP_TIMEOUT, rx)
            .await
            .map_err(|_| format!("{method}: no answer from chromium"))?
            .map_err(|_| format!("{method}: chromium closed the connection"))?;
        if let Some(error) = reply.get("error") {
            return Err(format!("{method}: {error}"));
        }
        Ok(reply["result"].clone())
    }

    /// A new tab, attached as a flat session.
    pub async fn new_page(&self) -> Result<Page<'_>, String> {
        let target = self
            .call(None, "Target.createTarget", json!({"url": "about:blank"}))
            .await?;
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await?;
        let session = attached["sessionId"]
            .as_str()
            .ok_or("no sessionId")?
            .to_string();
        let page = Page {
            browser: self,
            session,
        };
        page.call("Page.enable", json!({})).await?;
        page.call("Network.enable", json!({})).await?;
        page.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await?;
        Ok(page)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Page<'b> {
    browser: &'b Browser,
    session: String,
}

impl Page<'_> {
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, String> {
        self.browser.call(Some(&self.session), method, params).await
    }

    /// Evaluates `expression` in the page (awaiting a promise); its JSON value.
    pub async fn eval(&self, expression: &str) -> Result<Value, String> {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({
                    "expression": expression,
                    "returnByValue": true,
                    "awaitPromise": true,
                    "userGesture": true,
                }),
            )
            .await?;
        if let Some(exception) = result.get("exceptionDetails") {
            let text = exception["exception"]["description"]
                .as_str()
                .or(exception["text"].as_str())
                .unwrap_or("exception");
            return Err(format!("evaluating {expression}: {text}"));
        }
        Ok(result["result"]["value"].clone())
    }

    /// Waits until `expression` is truthy in the page; its value.
    pub async fn wait_for(&self, expression: &str) -> Result<Value, String> {
        let deadline = Instant::now() + STEP_TIMEOUT;
        let mut last;
        loop {
            match self.eval(expression).await {
                Ok(v) if !(v.is_null() || v == false || v == "" || v == 0) => return Ok(v),
                Ok(v) => last = v.to_string(),
                Err(e) => last = e,
            }
            if Instant::now() > deadline {
                let text = self
                    .eval("document.getElementById('main') ? document.getElementById('main').innerText.slice(0, 600) : document.body.innerText.slice(0, 600)")
                    .await
                    .unwrap_or_default();
                return Err(format!(
                    "timed out after {STEP_TIMEOUT:?} waiting for `{expression}` (last: {last}); the page shows: {text}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Loads `url` and waits until berth's script has rendered it.
    pub async fn goto(&self, url: &str) -> Result<(), String> {
        // The document being left must not pass for the new one.
        let _ = self
            .eval("document.body && document.body.removeAttribute('data-ready')")
            .await;
        let nav = self.call("Page.navigate", json!({"url": url})).await?;
        if let Some(error) = nav.get("errorText") {
            return Err(format!("loading {url}: {error}"));
        }
        self.wait_for(&format!(
            "location.href === {} && document.body && document.body.dataset.ready === 'true'",
            json!(url)
        ))
        .await
        .map(|_| ())
    }

    /// Clicks the middle of the element `selector` matches, with the mouse.
    pub async fn click(&self, selector: &str) -> Result<(), String> {
        let at = self
            .wait_for(&format!(
                "(() => {{ const e = document.querySelector({}); if (!e) return null; \
                 e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect(); \
                 return r.width > 0 ? [r.x + r.width / 2, r.y + r.height / 2] : null; }})()",
                json!(selector)
            ))
            .await
            .map_err(|e| format!("no visible {selector} to click: {e}"))?;
        let (x, y) = (at[0].clone(), at[1].clone());
        for kind in ["mouseMoved", "mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
            )
            .await?;
        }
        Ok(())
    }

    /// Clicks into a field, clears it, and types `text` as keyboard input.
    pub async fn type_into(&self, selector: &str, text: &str) -> Result<(), String> {
        self.click(selector).await?;
        self.eval(&format!(
            "document.querySelector({}).select()",
            json!(selector)
        ))
        .await?;
        self.call("Input.insertText", json!({"text": text})).await?;
        Ok(())
    }

    /// Picks `file` in the file input `selector`, as the file chooser would.
    pub async fn choose_file(&self, selector: &str, file: &Path) -> Result<(), String> {
        let document = self.call("DOM.getDocument", json!({"depth": 0})).await?;
        let node = self
            .call(
                "DOM.querySelector",
                json!({"nodeId": document["root"]["nodeId"], "selector": selector}),
            )
            .await?;
        if node["nodeId"] == 0 {
            return Err(format!("no {selector} in the page"));
        }
        self.call(
            "DOM.setFileInputFiles",
            json!({"nodeId": node["nodeId"], "files": [file.display().to_string()]}),
        )
        .await?;
        Ok(())
    }

    /// The cookies the browser holds for `url`.
    pub async fn cookies(&self, url: &str) -> Result<Vec<Value>, String> {
        let result = self
            .call("Network.getCookies", json!({"urls": [url]}))
            .await?;
        Ok(result["cookies"].as_array().cloned().unwrap_or_default())
    }

    /// Saves a PNG of the page as `dir/name.png`.
    pub async fn screenshot(&self, dir: &Path, name: &str) -> Result<PathBuf, String> {
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap_or(""))
            .map_err(|e| format!("screenshot data: {e}"))?;
        if png.len() < 1000 || !png.starts_with(b"\x89PNG") {
            return Err(format!("{name}: not a real picture ({} bytes)", png.len()));
        }
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let file = dir.join(format!("{name}.png"));
        std::fs::write(&file, png).map_err(|e| e.to_string())?;
        Ok(file)
    }
}
