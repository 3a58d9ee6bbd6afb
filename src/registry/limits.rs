//! Quotas and immutable tags, enforced before a request stores or deletes anything:
//! a push that would exceed a quota, overwrite an immutable tag or delete one is
//! refused with `DENIED`, and nothing of it is kept. Costs nothing for repositories
//! without quotas or immutable tags.
//!
//! Exactness under concurrency: tag counts are checked and tags written under one
//! lock per scope (see `Store::lock_tags`), so racing pushes never exceed `maxTags`.
//! Bytes count as they arrive: usage is what is committed plus what sits in upload
//! sessions, and a body that streams past what is left is cut off mid-stream with
//! `DENIED`. Uploads running at the same moment each see the others' bytes only as
//! far as they have arrived, so `maxBytes` can be exceeded by at most the blobs in
//! flight at once.

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{Method, header};
use bytes::Bytes;
use futures::StreamExt as _;
use http_body_util::BodyExt as _;

use super::error::{ErrorCode, RegistryError, Result};
use super::routes::Route;
use super::{RegistryState, Request};
use crate::oci::{Digest, Reference, RepositoryName, Tag};
use crate::policy::{QuotaScope, Snapshot};

/// Manifests are at most this big (the handler refuses larger ones itself).
const MANIFEST_LIMIT: usize = 4 * 1024 * 1024;

fn denied(message: String) -> RegistryError {
    RegistryError::new(ErrorCode::Denied, message)
}

fn content_length(req: &Request) -> u64 {
    req.header(header::CONTENT_LENGTH)
        .and_then(|l| l.parse().ok())
        .unwrap_or(0)
}

fn scope_name(scope: QuotaScope, repo: &RepositoryName) -> String {
    match scope {
        QuotaScope::Namespace => format!("namespace {}", repo.namespace()),
        QuotaScope::Repository => format!("repository {repo}"),
    }
}

/// Bytes and tags now held by `repo`, or by its whole namespace.
async fn usage(
    state: &RegistryState,
    scope: QuotaScope,
    repo: &RepositoryName,
) -> Result<(u64, u64)> {
    let repos: Vec<RepositoryName> = match scope {
        QuotaScope::Repository => vec![repo.clone()],
        QuotaScope::Namespace => {
            let prefix = format!("{}/", repo.namespace());
            state
                .store
                .list_repositories()
                .await?
                .into_iter()
                .filter(|r| r.starts_with(&prefix))
                .filter_map(|r| r.parse().ok())
                .collect()
        }
    };
    let (mut bytes, mut tags) = (0, 0);
    for r in &repos {
        let u = state.store.repository_usage(r).await?;
        bytes += u.bytes;
        tags += u.tags;
    }
    let in_sessions = state
        .store
        .bytes_in_uploads(|r| repos.iter().any(|x| x.as_str() == r))
        .await?;
    Ok((bytes.saturating_add(in_sessions), tags))
}

/// The bytes `repo` may still take before some byte quota is full; `None` without one.
async fn byte_budget(
    state: &RegistryState,
    snapshot: &Snapshot,
    repo: &RepositoryName,
) -> Result<Option<(u64, String)>> {
    let mut budget: Option<(u64, String)> = None;
    for (scope, quota) in snapshot.quotas(repo) {
        let Some(max) = quota.max_bytes else { continue };
        let (used, _) = usage(state, scope, repo).await?;
        let left = (max.max(0) as u64).saturating_sub(used);
        if budget.as_ref().is_none_or(|(b, _)| left < *b) {
            let why = format!(
                "quota exceeded: {} holds {used} bytes and this upload went past its quota of {max} bytes (spec.quota.maxBytes); the upload is cancelled",
                scope_name(scope, repo)
            );
            budget = Some((left, why));
        }
    }
    Ok(budget)
}

/// Set when a body was cut off for going past a byte quota, with the reason to give.
#[derive(Clone, Default)]
pub struct Tripwire(Arc<OnceLock<String>>);

impl Tripwire {
    pub fn tripped(&self) -> Option<RegistryError> {
        self.0.get().map(|why| denied(why.clone()))
    }
}

/// After a cut-off, the rest of a body is still read (and dropped) up to this much, so
/// the client gets to read the refusal instead of a connection reset mid-send.
const DRAIN_LIMIT: u64 = 64 << 20;

