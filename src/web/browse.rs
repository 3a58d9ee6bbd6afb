//! Reading: namespaces, a namespace's repositories, a repository with its tags, one
//! tag's image. Every answer is filtered by the registry's own access decision
//! (`Snapshot::may`, `Snapshot::may_read_namespace`): what a caller may not pull does
//! not exist for them (404, never 403, so private names do not leak).

use std::collections::{BTreeMap, BTreeSet};

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use futures::{StreamExt, TryStreamExt};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::error::{ApiCode, ApiError, ApiResult};
use super::image::{self, HistoryStep, Layer};
use super::markdown;
use super::session::{Client, caller, client};
use crate::auth::Identity;
use crate::oci::{Reference, RepositoryName, Tag};
use crate::policy::{Action, Snapshot};
use crate::registry::RegistryState;
use crate::storage::summaries::RepositorySummary;

/// Reads of per-repository or per-tag details run this many at once.
const CONCURRENCY: usize = 16;
/// The largest page the API returns.
pub const MAX_PAGE: usize = 500;
const DEFAULT_PAGE: usize = 50;

pub fn may(
    snapshot: &Snapshot,
    identity: &Identity,
    repo: &RepositoryName,
    action: Action,
) -> bool {
    snapshot
        .may(&identity.caller, repo, action, Timestamp::now())
        .is_ok()
}

#[derive(Debug, Default, Deserialize)]
pub struct Paging {
    pub q: Option<String>,
    pub sort: Option<String>,
    pub page: Option<usize>,
    pub per_page: Option<usize>,
}

impl Paging {
    fn window(&self, len: usize) -> (std::ops::Range<usize>, usize, usize) {
        let per_page = self.per_page.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
        let page = self.page.unwrap_or(1).max(1);
        let start = (page - 1).saturating_mul(per_page).min(len);
        let end = start.saturating_add(per_page).min(len);
        (start..end, page, per_page)
    }

    fn matches(&self, text: &str) -> bool {
        self.q
            .as_deref()
            .map(str::trim)
            .is_none_or(|q| q.is_empty() || text.to_lowercase().contains(&q.to_lowercase()))
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    pub items: Vec<T>,
    pub total: usize,
    pub page: usize,
    pub per_page: usize,
}

fn visibility_name(v: crate::api::Visibility) -> &'static str {
    match v {
        crate::api::Visibility::Public => "public",
        crate::api::Visibility::Internal => "internal",
        crate::api::Visibility::Private => "private",
    }
}

