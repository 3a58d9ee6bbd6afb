//! The OCI Distribution API over HTTP. A request is parsed into a [`routes::Route`]
//! once, then handed to the handler for its area; handlers are thin: they read
//! headers and query, make one storage call, and shape the reply.

pub(crate) mod access;
mod blobs;
mod catalog;
pub mod content_range;
pub mod error;
pub mod events;
pub(crate) mod limits;
mod manifests;
mod pagination;
mod referrers;
pub mod routes;
mod tags;
mod token_endpoint;
mod uploads;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;

use crate::auth::{Auth, Identity};
use crate::metrics::Metrics;
use crate::oci::RepositoryName;
use crate::policy::Policy;
use crate::storage::Store;
use error::{ErrorCode, RegistryError, Result};
pub use manifests::MAX_MANIFEST_BYTES;
use routes::Route;

/// What every registry handler can use.
#[derive(Clone)]
pub struct RegistryState {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub policy: Policy,
    pub events: events::PushEvents,
    pub auth: Auth,
}

impl RegistryState {
    /// Refuses writes into namespaces (or undeclared repositories) the configuration does not allow.
    pub(crate) fn check_push(&self, repo: &RepositoryName) -> Result<()> {
        self.policy
            .current()
            .check_push(repo)
            .map_err(|refusal| RegistryError::new(ErrorCode::Denied, refusal.to_string()))
    }
}

