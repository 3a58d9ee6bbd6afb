//! The web UI and its JSON API, on the registry's port: pages under `/ui/` (plain
//! HTML, CSS and JavaScript embedded in the binary) and the API under `/api/`, which
//! the pages use and scripts may use too. Every operation asks the registry's own
//! access decision, and writes go through the registry's own paths (see `delete.rs`,
//! `upload/`), so the UI can do nothing a registry client could not.

pub mod browse;
pub mod csrf;
pub mod delete;
pub mod error;
pub mod image;
pub mod markdown;
pub mod pages;
pub mod runs;
pub mod session;
pub mod upload;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::registry::RegistryState;
use error::{ApiCode, ApiError, ApiResult};
use session::{caller, client};

/// What the web handlers use: the registry, and the cluster when berth runs as an operator.
#[derive(Clone)]
pub struct WebState {
    pub registry: RegistryState,
    pub cluster: Option<runs::Cluster>,
}

pub fn router(state: WebState) -> Router {
    let api = Router::new()
        .route(
            "/api/session",
            post(session::sign_in)
                .get(session::who_am_i)
                .delete(session::sign_out),
        )
        .route("/api/namespaces", get(browse::namespaces))
        .route(
            "/api/namespaces/{namespace}/repositories",
            get(browse::repositories),
        )
        .with_state(state.registry.clone())
        .route(
            "/api/repositories/{*rest}",
            get(repository_get)
                .post(repository_post)
                .delete(repository_delete),
        )
        .with_state(state.clone())
        .layer(middleware::from_fn(csrf::guard))
        .layer(middleware::from_fn(api_headers));
    Router::new().merge(api).merge(pages::router())
}

