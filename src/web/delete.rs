//! Deleting tags and repositories from the pages. A tag goes through the registry's
//! own `DELETE /v2/<name>/manifests/<tag>` path (authorization, immutable tags, the
//! tag lock), so the page can do nothing a registry client could not.

use axum::body::Body;
use axum::http::{HeaderMap, Method};
use serde::{Deserialize, Serialize};

use super::browse::{may, readable};
use super::error::{ApiCode, ApiError, ApiResult};
use crate::auth::Identity;
use crate::oci::{Reference, RepositoryName, Tag};
use crate::policy::Action;
use crate::registry::{self, RegistryState, routes::Route};

/// Tags one batch request may delete.
pub const MAX_BATCH: usize = 1000;

/// A registry request on behalf of an API caller.
pub fn registry_request(
    identity: &Identity,
    headers: &HeaderMap,
    method: Method,
    query: Vec<(String, String)>,
) -> registry::Request {
    let mut forwarded = HeaderMap::new();
    for name in [axum::http::header::HOST, axum::http::header::CONTENT_TYPE] {
        if let Some(v) = headers.get(&name) {
            forwarded.insert(name, v.clone());
        }
    }
    registry::Request {
        method,
        headers: forwarded,
        query,
        identity: identity.clone(),
        client: None,
        in_process: None,
    }
}

pub async fn delete_tag(
    state: &RegistryState,
    identity: &Identity,
    headers: &HeaderMap,
    repo: &RepositoryName,
    tag: &str,
) -> ApiResult<()> {
    let tag: Tag = tag
        .parse()
        .map_err(|_| ApiError::not_found(format!("tag {tag} of {repo}")))?;
    let route = Route::Manifest(repo.clone(), Reference::Tag(tag));
    let req = registry_request(identity, headers, Method::DELETE, Vec::new());
    registry::perform(state, route, req, Body::empty()).await?;
    Ok(())
}

#[derive(Deserialize)]
pub struct Batch {
    pub tags: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    pub tag: String,
    pub deleted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Deletes each tag of `batch` in turn; each succeeds or fails on its own (one
/// immutable tag does not keep the others).
pub async fn delete_tags(
    state: &RegistryState,
    identity: &Identity,
    headers: &HeaderMap,
    name: &str,
    batch: Batch,
) -> ApiResult<Vec<Outcome>> {
    let snapshot = state.policy.current();
    let repo = readable(&snapshot, identity, name)?;
    if batch.tags.len() > MAX_BATCH {
        return Err(ApiError::new(
            ApiCode::BadRequest,
            format!("at most {MAX_BATCH} tags per request"),
        ));
    }
    if !may(&snapshot, identity, &repo, Action::Delete) {
        return Err(denied(&snapshot, identity, &repo));
    }
    let mut outcomes = Vec::new();
    for tag in super::browse::unique_tags(&batch.tags) {
        let result = delete_tag(state, identity, headers, &repo, &tag).await;
        outcomes.push(Outcome {
            deleted: result.is_ok(),
            error: result.err().map(|e| e.message),
            tag,
        });
    }
    Ok(outcomes)
}

fn denied(
    snapshot: &crate::policy::Snapshot,
    identity: &Identity,
    repo: &RepositoryName,
) -> ApiError {
    let message = snapshot
        .may(
            &identity.caller,
            repo,
            Action::Delete,
            jiff::Timestamp::now(),
        )
        .err()
        .map(|d| d.to_string())
        .unwrap_or_else(|| "denied".into());
    ApiError::new(ApiCode::Denied, message)
}

/// Deletes a whole repository: refused while any tag of it is immutable. Runs under
/// the repository's tag lock, so no push lands a tag halfway through.
pub async fn delete_repository(
    state: &RegistryState,
    identity: &Identity,
    name: &str,
) -> ApiResult<u64> {
    let snapshot = state.policy.current();
    let repo = readable(&snapshot, identity, name)?;
    if !may(&snapshot, identity, &repo, Action::Delete) {
        return Err(denied(&snapshot, identity, &repo));
    }
    let _tags = state
        .store
        .lock_tags(&registry::limits::tag_scope(state, &repo))
        .await;
    let tags = state.store.list_tags(&repo).await?.unwrap_or_default();
    if let Some((tag, pattern)) = tags
        .iter()
        .find_map(|t| snapshot.immutable_pattern(&repo, t).map(|p| (t, p)))
    {
        return Err(ApiError::new(
            ApiCode::Denied,
            format!(
                "repository {repo} has the immutable tag {tag} (it matches {pattern:?} in spec.immutableTags): it cannot be deleted"
            ),
        ));
    }
    Ok(state.store.delete_repository(&repo).await?)
}