/// Every stored repository the caller may pull, by name.
async fn visible_repositories(
    state: &RegistryState,
    snapshot: &Snapshot,
    identity: &Identity,
) -> ApiResult<Vec<RepositoryName>> {
    Ok(state
        .store
        .list_repositories()
        .await?
        .into_iter()
        .filter_map(|r| r.parse::<RepositoryName>().ok())
        .filter(|r| may(snapshot, identity, r, Action::Pull))
        .collect())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceView {
    pub name: String,
    pub visibility: &'static str,
    pub repositories: usize,
    pub tags: u64,
    pub bytes: u64,
    pub max_bytes: Option<i64>,
    pub max_tags: Option<i64>,
}

/// `GET /api/namespaces`: the namespaces the caller can see, with usage of what they see.
pub async fn namespaces(
    State(state): State<RegistryState>,
    connect: Client,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<NamespaceView>>> {
    let identity = caller(&state, &headers, client(connect)).await?;
    let snapshot = state.policy.current();
    let repos = visible_repositories(&state, &snapshot, &identity).await?;
    let mut by_namespace: BTreeMap<String, Vec<RepositoryName>> = BTreeMap::new();
    for name in snapshot.namespaces.keys() {
        if snapshot.may_read_namespace(&identity.caller, name) {
            by_namespace.entry(name.clone()).or_default();
        }
    }
    for repo in repos {
        by_namespace
            .entry(repo.namespace().to_string())
            .or_default()
            .push(repo);
    }
    // Usage from the repository summaries: memory once known, not a listing and a
    // link read per repository per request.
    let all: Vec<RepositoryName> = by_namespace.values().flatten().cloned().collect();
    let summaries = state.store.repository_summaries(&all).await?;
    let mut usage: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for (repo, summary) in all.iter().zip(&summaries) {
        let (t, b) = usage.entry(repo.namespace()).or_default();
        *t = t.saturating_add(summary.tags);
        *b = b.saturating_add(summary.bytes);
    }
    Ok(Json(
        by_namespace
            .into_iter()
            .map(|(name, repos)| {
                let (tags, bytes) = usage.get(name.as_str()).copied().unwrap_or_default();
                let policy = snapshot.namespace(&name);
                NamespaceView {
                    visibility: visibility_name(
                        policy.map_or(crate::api::Visibility::Private, |p| p.visibility),
                    ),
                    repositories: repos.len(),
                    tags,
                    bytes,
                    max_bytes: policy
                        .and_then(|p| p.quota.as_ref())
                        .and_then(|q| q.max_bytes),
                    max_tags: policy
                        .and_then(|p| p.quota.as_ref())
                        .and_then(|q| q.max_tags),
                    name,
                }
            })
            .collect(),
    ))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryRow {
    pub name: String,
    pub visibility: &'static str,
    pub category: Option<String>,
    pub summary: Option<String>,
    pub tags: usize,
    pub last_push: Option<String>,
    pub pulls: u64,
}

fn repository_row(
    snapshot: &Snapshot,
    repo: RepositoryName,
    summary: RepositorySummary,
) -> (RepositoryRow, Option<Timestamp>) {
    let about = snapshot
        .repository(&repo)
        .map(|r| r.about.clone())
        .unwrap_or_default();
    (
        RepositoryRow {
            visibility: visibility_name(snapshot.visibility(&repo)),
            category: about.category,
            summary: about
                .description
                .as_deref()
                .and_then(|d| d.lines().map(str::trim).find(|l| !l.is_empty()))
                .map(|l| l.trim_start_matches('#').trim().chars().take(200).collect()),
            tags: summary.tags as usize,
            last_push: summary.last_push.map(|t| t.to_string()),
            pulls: summary.pulls,
            name: repo.to_string(),
        },
        summary.last_push,
    )
}

/// `GET /api/namespaces/{ns}/repositories?q=&sort=name|pushed|pulls|tags&page=&per_page=`
pub async fn repositories(
    State(state): State<RegistryState>,
    connect: Client,
    headers: HeaderMap,
    axum::extract::Path(namespace): axum::extract::Path<String>,
    Query(paging): Query<Paging>,
) -> ApiResult<Json<Page<RepositoryRow>>> {
    let identity = caller(&state, &headers, client(connect)).await?;
    let snapshot = state.policy.current();
    let mut names: Vec<RepositoryName> = visible_repositories(&state, &snapshot, &identity)
        .await?
        .into_iter()
        .filter(|r| r.namespace() == namespace && paging.matches(r.as_str()))
        .collect();
    if names.is_empty() && !snapshot.may_read_namespace(&identity.caller, &namespace) {
        return Err(ApiError::not_found(format!("namespace {namespace}")));
    }
    let sort = paging.sort.as_deref().unwrap_or("name");
    let total = names.len();
    let rows: Vec<RepositoryRow> = if sort == "name" {
        // Only the page's repositories are read.
        names.sort_unstable();
        let (window, _, _) = paging.window(total);
        let page: Vec<RepositoryName> = names.drain(window).collect();
        rows_of(&state, &snapshot, page)
            .await?
            .into_iter()
            .map(|(r, _)| r)
            .collect()
    } else {
        let mut all = rows_of(&state, &snapshot, names).await?;
        match sort {
            "pushed" => all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.name.cmp(&b.0.name))),
            "pulls" => all.sort_by(|a, b| b.0.pulls.cmp(&a.0.pulls).then(a.0.name.cmp(&b.0.name))),
            "tags" => all.sort_by(|a, b| b.0.tags.cmp(&a.0.tags).then(a.0.name.cmp(&b.0.name))),
            other => {
                return Err(ApiError::new(
                    ApiCode::BadRequest,
                    format!("sort must be name, pushed, pulls or tags, not {other:?}"),
                ));
            }
        }
        let (window, _, _) = paging.window(total);
        all.drain(window).map(|(r, _)| r).collect()
    };
    let (_, page, per_page) = paging.window(total);
    Ok(Json(Page {
        items: rows,
        total,
        page,
        per_page,
    }))
}

/// Rows of `repos`, from the store's repository summaries (memory, once known).
async fn rows_of(
    state: &RegistryState,
    snapshot: &Snapshot,
    repos: Vec<RepositoryName>,
) -> ApiResult<Vec<(RepositoryRow, Option<Timestamp>)>> {
    let summaries = state.store.repository_summaries(&repos).await?;
    Ok(repos
        .into_iter()
        .zip(summaries)
        .map(|(repo, summary)| repository_row(snapshot, repo, summary))
        .collect())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PullCommands {
    pub docker: String,
    pub ctr: String,
    pub by_digest: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TagRow {
    pub tag: String,
    pub digest: Option<String>,
    pub media_type: Option<String>,
    pub size: u64,
    pub platforms: Vec<String>,
    pub pushed_at: String,
    pub pulls: u64,
    pub pull: PullCommands,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Permissions {
    pub pull: bool,
    pub push: bool,
    pub delete: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryView {
    pub name: String,
    pub namespace: String,
    pub visibility: &'static str,
    pub category: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub description_html: Option<String>,
    pub pull_count: u64,
    pub permissions: Permissions,
    pub tags: Page<TagRow>,
}

/// The host:port clients pull from, as the browser reached berth.
pub fn registry_host(headers: &HeaderMap) -> String {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
        })
        .unwrap_or("localhost:5000")
        .to_string()
}

fn pull_commands(
    host: &str,
    repo: &RepositoryName,
    tag: &str,
    digest: Option<&str>,
) -> PullCommands {
    PullCommands {
        docker: format!("docker pull {host}/{repo}:{tag}"),
        ctr: format!("ctr image pull {host}/{repo}:{tag}"),
        by_digest: digest
            .map(|d| format!("docker pull {host}/{repo}@{d}"))
            .unwrap_or_default(),
    }
}

/// The repository `name` if the caller may pull it; otherwise "not found".
pub fn readable(snapshot: &Snapshot, identity: &Identity, name: &str) -> ApiResult<RepositoryName> {
    let repo: RepositoryName = name
        .parse()
        .map_err(|_| ApiError::not_found(format!("repository {name}")))?;
    if !may(snapshot, identity, &repo, Action::Pull) {
        return Err(ApiError::not_found(format!("repository {repo}")));
    }
    Ok(repo)
}

/// `GET /api/repositories/{name}?q=&sort=pushed|name&page=&per_page=`
pub async fn repository(
    state: &RegistryState,
    identity: &Identity,
    headers: &HeaderMap,
    name: &str,
    paging: &Paging,
) -> ApiResult<RepositoryView> {
    let snapshot = state.policy.current();
    let repo = readable(&snapshot, identity, name)?;
    let mut times = state.store.tag_times(&repo).await?;
    if times.is_empty()
        && !state.store.repository_exists(&repo).await?
        && snapshot.repository(&repo).is_none()
    {
        return Err(ApiError::not_found(format!("repository {repo}")));
    }
    times.retain(|(t, _)| paging.matches(t));
    match paging.sort.as_deref().unwrap_or("pushed") {
        "pushed" => times.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0))),
        "name" => times.sort_by(|a, b| a.0.cmp(&b.0)),
        other => {
            return Err(ApiError::new(
                ApiCode::BadRequest,
                format!("sort must be pushed or name, not {other:?}"),
            ));
        }
    }
    let total = times.len();
    let (window, page, per_page) = paging.window(total);
    let counts = state.store.pull_counts(&repo).await?;
    let host = registry_host(headers);
    let store = state.store.clone();
    let rows: Vec<TagRow> = futures::stream::iter(times.drain(window))
        .map(|(tag, at)| {
            let (store, repo, counts, host) = (store.clone(), repo.clone(), &counts, &host);
            async move {
                let parsed: Option<Tag> = tag.parse().ok();
                let summary = match &parsed {
                    Some(t) => image::summarise(&store, &repo, &Reference::Tag(t.clone())).await?,
                    None => None,
                };
                let digest = summary.as_ref().map(|s| s.digest.clone());
                let pulls = summary
                    .as_ref()
                    .and_then(|s| s.digest.parse().ok())
                    .map_or(0, |d| counts.of(&d));
                Ok::<_, ApiError>(TagRow {
                    pull: pull_commands(host, &repo, &tag, digest.as_deref()),
                    digest,
                    media_type: summary.as_ref().map(|s| s.media_type.clone()),
                    size: summary.as_ref().map_or(0, |s| s.size),
                    platforms: summary.map(|s| s.platforms).unwrap_or_default(),
                    pushed_at: at.to_string(),
                    pulls,
                    tag,
                })
            }
        })
        .buffered(CONCURRENCY)
        .try_collect()
        .await?;
    let about = snapshot
        .repository(&repo)
        .map(|r| r.about.clone())
        .unwrap_or_default();
    Ok(RepositoryView {
        name: repo.to_string(),
        namespace: repo.namespace().to_string(),
        visibility: visibility_name(snapshot.visibility(&repo)),
        category: about.category,
        labels: about.labels,
        description_html: about.description.as_deref().map(markdown::render),
        pull_count: counts.total(),
        permissions: Permissions {
            pull: true,
            push: may(&snapshot, identity, &repo, Action::Push),
            delete: may(&snapshot, identity, &repo, Action::Delete),
        },
        tags: Page {
            items: rows,
            total,
            page,
            per_page,
        },
    })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TagView {
    pub repository: String,
    pub tag: String,
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    pub platforms: Vec<String>,
    pub pulls: u64,
    pub pull: PullCommands,
    pub manifest: serde_json::Value,
    pub config: Option<serde_json::Value>,
    pub layers: Vec<Layer>,
    pub history: Vec<HistoryStep>,
    /// Where this digest runs, when berth runs as an operator (see `runs.rs`).
    pub runs: Option<super::runs::Runs>,
}

/// `GET /api/repositories/{name}/-/tags/{tag}`
pub async fn tag(
    state: &super::WebState,
    identity: &Identity,
    headers: &HeaderMap,
    name: &str,
    tag: &str,
) -> ApiResult<TagView> {
    let snapshot = state.registry.policy.current();
    let repo = readable(&snapshot, identity, name)?;
    let parsed: Tag = tag
        .parse()
        .map_err(|_| ApiError::not_found(format!("tag {tag} of {repo}")))?;
    let summary = image::summarise(&state.registry.store, &repo, &Reference::Tag(parsed))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("tag {tag} of {repo}")))?;
    let counts = state.registry.store.pull_counts(&repo).await?;
    let pulls = summary.digest.parse().map_or(0, |d| counts.of(&d));
    let runs = match &state.cluster {
        Some(cluster) => Some(cluster.runs(&repo, &summary.digest).await),
        None => None,
    };
    Ok(TagView {
        repository: repo.to_string(),
        tag: tag.to_string(),
        pull: pull_commands(&registry_host(headers), &repo, tag, Some(&summary.digest)),
        layers: image::layers(&summary),
        history: image::history(&summary),
        digest: summary.digest,
        media_type: summary.media_type,
        size: summary.size,
        platforms: summary.platforms,
        pulls,
        manifest: summary.manifest,
        config: summary.config,
        runs,
    })
}

/// Tags of `repo` named in `wanted` that exist, for batch operations.
pub fn unique_tags(wanted: &[String]) -> Vec<String> {
    wanted
        .iter()
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}