/// `body`, cut off with an error once more than `budget` bytes have arrived.
fn metered(body: Body, budget: u64, why: String, tripwire: &Tripwire) -> Body {
    let tripwire = tripwire.clone();
    let stream = futures::stream::unfold(
        (body.into_data_stream(), 0u64, false),
        move |(mut inner, seen, done)| {
            let (tripwire, why) = (tripwire.clone(), why.clone());
            async move {
                if done {
                    return None;
                }
                let chunk = match inner.next().await? {
                    Ok(chunk) => chunk,
                    Err(e) => return Some((Err(e), (inner, seen, true))),
                };
                let seen = seen.saturating_add(chunk.len() as u64);
                if seen <= budget {
                    return Some((Ok(chunk), (inner, seen, false)));
                }
                let _ = tripwire.0.set(why.clone());
                let mut drained = 0u64;
                while drained < DRAIN_LIMIT {
                    match inner.next().await {
                        Some(Ok(rest)) => drained += rest.len() as u64,
                        _ => break,
                    }
                }
                Some((Err(axum::Error::new(why)), (inner, seen, true)))
            }
        },
    );
    Body::from_stream(stream)
}

/// Refuses adding `bytes` and `tags` to `repo` beyond any quota that bounds it.
async fn check_quota(
    state: &RegistryState,
    snapshot: &Snapshot,
    repo: &RepositoryName,
    bytes: u64,
    tags: u64,
) -> Result<()> {
    for (scope, quota) in snapshot.quotas(repo) {
        let limits_bytes = quota.max_bytes.filter(|_| bytes > 0);
        let limits_tags = quota.max_tags.filter(|_| tags > 0);
        if limits_bytes.is_none() && limits_tags.is_none() {
            continue;
        }
        let (used_bytes, used_tags) = usage(state, scope, repo).await?;
        if let Some(max) = limits_bytes
            && used_bytes.saturating_add(bytes) > max.max(0) as u64
        {
            return Err(denied(format!(
                "quota exceeded: {} holds {used_bytes} bytes and this push adds {bytes}, over its quota of {max} bytes (spec.quota.maxBytes)",
                scope_name(scope, repo)
            )));
        }
        if let Some(max) = limits_tags
            && used_tags.saturating_add(tags) > max.max(0) as u64
        {
            return Err(denied(format!(
                "quota exceeded: {} holds {used_tags} tags and this push adds {tags}, over its quota of {max} tags (spec.quota.maxTags)",
                scope_name(scope, repo)
            )));
        }
    }
    Ok(())
}

/// The scope whose tag writes must not interleave: the namespace when its tag count is
/// limited (pushes into any of its repositories count against one number), otherwise
/// the repository.
pub fn tag_scope(state: &RegistryState, repo: &RepositoryName) -> String {
    state.policy.current().tag_scope(repo)
}

/// Bytes a blob adds to `repo`: none when the repository already links it.
async fn blob_adds(
    state: &RegistryState,
    repo: &RepositoryName,
    digest: Option<&Digest>,
    size: u64,
) -> Result<u64> {
    if let Some(digest) = digest
        && state.store.stat_blob(repo, digest).await?.is_some()
    {
        return Ok(0);
    }
    Ok(size)
}

fn digest_param(req: &Request) -> Option<Digest> {
    req.query("digest").and_then(|d| d.parse().ok())
}

