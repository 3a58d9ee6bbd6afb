//! An OCI distribution client, enough to copy images between registries: manifests
//! (capped at 4 MiB), blobs streamed through without being held, existence checks before
//! sending, cross-repository mounts, tag and catalog listings, and referrers (the API, or
//! the OCI 1.1 fallback tag `<alg>-<hex>` where the registry has none).
//!
//! The same client talks to remote registries over HTTP(S) and to this berth in process
//! ([`Transport::InProcess`]).

mod auth;
mod error;
mod tls;
mod transport;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};

pub use auth::{Credentials, Scheme, parse_challenge};
pub use error::ClientError;
pub use tls::{TlsOptions, client_config};
pub use transport::{Call, Outgoing, Reply, Transport};

use crate::oci::{DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST};
use crate::oci::{Descriptor, Digest};
use auth::{TokenCache, TokenReply};

/// Manifests larger than this are refused (what berth itself accepts).
pub const MAX_MANIFEST_BYTES: usize = crate::registry::MAX_MANIFEST_BYTES;

/// Listings (tags, catalog, referrers) are read a page at a time, at most this much each.
const MAX_LISTING_BYTES: usize = 8 << 20;

/// At most this many tags or repositories are read from one listing.
const MAX_LISTED: usize = 100_000;

const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// Blobs larger than this are sent in chunks of this size.
pub const CHUNK_BYTES: u64 = 16 << 20;

/// A blob stream being cut into chunks: what the last chunk read past its end.
struct Split {
    stream: BoxStream<'static, Result<Bytes, std::io::Error>>,
    leftover: Option<Bytes>,
}

/// The next `n` bytes of `source`, as a stream of their own.
fn take(
    source: Arc<tokio::sync::Mutex<Split>>,
    n: u64,
) -> BoxStream<'static, Result<Bytes, std::io::Error>> {
    futures::stream::unfold((source, n), |(source, remaining)| async move {
        if remaining == 0 {
            return None;
        }
        let mut split = source.lock().await;
        let chunk = match split.leftover.take() {
            Some(b) => b,
            None => match split.stream.next().await {
                Some(Ok(b)) => b,
                Some(Err(e)) => {
                    drop(split);
                    return Some((Err(e), (source, 0)));
                }
                None => {
                    drop(split);
                    let e = std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the blob ended before its length",
                    );
                    return Some((Err(e), (source, 0)));
                }
            },
        };
        let mut chunk = chunk;
        if chunk.len() as u64 > remaining {
            split.leftover = Some(chunk.split_off(remaining as usize));
        }
        let left = remaining - chunk.len() as u64;
        drop(split);
        Some((Ok(chunk), (source, left)))
    })
    .boxed()
}

/// How long one request may take to start answering; bodies stream for as long as they flow.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A manifest as stored: its exact bytes, so its digest survives the copy.
#[derive(Debug, Clone)]
pub struct RawManifest {
    pub bytes: Bytes,
    pub media_type: String,
    pub digest: Digest,
}

/// A blob being read: its length and its bytes as they arrive.
pub struct BlobStream {
    pub len: u64,
    pub stream: BoxStream<'static, Result<Bytes, ClientError>>,
}

/// The start of a cross-repository mount: done, or an upload to finish.
pub enum Mount {
    Mounted,
    Upload(String),
}

/// One registry, with its credentials and the tokens it handed out.
pub struct Registry {
    transport: Transport,
    credentials: Option<Credentials>,
    scheme: tokio::sync::Mutex<Scheme>,
    tokens: tokio::sync::Mutex<TokenCache>,
}

/// The scope a token needs for a repository.
pub fn pull_scope(repo: &str) -> String {
    format!("repository:{repo}:pull")
}

pub fn push_scope(repo: &str) -> String {
    format!("repository:{repo}:pull,push")
}