/// No caching of answers that depend on who asks; no sniffing.
async fn api_headers(request: axum::extract::Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// `/api/repositories/<name>[/-/<what>[/<tag>]]`: repository names contain slashes, so
/// the sub-resource follows a `/-/` separator, as on GitLab.
enum Target<'a> {
    Repository(&'a str),
    Tags(&'a str),
    Tag(&'a str, &'a str),
    DeleteTags(&'a str),
    Upload(&'a str),
}

fn target(rest: &str) -> ApiResult<Target<'_>> {
    let bad = || {
        ApiError::new(
            ApiCode::NotFound,
            format!("no API endpoint at /api/repositories/{rest}"),
        )
    };
    match rest.split_once("/-/") {
        None => Ok(Target::Repository(rest.trim_end_matches('/'))),
        Some((name, "tags")) => Ok(Target::Tags(name)),
        Some((name, "delete-tags")) => Ok(Target::DeleteTags(name)),
        Some((name, "upload")) => Ok(Target::Upload(name)),
        Some((name, sub)) => match sub.strip_prefix("tags/") {
            Some(tag) if !tag.is_empty() && !tag.contains('/') => Ok(Target::Tag(name, tag)),
            _ => Err(bad()),
        },
    }
}

async fn repository_get(
    State(state): State<WebState>,
    connect: session::Client,
    headers: HeaderMap,
    Path(rest): Path<String>,
    Query(paging): Query<browse::Paging>,
) -> ApiResult<Response> {
    let identity = caller(&state.registry, &headers, client(connect)).await?;
    match target(&rest)? {
        Target::Repository(name) | Target::Tags(name) => Ok(Json(
            browse::repository(&state.registry, &identity, &headers, name, &paging).await?,
        )
        .into_response()),
        Target::Tag(name, tag) => {
            Ok(Json(browse::tag(&state, &identity, &headers, name, tag).await?).into_response())
        }
        _ => Err(ApiError::new(
            ApiCode::BadRequest,
            format!("GET is not supported on /api/repositories/{rest}"),
        )),
    }
}

#[derive(serde::Deserialize)]
struct UploadQuery {
    tag: String,
}

async fn repository_post(
    State(state): State<WebState>,
    connect: session::Client,
    headers: HeaderMap,
    Path(rest): Path<String>,
    request: axum::extract::Request,
) -> ApiResult<Response> {
    let identity = caller(&state.registry, &headers, client(connect)).await?;
    match target(&rest)? {
        Target::DeleteTags(name) => {
            let bytes = axum::body::to_bytes(request.into_body(), 1 << 20)
                .await
                .map_err(|e| {
                    ApiError::new(ApiCode::BadRequest, format!("reading the request: {e}"))
                })?;
            let batch: delete::Batch = serde_json::from_slice(&bytes).map_err(|e| {
                ApiError::new(
                    ApiCode::BadRequest,
                    format!("expected {{\"tags\": [...]}}: {e}"),
                )
            })?;
            let outcomes =
                delete::delete_tags(&state.registry, &identity, &headers, name, batch).await?;
            Ok(Json(outcomes).into_response())
        }
        Target::Upload(name) => {
            let query: Query<UploadQuery> = Query::try_from_uri(request.uri())
                .map_err(|_| ApiError::new(ApiCode::BadRequest, "the upload needs ?tag=NAME"))?;
            let tag: crate::oci::Tag = query.tag.parse().map_err(|_| {
                ApiError::new(
                    ApiCode::BadRequest,
                    format!("{:?} is not a valid tag", query.tag),
                )
            })?;
            let snapshot = state.registry.policy.current();
            let repo = browse::readable(&snapshot, &identity, name).or_else(|_| {
                // A repository that does not exist yet can be created by a push.
                name.parse::<crate::oci::RepositoryName>()
                    .map_err(|_| ApiError::not_found(format!("repository {name}")))
            })?;
            if !browse::may(&snapshot, &identity, &repo, crate::policy::Action::Push) {
                if !browse::may(&snapshot, &identity, &repo, crate::policy::Action::Pull) {
                    return Err(ApiError::not_found(format!("repository {repo}")));
                }
                let why = snapshot
                    .may(
                        &identity.caller,
                        &repo,
                        crate::policy::Action::Push,
                        jiff::Timestamp::now(),
                    )
                    .err()
                    .map(|d| d.to_string())
                    .unwrap_or_default();
                return Err(ApiError::new(ApiCode::Denied, why));
            }
            let declared = headers
                .get(header::CONTENT_LENGTH)
                .and_then(|l| l.to_str().ok())
                .and_then(|l| l.parse().ok());
            let pusher = upload::Pusher {
                state: &state.registry,
                identity: &identity,
                headers: &headers,
                repo,
            };
            let uploaded = upload::upload(pusher, tag, request.into_body(), declared).await?;
            Ok((axum::http::StatusCode::CREATED, Json(uploaded)).into_response())
        }
        _ => Err(ApiError::new(
            ApiCode::BadRequest,
            format!("POST is not supported on /api/repositories/{rest}"),
        )),
    }
}

async fn repository_delete(
    State(state): State<WebState>,
    connect: session::Client,
    headers: HeaderMap,
    Path(rest): Path<String>,
) -> ApiResult<Response> {
    let identity = caller(&state.registry, &headers, client(connect)).await?;
    match target(&rest)? {
        Target::Tag(name, tag) => {
            let snapshot = state.registry.policy.current();
            let repo = browse::readable(&snapshot, &identity, name)?;
            delete::delete_tag(&state.registry, &identity, &headers, &repo, tag).await?;
            Ok(axum::http::StatusCode::NO_CONTENT.into_response())
        }
        Target::Repository(name) => {
            let removed = delete::delete_repository(&state.registry, &identity, name).await?;
            Ok(Json(serde_json::json!({ "removedObjects": removed })).into_response())
        }
        _ => Err(ApiError::new(
            ApiCode::BadRequest,
            format!(
                "{} is not supported on /api/repositories/{rest}",
                Method::DELETE
            ),
        )),
    }
}