/// Checks `route`'s request against the declared limits. May read a manifest body to
/// compare it with an immutable tag, and meters upload bodies against byte quotas, so
/// it hands the body back, with the tripwire a metered body sets when cut off.
pub async fn check(
    state: &RegistryState,
    route: &Route,
    req: &Request,
    body: Body,
    tripwire: &Tripwire,
) -> Result<Body> {
    let snapshot = state.policy.current();
    let Some(repo) = route.repository() else {
        return Ok(body);
    };
    if snapshot.open || (snapshot.quotas(repo).is_empty() && !snapshot.has_immutable_tags(repo)) {
        return Ok(body);
    }
    let body = match (route, &req.method) {
        (Route::Uploads(_), &Method::POST) | (Route::Upload(..), &Method::PATCH | &Method::PUT) => {
            match byte_budget(state, &snapshot, repo).await? {
                Some((left, why)) => metered(body, left, why, tripwire),
                None => body,
            }
        }
        _ => body,
    };
    match (route, &req.method) {
        (Route::Uploads(_), &Method::POST) => {
            if let Some(mount) = req.query("mount").and_then(|m| m.parse::<Digest>().ok()) {
                let from = req
                    .query("from")
                    .and_then(|f| f.parse::<RepositoryName>().ok());
                let size = match &from {
                    Some(from) => state.store.stat_blob(from, &mount).await?.map(|s| s.size),
                    None => None,
                };
                let adds = blob_adds(state, repo, Some(&mount), size.unwrap_or(0)).await?;
                check_quota(state, &snapshot, repo, adds, 0).await?;
            } else if let Some(digest) = digest_param(req) {
                let adds = blob_adds(state, repo, Some(&digest), content_length(req)).await?;
                check_quota(state, &snapshot, repo, adds, 0).await?;
            }
        }
        (Route::Upload(_, id), &Method::PATCH | &Method::PUT) => {
            // The session's bytes so far already count as usage.
            state.store.upload_status(repo, id).await?;
            let digest = (req.method == Method::PUT)
                .then(|| digest_param(req))
                .flatten();
            let adds = blob_adds(state, repo, digest.as_ref(), content_length(req)).await?;
            if let Err(e) = check_quota(state, &snapshot, repo, adds, 0).await {
                // The upload can never complete: drop what it staged.
                let _ = state.store.cancel_upload(repo, id).await;
                return Err(e);
            }
        }
        (Route::Manifest(_, reference), &Method::PUT) => {
            let mut tags: Vec<Tag> = req
                .query_all("tag")
                .filter_map(|t| t.parse().ok())
                .collect();
            if let Reference::Tag(tag) = reference {
                tags.push(tag.clone());
            }
            let mut new_tags = 0;
            let mut guarded = Vec::new();
            for tag in &tags {
                let existing = state.store.resolve_tag(repo, tag).await?;
                match existing {
                    None => new_tags += 1,
                    Some(link) => {
                        if let Some(pattern) = snapshot.immutable_pattern(repo, tag.as_str()) {
                            guarded.push((tag.clone(), link.digest, pattern.to_string()));
                        }
                    }
                }
            }
            let body = if guarded.is_empty() {
                body
            } else {
                let bytes = read_manifest(body).await?;
                for (tag, digest, pattern) in guarded {
                    if Digest::of(digest.algorithm(), &bytes) != digest {
                        return Err(denied(format!(
                            "tag {tag} of {repo} is immutable (it matches {pattern:?} in the Repository's spec.immutableTags): it already points to {digest} and cannot be overwritten; push a new tag"
                        )));
                    }
                }
                Body::from(bytes)
            };
            let pushed = match reference {
                Reference::Digest(d) => Some(d.clone()),
                Reference::Tag(_) => None,
            };
            let adds = blob_adds(state, repo, None, content_length(req)).await?;
            let adds = match &pushed {
                Some(d) if state.store.manifest_link(repo, d).await?.is_some() => 0,
                _ => adds,
            };
            check_quota(state, &snapshot, repo, adds, new_tags).await?;
            return Ok(body);
        }
        (Route::Manifest(_, reference), &Method::DELETE) => {
            check_delete(state, &snapshot, repo, reference).await?;
        }
        _ => {}
    }
    Ok(body)
}

async fn read_manifest(body: Body) -> Result<Bytes> {
    let limited = http_body_util::Limited::new(body, MANIFEST_LIMIT);
    limited.collect().await.map(|c| c.to_bytes()).map_err(|_| {
        RegistryError::new(
            ErrorCode::SizeInvalid,
            format!("manifest is larger than {MANIFEST_LIMIT} bytes"),
        )
    })
}

/// Deleting an immutable tag, or a manifest an immutable tag points to, is refused.
async fn check_delete(
    state: &RegistryState,
    snapshot: &Snapshot,
    repo: &RepositoryName,
    reference: &Reference,
) -> Result<()> {
    match reference {
        Reference::Tag(tag) => {
            if let Some(pattern) = snapshot.immutable_pattern(repo, tag.as_str()) {
                return Err(denied(format!(
                    "tag {tag} of {repo} is immutable (it matches {pattern:?} in the Repository's spec.immutableTags) and cannot be deleted"
                )));
            }
        }
        Reference::Digest(digest) => {
            for tag in state.store.list_tags(repo).await?.unwrap_or_default() {
                let Some(pattern) = snapshot.immutable_pattern(repo, &tag) else {
                    continue;
                };
                let Ok(parsed) = tag.parse::<Tag>() else {
                    continue;
                };
                if state
                    .store
                    .resolve_tag(repo, &parsed)
                    .await?
                    .is_some_and(|l| l.digest == *digest)
                {
                    return Err(denied(format!(
                        "manifest {digest} of {repo} is tagged {tag}, which is immutable (it matches {pattern:?}): it cannot be deleted"
                    )));
                }
            }
        }
    }
    Ok(())
}