impl Registry {
    /// A remote registry at `url` (`http://` or `https://`).
    pub fn remote(
        url: &str,
        credentials: Option<Credentials>,
        tls: &TlsOptions,
    ) -> Result<Self, ClientError> {
        let base = url::Url::parse(url).map_err(|e| ClientError::Invalid {
            what: "the remote URL".into(),
            url: url.into(),
            detail: e.to_string(),
        })?;
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls::client_config(tls)?)
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| ClientError::TlsConfig(e.to_string()))?;
        Ok(Registry {
            transport: Transport::Http { client, base },
            credentials,
            scheme: tokio::sync::Mutex::new(Scheme::Unknown),
            tokens: Default::default(),
        })
    }

    /// This berth, through its own router, as `identity`.
    pub fn in_process(app: axum::Router, identity: crate::auth::Identity) -> Self {
        Registry {
            transport: Transport::InProcess { app, identity },
            credentials: None,
            scheme: tokio::sync::Mutex::new(Scheme::Open),
            tokens: Default::default(),
        }
    }

    pub fn describe(&self) -> String {
        self.transport.describe()
    }

    /// Whether two clients reach the same registry (so a blob one has can be mounted).
    pub fn same_registry(&self, other: &Registry) -> bool {
        match (&self.transport, &other.transport) {
            (Transport::Http { base: a, .. }, Transport::Http { base: b, .. }) => {
                a.origin() == b.origin()
            }
            (Transport::InProcess { .. }, Transport::InProcess { .. }) => true,
            _ => false,
        }
    }

    /// `GET /v2/`: reachable, and (re)learns how it wants callers to sign in.
    pub async fn ping(&self) -> Result<(), ClientError> {
        let reply = self.transport.send(call(Method::GET, "/v2/")).await?;
        let mut scheme = self.scheme.lock().await;
        match reply.status {
            s if s.is_success() => *scheme = Scheme::Open,
            StatusCode::UNAUTHORIZED => {
                let challenge = reply
                    .header("www-authenticate")
                    .and_then(parse_challenge)
                    .ok_or_else(|| ClientError::Unauthorized {
                        url: reply.url.clone(),
                        detail: "it asks for authentication without a Basic or Bearer challenge"
                            .into(),
                    })?;
                *scheme = challenge.scheme;
                drop(scheme);
                // Check the credentials now, so a wrong password is reported as such.
                self.authorization(&[]).await?;
                if matches!(*self.scheme.lock().await, Scheme::Basic) {
                    let mut check = call(Method::GET, "/v2/");
                    self.add_auth(&mut check.headers, &[]).await?;
                    let reply = self.transport.send(check).await?;
                    if reply.status == StatusCode::UNAUTHORIZED {
                        return Err(ClientError::Unauthorized {
                            url: reply.url.clone(),
                            detail: reply.into_error().await.to_string(),
                        });
                    }
                }
            }
            _ => return Err(reply.into_error().await),
        }
        Ok(())
    }

    async fn scheme(&self) -> Result<Scheme, ClientError> {
        let known = self.scheme.lock().await.clone();
        if known != Scheme::Unknown {
            return Ok(known);
        }
        self.ping().await?;
        Ok(self.scheme.lock().await.clone())
    }

    /// The `Authorization` value for a request needing `scopes`, if any.
    async fn authorization(&self, scopes: &[String]) -> Result<Option<String>, ClientError> {
        match self.scheme.lock().await.clone() {
            Scheme::Unknown | Scheme::Open => Ok(None),
            Scheme::Basic => match &self.credentials {
                Some(c) => Ok(Some(c.basic_header())),
                None => Err(ClientError::Unauthorized {
                    url: self.describe(),
                    detail: "it asks for Basic credentials and the rule has none".into(),
                }),
            },
            Scheme::Bearer { realm, service } => {
                let key = scopes.join(" ");
                if let Some(token) = self.tokens.lock().await.get(&key) {
                    return Ok(Some(format!("Bearer {token}")));
                }
                let (token, lifetime) =
                    self.fetch_token(&realm, service.as_deref(), scopes).await?;
                self.tokens
                    .lock()
                    .await
                    .insert(key, token.clone(), lifetime);
                Ok(Some(format!("Bearer {token}")))
            }
        }
    }

    async fn add_auth(
        &self,
        headers: &mut HeaderMap,
        scopes: &[String],
    ) -> Result<(), ClientError> {
        if let Some(value) = self.authorization(scopes).await? {
            let value = HeaderValue::from_str(&value).map_err(|_| ClientError::Unauthorized {
                url: self.describe(),
                detail: "the credentials cannot be sent in a header".into(),
            })?;
            headers.insert(header::AUTHORIZATION, value);
        }
        Ok(())
    }

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
    ) -> Result<(String, Duration), ClientError> {
        let Transport::Http { client, .. } = &self.transport else {
            return Err(ClientError::Token {
                realm: realm.into(),
                detail: "no token flow in process".into(),
            });
        };
        let mut url = url::Url::parse(realm).map_err(|e| ClientError::Token {
            realm: realm.into(),
            detail: format!("the realm is not a URL: {e}"),
        })?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = service {
                query.append_pair("service", service);
            }
            for scope in scopes {
                query.append_pair("scope", scope);
            }
        }
        let mut request = client.get(url.clone());
        if let Some(c) = &self.credentials {
            request = request.basic_auth(&c.username, Some(&c.password));
        }
        let shown = realm.to_string();
        let response = request
            .send()
            .await
            .map_err(|e| ClientError::from_reqwest(&shown, &e))?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(ClientError::Unauthorized {
                url: shown,
                detail: format!("the token endpoint answered {status}"),
            });
        }
        if !status.is_success() {
            return Err(ClientError::Token {
                realm: shown,
                detail: format!("answered {status}"),
            });
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| ClientError::from_reqwest(&shown, &e))?;
        let reply: TokenReply = serde_json::from_slice(&body).map_err(|e| ClientError::Token {
            realm: shown.clone(),
            detail: format!("the answer is not a token: {e}"),
        })?;
        let token = reply
            .token
            .or(reply.access_token)
            .ok_or_else(|| ClientError::Token {
                realm: shown,
                detail: "the answer holds no token".into(),
            })?;
        Ok((
            token,
            Duration::from_secs(reply.expires_in.unwrap_or(60).max(1)),
        ))
    }

    /// Sends `call` with the credentials `scopes` need. A bodiless (or small) request
    /// refused with a new challenge is sent again once with a fresh token.
    pub async fn send(&self, mut call: Call, scopes: &[String]) -> Result<Reply, ClientError> {
        self.scheme().await?;
        let again = call.body.repeatable().map(|body| Call {
            method: call.method.clone(),
            target: call.target.clone(),
            headers: call.headers.clone(),
            body,
        });
        self.add_auth(&mut call.headers, scopes).await?;
        let reply = self.transport.send(call).await?;
        if reply.status != StatusCode::UNAUTHORIZED {
            return Ok(reply);
        }
        let challenge = reply.header("www-authenticate").and_then(parse_challenge);
        let Some(mut again) = again else {
            return Err(self.refused(reply).await);
        };
        match challenge {
            Some(c) => {
                let mut scopes: Vec<String> = scopes.to_vec();
                if let Some(scope) = c.scope {
                    for s in scope.split(' ') {
                        if !scopes.iter().any(|x| x == s) {
                            scopes.push(s.to_string());
                        }
                    }
                }
                self.tokens.lock().await.forget(&scopes.join(" "));
                *self.scheme.lock().await = c.scheme;
                self.add_auth(&mut again.headers, &scopes).await?;
            }
            None => return Err(self.refused(reply).await),
        }
        let reply = self.transport.send(again).await?;
        if reply.status == StatusCode::UNAUTHORIZED {
            return Err(self.refused(reply).await);
        }
        Ok(reply)
    }

    async fn refused(&self, reply: Reply) -> ClientError {
        ClientError::Unauthorized {
            url: reply.url.clone(),
            detail: reply.into_error().await.to_string(),
        }
    }

    /// The manifest `reference` (tag or digest) of `repo`, or `None` if it has none.
    pub async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<Option<RawManifest>, ClientError> {
        let mut c = call(Method::GET, &format!("/v2/{repo}/manifests/{reference}"));
        c.headers
            .insert(header::ACCEPT, HeaderValue::from_static(ACCEPT_MANIFESTS));
        let reply = self.send(c, &[pull_scope(repo)]).await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !reply.status.is_success() {
            return Err(reply.into_error().await);
        }
        let url = reply.url.clone();
        let media_type = reply
            .header("content-type")
            .map(|c| c.split(';').next().unwrap_or(c).trim().to_string());
        let bytes = reply.read("a manifest", MAX_MANIFEST_BYTES).await?;
        let digest = match reference.parse::<Digest>() {
            Ok(expected) => {
                let actual = Digest::of(expected.algorithm(), &bytes);
                if actual != expected {
                    return Err(ClientError::Invalid {
                        what: format!("manifest {reference}"),
                        url,
                        detail: format!("its content hashes to {actual}"),
                    });
                }
                expected
            }
            Err(_) => Digest::of(crate::oci::Algorithm::Sha256, &bytes),
        };
        let parsed = crate::oci::Manifest::parse(media_type.as_deref(), &bytes).map_err(|e| {
            ClientError::Invalid {
                what: format!("manifest {repo}:{reference}"),
                url: url.clone(),
                detail: e.to_string(),
            }
        })?;
        Ok(Some(RawManifest {
            bytes,
            media_type: parsed.media_type,
            digest,
        }))
    }

    /// The digest `reference` resolves to in `repo`, without reading the manifest.
    pub async fn manifest_digest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<Option<Digest>, ClientError> {
        let mut c = call(Method::HEAD, &format!("/v2/{repo}/manifests/{reference}"));
        c.headers
            .insert(header::ACCEPT, HeaderValue::from_static(ACCEPT_MANIFESTS));
        let reply = self.send(c, &[pull_scope(repo)]).await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !reply.status.is_success() {
            return Err(reply.into_error().await);
        }
        match reply
            .header("docker-content-digest")
            .and_then(|d| d.parse().ok())
        {
            Some(d) => Ok(Some(d)),
            // Some registries leave the header out of HEAD: read the manifest instead.
            None => Ok(self.get_manifest(repo, reference).await?.map(|m| m.digest)),
        }
    }

    /// Stores `manifest` under `reference` (a tag, or its digest). Returns whether the
    /// registry processed its `subject` (answered `OCI-Subject`), i.e. has a referrers API.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        manifest: &RawManifest,
    ) -> Result<bool, ClientError> {
        let mut c = call(Method::PUT, &format!("/v2/{repo}/manifests/{reference}"));
        c.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(&manifest.media_type).map_err(|_| ClientError::Invalid {
                what: "a manifest media type".into(),
                url: self.describe(),
                detail: manifest.media_type.clone(),
            })?,
        );
        c.body = Outgoing::Bytes(manifest.bytes.clone());
        let reply = self.send(c, &[push_scope(repo)]).await?;
        if reply.status != StatusCode::CREATED && !reply.status.is_success() {
            return Err(reply.into_error().await);
        }
        Ok(reply.header("oci-subject").is_some())
    }

    /// Whether `repo` can serve blob `digest`.
    pub async fn has_blob(&self, repo: &str, digest: &Digest) -> Result<bool, ClientError> {
        let c = call(Method::HEAD, &format!("/v2/{repo}/blobs/{digest}"));
        let reply = self.send(c, &[pull_scope(repo)]).await?;
        match reply.status {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(reply.into_error().await),
        }
    }

    /// Reads blob `digest` of `repo` as a stream.
    pub async fn get_blob(&self, repo: &str, digest: &Digest) -> Result<BlobStream, ClientError> {
        let c = call(Method::GET, &format!("/v2/{repo}/blobs/{digest}"));
        let reply = self.send(c, &[pull_scope(repo)]).await?;
        if !reply.status.is_success() {
            return Err(reply.into_error().await);
        }
        let len = reply
            .header("content-length")
            .and_then(|l| l.parse().ok())
            .ok_or_else(|| ClientError::Invalid {
                what: format!("blob {digest}"),
                url: reply.url.clone(),
                detail: "the response has no Content-Length".into(),
            })?;
        Ok(BlobStream {
            len,
            stream: reply.body,
        })
    }

    /// Asks `repo` to mount `digest` from `from` (same registry): mounted, or an upload
    /// session to send it through after all.
    pub async fn mount_blob(
        &self,
        repo: &str,
        digest: &Digest,
        from: &str,
    ) -> Result<Mount, ClientError> {
        let c = call(
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/?mount={digest}&from={from}"),
        );
        let reply = self.send(c, &[push_scope(repo), pull_scope(from)]).await?;
        match reply.status {
            StatusCode::CREATED => Ok(Mount::Mounted),
            StatusCode::ACCEPTED => Ok(Mount::Upload(location(&reply)?)),
            _ => Err(reply.into_error().await),
        }
    }

    /// Opens an upload session in `repo`; returns its location.
    pub async fn start_upload(&self, repo: &str) -> Result<String, ClientError> {
        let c = call(Method::POST, &format!("/v2/{repo}/blobs/uploads/"));
        let reply = self.send(c, &[push_scope(repo)]).await?;
        if reply.status != StatusCode::ACCEPTED {
            return Err(reply.into_error().await);
        }
        location(&reply)
    }

    /// Sends a blob to an upload session: up to [`CHUNK_BYTES`] in one streamed
    /// `PUT …?digest=`, larger ones as streamed `PATCH` chunks of that size (so no
    /// single request is larger than a proxy in front of the registry may allow) and an
    /// empty closing `PUT`. Nothing is held in memory beyond the chunk in flight.
    pub async fn finish_upload(
        &self,
        repo: &str,
        location: &str,
        digest: &Digest,
        blob: BlobStream,
    ) -> Result<(), ClientError> {
        let scopes = [push_scope(repo)];
        let len = blob.len;
        let source = blob
            .stream
            .map_err(|e| std::io::Error::other(e.to_string()))
            .boxed();
        let (mut location, last) = if len <= CHUNK_BYTES {
            (location.to_string(), Some(source))
        } else {
            let shared = Arc::new(tokio::sync::Mutex::new(Split {
                stream: source,
                leftover: None,
            }));
            let mut location = location.to_string();
            let mut offset = 0u64;
            while offset < len {
                let n = CHUNK_BYTES.min(len - offset);
                let mut c = call(Method::PATCH, &location);
                c.headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                c.headers.insert(
                    header::CONTENT_RANGE,
                    HeaderValue::from_str(&format!("{offset}-{}", offset + n - 1)).expect("digits"),
                );
                c.body = Outgoing::Stream {
                    stream: take(shared.clone(), n),
                    len: n,
                };
                let reply = self.send(c, &scopes).await?;
                if reply.status != StatusCode::ACCEPTED {
                    return Err(reply.into_error().await);
                }
                location = self::location(&reply)?;
                offset += n;
            }
            (location, None)
        };
        let separator = if location.contains('?') { '&' } else { '?' };
        location = format!("{location}{separator}digest={digest}");
        let mut c = call(Method::PUT, &location);
        c.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        c.body = match last {
            Some(stream) => Outgoing::Stream { stream, len },
            None => Outgoing::Empty,
        };
        let reply = self.send(c, &scopes).await?;
        if reply.status != StatusCode::CREATED {
            return Err(reply.into_error().await);
        }
        Ok(())
    }

    /// Every tag of `repo` (following `Link` pages); empty when the repository is unknown.
    pub async fn list_tags(&self, repo: &str) -> Result<Vec<String>, ClientError> {
        self.list(
            &format!("/v2/{repo}/tags/list"),
            "tags",
            &[pull_scope(repo)],
        )
        .await
    }

    /// The registry's catalog (following `Link` pages).
    pub async fn catalog(&self) -> Result<Vec<String>, ClientError> {
        self.list(
            "/v2/_catalog",
            "repositories",
            &["registry:catalog:*".to_string()],
        )
        .await
    }

    async fn list(
        &self,
        first: &str,
        field: &str,
        scopes: &[String],
    ) -> Result<Vec<String>, ClientError> {
        let mut out = Vec::new();
        let mut next = Some(first.to_string());
        while let Some(target) = next.take() {
            let reply = self.send(call(Method::GET, &target), scopes).await?;
            if reply.status == StatusCode::NOT_FOUND {
                break;
            }
            if !reply.status.is_success() {
                return Err(reply.into_error().await);
            }
            next = reply
                .header("link")
                .and_then(|l| l.split_once('<'))
                .and_then(|(_, rest)| rest.split_once('>'))
                .map(|(target, _)| target.to_string());
            let url = reply.url.clone();
            let body = reply.read("a listing", MAX_LISTING_BYTES).await?;
            let value: serde_json::Value =
                serde_json::from_slice(&body).map_err(|e| ClientError::Invalid {
                    what: "a listing".into(),
                    url: url.clone(),
                    detail: e.to_string(),
                })?;
            let page = value.get(field).and_then(|v| v.as_array());
            let before = out.len();
            out.extend(
                page.into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(str::to_string)),
            );
            if out.len() > MAX_LISTED {
                return Err(ClientError::TooLarge {
                    what: format!("the {field} listing"),
                    url,
                    limit: MAX_LISTED,
                });
            }
            if out.len() == before {
                break;
            }
        }
        Ok(out)
    }

    /// The manifests that refer to `digest` in `repo`: from the referrers API, or, where
    /// the registry has none, from the fallback tag `<alg>-<hex>`.
    pub async fn referrers(
        &self,
        repo: &str,
        digest: &Digest,
    ) -> Result<Vec<Descriptor>, ClientError> {
        let c = call(Method::GET, &format!("/v2/{repo}/referrers/{digest}"));
        let reply = self.send(c, &[pull_scope(repo)]).await?;
        let is_index = reply
            .header("content-type")
            .is_some_and(|t| t.starts_with(OCI_INDEX));
        if reply.status.is_success() && is_index {
            let url = reply.url.clone();
            let body = reply.read("a referrers index", MAX_MANIFEST_BYTES).await?;
            return descriptors_of(&body, &url);
        }
        if reply.status.is_success() || reply.status == StatusCode::NOT_FOUND {
            // Not an index (or no such API): the fallback tag scheme.
            match self.get_manifest(repo, &fallback_tag(digest)).await? {
                Some(index) => descriptors_of(&index.bytes, &self.describe()),
                None => Ok(Vec::new()),
            }
        } else {
            Err(reply.into_error().await)
        }
    }
}