/// The route label of a response, for the metrics middleware.
#[derive(Clone, Copy, Debug)]
pub struct RouteLabel(pub &'static str);

/// A caller inside this process — the sync engine storing what it pulls from another
/// registry — attached as a request extension. Only code in this process can attach one
/// (nothing on the wire becomes an extension), so it needs no credentials; everything
/// else a push meets (namespace checks, quotas, immutable tags, push events) still applies.
#[derive(Debug, Clone)]
pub struct InProcessCaller(pub Identity);

/// A parsed request as handlers see it. The body travels separately: it is not `Sync`,
/// and handlers borrow the rest across awaits.
pub struct Request {
    pub method: Method,
    pub headers: HeaderMap,
    pub query: Vec<(String, String)>,
    /// Who is calling, once admitted.
    pub identity: Identity,
    /// The peer's address, for throttling failed sign-ins.
    pub client: Option<std::net::IpAddr>,
    /// Set for requests made by berth itself (see [`InProcessCaller`]).
    pub in_process: Option<Identity>,
}

impl Request {
    pub fn query(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn query_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.query
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn header(&self, name: header::HeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub fn router(state: RegistryState) -> Router {
    Router::new()
        .route("/v2", any(dispatch))
        .route("/v2/", any(dispatch))
        .route("/v2/{*rest}", any(dispatch))
        .route(
            crate::auth::challenge::TOKEN_PATH,
            axum::routing::get(token_endpoint::get).post(token_endpoint::post),
        )
        .with_state(state)
}

async fn dispatch(State(state): State<RegistryState>, request: axum::extract::Request) -> Response {
    let (parts, body) = request.into_parts();
    let route = routes::parse(parts.uri.path());
    let label = route.as_ref().map_or("invalid", Route::label);
    let request = Request {
        method: parts.method,
        headers: parts.headers,
        query: parts
            .uri
            .query()
            .map(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .into_owned()
                    .collect()
            })
            .unwrap_or_default(),
        identity: Identity::nobody(),
        client: parts
            .extensions
            .get::<axum::extract::connect_info::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip()),
        in_process: parts
            .extensions
            .get::<InProcessCaller>()
            .map(|c| c.0.clone()),
    };
    let result = match route {
        Ok(route) => handle(&state, route, request, body).await,
        Err(e) => Err(e),
    };
    let mut response = result.unwrap_or_else(IntoResponse::into_response);
    response.extensions_mut().insert(RouteLabel(label));
    response.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    response
}

/// The most of a refused request's body read (and thrown away) before answering.
const DISCARDED_BODY_LIMIT: u64 = 4 << 20;

/// Reads and discards the body of a refused request when it is small (a manifest's
/// worth, declared by Content-Length): a client that sends its first request without
/// credentials and is still writing would otherwise see the connection close under
/// it, a broken pipe instead of the 401 that tells it to fetch a token. Larger or
/// unsized bodies are not read; their connection closes.
async fn discard_small_body(req: &Request, body: Body) {
    use http_body_util::BodyExt as _;
    let declared = req
        .header(header::CONTENT_LENGTH)
        .and_then(|l| l.parse::<u64>().ok());
    if !declared.is_some_and(|l| l > 0 && l <= DISCARDED_BODY_LIMIT) {
        return;
    }
    let drain = async {
        let mut body = body;
        let mut read = 0;
        while let Some(Ok(frame)) = body.frame().await {
            read += frame.data_ref().map_or(0, |d| d.len() as u64);
            if read > DISCARDED_BODY_LIMIT {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), drain).await;
}

async fn handle(
    state: &RegistryState,
    route: Route,
    mut req: Request,
    body: Body,
) -> Result<Response> {
    req.identity = match access::admit(state, &route, &req).await {
        Ok(identity) => identity,
        Err(refusal) => {
            discard_small_body(&req, body).await;
            return Err(refusal);
        }
    };
    handle_admitted(state, route, req, body).await
}

/// Runs a registry operation for a caller authenticated elsewhere (`req.identity`, e.g.
/// by the web API): the same authorization, quota, immutability and tag-lock checks,
/// and the same handler, as the request would meet on `/v2/`.
pub(crate) async fn perform(
    state: &RegistryState,
    route: Route,
    req: Request,
    body: Body,
) -> Result<Response> {
    access::authorize_route(state, &route, &req, &req.identity)?;
    handle_admitted(state, route, req, body).await
}

async fn handle_admitted(
    state: &RegistryState,
    route: Route,
    mut req: Request,
    body: Body,
) -> Result<Response> {
    if let Route::Uploads(_) = &route
        && req.query("mount").is_some()
        && !state.policy.current().open
        && !access::may_mount(state, &route, &req)?
    {
        req.query.retain(|(k, _)| k != "mount" && k != "from");
    }
    let writes = matches!(req.method, Method::PUT | Method::POST | Method::PATCH);
    if writes && let Some(repo) = route.repository() {
        state.check_push(repo)?;
    }
    // Tag writes and deletes of one scope are serialised, so the quota counted and the
    // tag checked by `limits` are still true when the handler writes.
    let _tags_guard = match (&route, &req.method) {
        (Route::Manifest(repo, _), &Method::PUT | &Method::DELETE) => {
            Some(state.store.lock_tags(&limits::tag_scope(state, repo)).await)
        }
        _ => None,
    };
    let tripwire = limits::Tripwire::default();
    let body = limits::check(state, &route, &req, body, &tripwire).await?;
    let upload_id = match &route {
        Route::Upload(repo, id) => Some((repo.clone(), id.clone())),
        _ => None,
    };
    let result = dispatch_route(state, route, &req, body).await;
    if result.is_err()
        && let Some(refusal) = tripwire.tripped()
    {
        // Cut off for going past a byte quota: the upload can never complete.
        if let Some((repo, id)) = upload_id {
            let _ = state.store.cancel_upload(&repo, &id).await;
        }
        return Err(refusal);
    }
    result
}

async fn dispatch_route(
    state: &RegistryState,
    route: Route,
    req: &Request,
    body: Body,
) -> Result<Response> {
    match (route, req.method.clone()) {
        (Route::Base, Method::GET | Method::HEAD) => {
            Ok(json_response(StatusCode::OK, b"{}".to_vec()))
        }
        (Route::Catalog, Method::GET) => catalog::list(state, req).await,
        (Route::Tags(name), Method::GET) => tags::list(state, &name, req).await,
        (Route::Manifest(name, reference), Method::GET | Method::HEAD) => {
            manifests::get(state, &name, &reference, req).await
        }
        (Route::Manifest(name, reference), Method::PUT) => {
            manifests::put(state, &name, &reference, req, body).await
        }
        (Route::Manifest(name, reference), Method::DELETE) => {
            manifests::delete(state, &name, &reference).await
        }
        (Route::Blob(name, digest), Method::GET | Method::HEAD) => {
            blobs::get(state, &name, &digest, req).await
        }
        (Route::Blob(name, digest), Method::DELETE) => blobs::delete(state, &name, &digest).await,
        (Route::Uploads(name), Method::POST) => uploads::start(state, &name, req, body).await,
        (Route::Upload(name, id), Method::GET) => uploads::status(state, &name, &id).await,
        (Route::Upload(name, id), Method::PATCH) => {
            uploads::patch(state, &name, &id, req, body).await
        }
        (Route::Upload(name, id), Method::PUT) => {
            uploads::finish(state, &name, &id, req, body).await
        }
        (Route::Upload(name, id), Method::DELETE) => uploads::cancel(state, &name, &id).await,
        (Route::Referrers(name, digest), Method::GET) => {
            referrers::list(state, &name, &digest, req).await
        }
        (route, method) => Err(RegistryError::new(
            ErrorCode::Unsupported,
            format!(
                "{method} is not supported on the {} endpoint",
                route.label()
            ),
        )),
    }
}

pub(crate) fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// A header value from text berth generated itself (names, digests, numbers: all ASCII).
pub(crate) fn header_value(s: impl AsRef<str>) -> HeaderValue {
    HeaderValue::from_str(s.as_ref()).expect("generated header values are ASCII")
}
