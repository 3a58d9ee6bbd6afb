//! Git's smart HTTP protocol for libgit2, over berth's own HTTP client (reqwest on
//! rustls): libgit2 is built without a TLS library of its own, so berth carries one TLS
//! stack, not two, and the image needs no OpenSSL.
//!
//! libgit2 drives a transport synchronously on the thread that runs the Git operation
//! (a `spawn_blocking` thread in berth); the requests run on the Tokio runtime of that
//! thread. What one operation needs — credentials, the HTTP client, the statuses seen —
//! is set for the thread by [`Session::enter`], so concurrent operations on other
//! threads never see each other's tokens.
//!
//! The four requests are Git's stateless RPC: `GET info/refs?service=…` for the refs,
//! `POST git-upload-pack` (fetch) and `POST git-receive-pack` (push) with the request
//! body libgit2 writes, the response body read back as a stream.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::sync::{Once, OnceLock};
use std::time::Duration;

use base64::Engine;
use git2::transport::{Service, SmartSubtransport, SmartSubtransportStream, Transport};
use tokio::runtime::Handle;

/// How long one request may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one request may wait for response bytes.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Basic-auth credentials for HTTP(S) remotes.
#[derive(Clone)]
pub struct BasicAuth {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BasicAuth({}, <redacted>)", self.username)
    }
}

struct State {
    credentials: Option<BasicAuth>,
    client: reqwest::Client,
    handle: Handle,
    /// The HTTP status of the last refused request (401, 403, 404, …).
    refused: Option<(u16, String)>,
}

thread_local! {
    static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
}

/// The HTTP(S) context of Git operations on this thread; cleared when dropped.
pub struct Session(());

impl Session {
    /// Sets `credentials` for the Git operations of this thread (which must be able to
    /// reach a Tokio runtime: a `spawn_blocking` thread).
    pub fn enter(credentials: Option<BasicAuth>) -> io::Result<Session> {
        register();
        let handle = Handle::try_current().map_err(io::Error::other)?;
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls_config()?)
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .user_agent(concat!("git/2.0 (berth ", env!("CARGO_PKG_VERSION"), ")"))
            .build()
            .map_err(io::Error::other)?;
        STATE.with(|s| {
            *s.borrow_mut() = Some(State {
                credentials,
                client,
                handle,
                refused: None,
            })
        });
        Ok(Session(()))
    }

    /// The status and URL of a request the server refused during this session.
    pub fn refused(&self) -> Option<(u16, String)> {
        STATE.with(|s| s.borrow().as_ref().and_then(|s| s.refused.clone()))
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        STATE.with(|s| *s.borrow_mut() = None);
    }
}

fn tls_config() -> io::Result<rustls::ClientConfig> {
    static CONFIG: OnceLock<Result<rustls::ClientConfig, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            crate::sync::client::client_config(&Default::default()).map_err(|e| e.to_string())
        })
        .clone()
        .map_err(io::Error::other)
}

/// Registers the transport for `http://` and `https://` with libgit2, once per process.
fn register() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for scheme in ["http", "https"] {
            // SAFETY: libgit2 requires registration to happen once, before any use of
            // the scheme, and not concurrently with other registrations: `Once` does both.
            let registered = unsafe {
                git2::transport::register(scheme, |remote| {
                    Transport::smart(remote, true, HttpSubtransport)
                })
            };
            if let Err(e) = registered {
                tracing::error!(scheme, error = %e, "registering the Git HTTP transport failed");
            }
        }
    });
}

struct HttpSubtransport;

impl SmartSubtransport for HttpSubtransport {
    fn action(
        &self,
        url: &str,
        action: Service,
    ) -> Result<Box<dyn SmartSubtransportStream>, git2::Error> {
        let base = url.trim_end_matches('/');
        let (method, path, content_type) = match action {
            Service::UploadPackLs => ("GET", "/info/refs?service=git-upload-pack", None),
            Service::ReceivePackLs => ("GET", "/info/refs?service=git-receive-pack", None),
            Service::UploadPack => (
                "POST",
                "/git-upload-pack",
                Some("application/x-git-upload-pack-request"),
            ),
            Service::ReceivePack => (
                "POST",
                "/git-receive-pack",
                Some("application/x-git-receive-pack-request"),
            ),
        };
        Ok(Box::new(HttpStream {
            url: format!("{base}{path}"),
            method,
            content_type,
            body: Vec::new(),
            response: None,
            chunk: bytes::Bytes::new(),
        }))
    }

    fn close(&self) -> Result<(), git2::Error> {
        Ok(())
    }
}

struct HttpStream {
    url: String,
    method: &'static str,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    response: Option<reqwest::Response>,
    chunk: bytes::Bytes,
}

impl HttpStream {
    /// Sends the request (with what libgit2 wrote as its body) and keeps the response.
    fn send(&mut self) -> io::Result<()> {
        let body = std::mem::take(&mut self.body);
        let url = self.url.clone();
        let (method, content_type) = (self.method, self.content_type);
        let response = STATE.with(|s| -> io::Result<_> {
            let state = s.borrow();
            let state = state
                .as_ref()
                .ok_or_else(|| io::Error::other("a Git HTTP request outside a berth session"))?;
            let mut request = match method {
                "GET" => state.client.get(&url),
                _ => state.client.post(&url).body(body),
            };
            if let Some(ct) = content_type {
                let accept = ct.replace("-request", "-result");
                request = request.header("content-type", ct).header("accept", accept);
            }
            if let Some(c) = &state.credentials {
                let token = base64::engine::general_purpose::STANDARD
                    .encode(format!("{}:{}", c.username, c.password));
                request = request.header("authorization", format!("Basic {token}"));
            }
            Ok(state.handle.block_on(request.send()))
        })?;
        let response = response.map_err(|e| io::Error::other(redact(&e.to_string())))?;
        let status = response.status();
        if !status.is_success() {
            let shown = redact(&url);
            STATE.with(|s| {
                if let Some(state) = s.borrow_mut().as_mut() {
                    state.refused = Some((status.as_u16(), shown.clone()));
                }
            });
            return Err(io::Error::other(format!("{shown}: HTTP {status}")));
        }
        self.response = Some(response);
        Ok(())
    }
}

/// A URL or error message without credentials in it.
fn redact(text: &str) -> String {
    match url::Url::parse(text) {
        Ok(mut u) if u.password().is_some() || !u.username().is_empty() => {
            let _ = u.set_password(None);
            let _ = u.set_username("");
            u.to_string()
        }
        _ => text.to_string(),
    }
}

impl Read for HttpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.response.is_none() {
            self.send()?;
        }
        while self.chunk.is_empty() {
            let Some(response) = self.response.as_mut() else {
                return Ok(0);
            };
            let handle = STATE.with(|s| s.borrow().as_ref().map(|s| s.handle.clone()));
            let handle = handle.ok_or_else(|| io::Error::other("no Git HTTP session"))?;
            match handle.block_on(response.chunk()) {
                Ok(Some(chunk)) => self.chunk = chunk,
                Ok(None) => return Ok(0),
                Err(e) => return Err(io::Error::other(e)),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

impl Write for HttpStream {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.response.is_some() {
            return Err(io::Error::other("the Git request was already sent"));
        }
        self.body.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