/// The OCI 1.1 referrers fallback tag of a subject: `sha256-<hex>`.
pub fn fallback_tag(digest: &Digest) -> String {
    format!("{}-{}", digest.algorithm(), digest.hex())
}

/// Whether a tag is a referrers fallback tag (never replicated as a tag of its own).
pub fn is_fallback_tag(tag: &str) -> bool {
    tag.split_once('-').is_some_and(|(alg, hex)| {
        crate::oci::Algorithm::parse(alg).is_some_and(|a| a.hex_len() == hex.len())
            && hex.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

fn descriptors_of(body: &[u8], url: &str) -> Result<Vec<Descriptor>, ClientError> {
    #[derive(serde::Deserialize)]
    struct Index {
        #[serde(default)]
        manifests: Vec<Descriptor>,
    }
    serde_json::from_slice::<Index>(body)
        .map(|i| i.manifests)
        .map_err(|e| ClientError::Invalid {
            what: "a referrers index".into(),
            url: url.into(),
            detail: e.to_string(),
        })
}

/// Whether a media type names a manifest (rather than a blob).
pub fn is_manifest_type(media_type: &str) -> bool {
    matches!(
        media_type,
        OCI_MANIFEST | OCI_INDEX | DOCKER_MANIFEST | DOCKER_MANIFEST_LIST
    )
}

fn call(method: Method, target: &str) -> Call {
    Call {
        method,
        target: target.to_string(),
        headers: HeaderMap::new(),
        body: Outgoing::Empty,
    }
}

fn location(reply: &Reply) -> Result<String, ClientError> {
    reply
        .header("location")
        .map(str::to_string)
        .ok_or_else(|| ClientError::Invalid {
            what: "an upload session".into(),
            url: reply.url.clone(),
            detail: "the answer has no Location".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_tags_are_recognised() {
        let d: Digest = format!("sha256:{}", "a".repeat(64)).parse().unwrap();
        assert_eq!(fallback_tag(&d), format!("sha256-{}", "a".repeat(64)));
        assert!(is_fallback_tag(&fallback_tag(&d)));
        assert!(!is_fallback_tag("sha256-abc"));
        assert!(!is_fallback_tag("v1.0"));
    }
}
