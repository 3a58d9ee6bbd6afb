//! How requests reach a registry: over HTTP(S) with reqwest, or — for this berth —
//! straight into its own router, so that what a sync stores takes exactly the path a
//! client's push takes (namespace checks, quotas, immutable tags, push events).

use axum::http::{HeaderMap, Method, StatusCode};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use tower::ServiceExt as _;

use super::ClientError;
use crate::auth::Identity;
use crate::registry::InProcessCaller;

/// A request body.
pub enum Outgoing {
    Empty,
    Bytes(Bytes),
    /// A streamed body of a known length (a blob on its way from the other registry).
    Stream {
        stream: BoxStream<'static, Result<Bytes, std::io::Error>>,
        len: u64,
    },
}

impl Outgoing {
    /// Whether the body can be sent again (after an authentication challenge).
    pub fn repeatable(&self) -> Option<Outgoing> {
        match self {
            Outgoing::Empty => Some(Outgoing::Empty),
            Outgoing::Bytes(b) => Some(Outgoing::Bytes(b.clone())),
            Outgoing::Stream { .. } => None,
        }
    }
}

/// One request: `target` is a path (`/v2/…?query`) or, for an upload location a remote
/// gave, an absolute URL.
pub struct Call {
    pub method: Method,
    pub target: String,
    pub headers: HeaderMap,
    pub body: Outgoing,
}

/// A response whose body has not been read yet.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: BoxStream<'static, Result<Bytes, ClientError>>,
    /// What was asked, for error messages.
    pub url: String,
    pub method: Method,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Reads the body, refusing more than `limit` bytes.
    pub async fn read(mut self, what: &str, limit: usize) -> Result<Bytes, ClientError> {
        let mut buf = bytes::BytesMut::new();
        while let Some(chunk) = self.body.next().await {
            let chunk = chunk?;
            if buf.len() + chunk.len() > limit {
                return Err(ClientError::TooLarge {
                    what: what.into(),
                    url: self.url,
                    limit,
                });
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    }

    /// The error for an unexpected status, with the OCI error code and message if any.
    pub async fn into_error(self) -> ClientError {
        let (method, url, status) = (self.method.to_string(), self.url.clone(), self.status);
        let body = self
            .read("an error body", 64 << 10)
            .await
            .unwrap_or_default();
        let parsed: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
        let first = parsed
            .as_ref()
            .and_then(|v| v.get("errors"))
            .and_then(|e| e.get(0));
        let code = first
            .and_then(|e| e.get("code"))
            .and_then(|c| c.as_str())
            .map(str::to_string);
        let detail = match first
            .and_then(|e| e.get("message"))
            .and_then(|m| m.as_str())
        {
            Some(m) => format!("{} {m}", code.as_deref().unwrap_or(""))
                .trim()
                .to_string(),
            None => String::from_utf8_lossy(&body[..body.len().min(300)])
                .trim()
                .to_string(),
        };
        let detail = if detail.is_empty() {
            status.canonical_reason().unwrap_or("").to_string()
        } else {
            detail
        };
        ClientError::Status {
            method,
            url,
            status: status.as_u16(),
            code,
            detail,
        }
    }
}

/// Where requests go.
#[derive(Clone)]
pub enum Transport {
    Http {
        client: reqwest::Client,
        base: url::Url,
    },
    /// This berth's own registry router, called as `identity`.
    InProcess {
        app: axum::Router,
        identity: Identity,
    },
}

impl Transport {
    pub fn describe(&self) -> String {
        match self {
            Transport::Http { base, .. } => base.as_str().trim_end_matches('/').to_string(),
            Transport::InProcess { .. } => "berth (this registry)".to_string(),
        }
    }

    fn url_of(&self, target: &str) -> String {
        match self {
            Transport::Http { base, .. } if !target.starts_with("http") => base
                .join(target)
                .map(|u| u.to_string())
                .unwrap_or_else(|_| target.to_string()),
            _ => target.to_string(),
        }
    }

    pub async fn send(&self, call: Call) -> Result<Reply, ClientError> {
        let url = self.url_of(&call.target);
        let method = call.method.clone();
        match self {
            Transport::Http { client, .. } => {
                let mut request = client.request(call.method, &url).headers(call.headers);
                request = match call.body {
                    Outgoing::Empty => request,
                    Outgoing::Bytes(b) => request.body(b),
                    Outgoing::Stream { stream, len } => request
                        .header(reqwest::header::CONTENT_LENGTH, len)
                        .body(reqwest::Body::wrap_stream(stream)),
                };
                let response = request
                    .send()
                    .await
                    .map_err(|e| ClientError::from_reqwest(&url, &e))?;
                let status = response.status();
                let headers = response.headers().clone();
                let shown = url.clone();
                let body = response
                    .bytes_stream()
                    .map_err(move |e| ClientError::from_reqwest(&shown, &e))
                    .boxed();
                Ok(Reply {
                    status,
                    headers,
                    body,
                    url,
                    method,
                })
            }
            Transport::InProcess { app, identity } => {
                let mut headers = call.headers;
                let (body, len) = match call.body {
                    Outgoing::Empty => (axum::body::Body::empty(), 0),
                    Outgoing::Bytes(b) => {
                        let len = b.len() as u64;
                        (axum::body::Body::from(b), len)
                    }
                    Outgoing::Stream { stream, len } => {
                        (axum::body::Body::from_stream(stream), len)
                    }
                };
                // Quotas are checked against the declared length before a byte is stored.
                headers.insert(
                    axum::http::header::CONTENT_LENGTH,
                    axum::http::HeaderValue::from(len),
                );
                let mut request = axum::http::Request::builder()
                    .method(call.method)
                    .uri(&call.target)
                    .body(body)
                    .map_err(|e| ClientError::Invalid {
                        what: "a request".into(),
                        url: url.clone(),
                        detail: e.to_string(),
                    })?;
                *request.headers_mut() = headers;
                request
                    .extensions_mut()
                    .insert(InProcessCaller(identity.clone()));
                let response = match app.clone().oneshot(request).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                };
                let (parts, body) = response.into_parts();
                let shown = url.clone();
                let body = body
                    .into_data_stream()
                    .map_err(move |e| ClientError::Body {
                        url: shown.clone(),
                        detail: e.to_string(),
                    })
                    .boxed();
                Ok(Reply {
                    status: parts.status,
                    headers: parts.headers,
                    body,
                    url,
                    method,
                })
            }
        }
    }
}
