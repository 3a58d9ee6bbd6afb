//! Aging: deleting old tags by rule, in any mode (the operator's AgingRule reconciler,
//! standalone AgingRules from the config folder). What decides is `plan.rs`; this
//! module reads the tags from storage, keeps what workloads use and what is
//! immutable, and deletes the rest under the same tag lock pushes take.
//!
//! When a deleted tag was the last one naming its manifest, the manifest revision is
//! deleted too, so the garbage collection that follows frees its layers.

pub mod plan;
pub mod standalone;

use std::collections::{BTreeSet, HashMap};

use jiff::Timestamp;
use serde::Serialize;

pub use plan::{AgingPolicy, Decision, KeepReason, TagState};

use crate::api::AgingRuleSpec;
use crate::oci::{Digest, Reference, RepositoryName, Tag};
use crate::policy::{Policy, glob_matches};
use crate::storage::{StorageError, Store};

/// Changing this annotation (to any new value) runs a rule at once, in a cluster and
/// in the config folder alike.
pub const RUN_NOW: &str = "berth.dev/run-now";

/// The schedule of a rule that names none: daily at 03:00 UTC.
pub const DEFAULT_SCHEDULE: &str = "0 3 * * *";

impl AgingPolicy {
    pub fn from_spec(spec: &AgingRuleSpec) -> Self {
        AgingPolicy {
            keep_days: spec.keep_days.map(|d| d.max(1) as u32),
            keep_count: spec.keep_count.map(|n| n.max(1) as u32),
            include: spec.tags.include.clone(),
            exclude: spec.tags.exclude.clone(),
        }
    }
}

/// What running workloads use, as the cluster reports it.
#[derive(Debug, Default, Clone)]
pub struct InUse {
    /// Manifest digests Pods run, each with one workload that runs it.
    digests: HashMap<String, String>,
    /// `(repository, tag)` named by Pod specs and workload templates, with one user.
    tags: HashMap<(String, String), String>,
}

impl InUse {
    pub fn add_digest(&mut self, digest: &str, by: &str) {
        self.digests
            .entry(digest.to_string())
            .or_insert_with(|| by.to_string());
    }

    pub fn add_tag(&mut self, repository: &str, tag: &str, by: &str) {
        self.tags
            .entry((repository.to_string(), tag.to_string()))
            .or_insert_with(|| by.to_string());
    }

    fn user_of(&self, repository: &str, tag: &TagState) -> Option<&String> {
        self.digests
            .get(&tag.digest)
            .or_else(|| self.tags.get(&(repository.to_string(), tag.tag.clone())))
    }
}

/// Which repositories a rule covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub namespace: String,
    /// Glob patterns of repository paths inside the namespace; all when empty.
    pub repositories: Vec<String>,
}

impl Scope {
    pub fn from_spec(spec: &AgingRuleSpec) -> Self {
        Scope {
            namespace: spec.namespace.clone(),
            repositories: spec.repositories.clone(),
        }
    }

    pub fn covers(&self, repo: &RepositoryName) -> bool {
        let Some(path) = repo.as_str().strip_prefix(&format!("{}/", self.namespace)) else {
            return false;
        };
        self.repositories.is_empty() || self.repositories.iter().any(|p| glob_matches(p, path))
    }
}

/// One tag in a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TagOutcome {
    pub repository: String,
    pub tag: String,
    pub digest: String,
    pub pushed: Timestamp,
    /// Why it was kept (empty for a deleted tag).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What one run did, or in a dry run would do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgingReport {
    pub repositories: u64,
    pub deleted: Vec<TagOutcome>,
    pub kept: Vec<TagOutcome>,
    /// Manifest revisions deleted with their last tag.
    pub manifests_deleted: u64,
}

/// Runs a rule once over `scope`. In a dry run nothing is deleted and the report says
/// what would be.
pub async fn run(
    store: &Store,
    policy: &Policy,
    scope: &Scope,
    rule: &AgingPolicy,
    in_use: &InUse,
    dry_run: bool,
) -> Result<AgingReport, StorageError> {
    let now = Timestamp::now();
    let mut report = AgingReport::default();
    for name in store.list_repositories().await? {
        let Ok(repo) = name.parse::<RepositoryName>() else {
            continue;
        };
        if !scope.covers(&repo) {
            continue;
        }
        report.repositories += 1;
        let tags = read_tags(store, &repo).await?;
        let snapshot = policy.current();
        let decisions = plan::plan(rule, tags, now, |t| {
            if let Some(p) = snapshot.immutable_pattern(&repo, &t.tag) {
                return Some(KeepReason::Immutable(p.to_string()));
            }
            in_use
                .user_of(repo.as_str(), t)
                .map(|by| KeepReason::InUse(by.clone()))
        });
        let (doomed, kept): (Vec<Decision>, Vec<Decision>) =
            decisions.into_iter().partition(|d| d.keep.is_none());
        report
            .kept
            .extend(kept.into_iter().map(|d| outcome(&repo, d.tag, d.keep)));
        if dry_run {
            report
                .deleted
                .extend(doomed.into_iter().map(|d| outcome(&repo, d.tag, None)));
            continue;
        }
        let scope_key = snapshot.tag_scope(&repo);
        drop(snapshot);
        delete_tags(store, &repo, &scope_key, doomed, &mut report).await?;
    }
    Ok(report)
}

/// Every tag of `repo` with its digest and push time (the time its pointer was written).
async fn read_tags(store: &Store, repo: &RepositoryName) -> Result<Vec<TagState>, StorageError> {
    let mut tags = Vec::new();
    for (tag, pushed) in store.tag_times(repo).await? {
        let Ok(parsed) = tag.parse::<Tag>() else {
            continue;
        };
        if let Some(link) = store.resolve_tag(repo, &parsed).await? {
            tags.push(TagState {
                tag,
                digest: link.digest.to_string(),
                pushed,
            });
        }
    }
    Ok(tags)
}

/// Deletes the doomed tags under the tag lock pushes take, skipping any pushed again
/// meanwhile; then the manifests no tag names any more.
async fn delete_tags(
    store: &Store,
    repo: &RepositoryName,
    scope_key: &str,
    doomed: Vec<Decision>,
    report: &mut AgingReport,
) -> Result<(), StorageError> {
    if doomed.is_empty() {
        return Ok(());
    }
    let _writes = store.lock_tags(scope_key).await;
    let mut digests = BTreeSet::new();
    for decision in doomed {
        let tag: Tag = match decision.tag.tag.parse() {
            Ok(t) => t,
            Err(_) => continue,
        };
        let now = store.resolve_tag(repo, &tag).await?;
        match now {
            Some(link) if link.digest.to_string() == decision.tag.digest => {
                store.delete_manifest(repo, &Reference::Tag(tag)).await?;
                digests.insert(link.digest);
                tracing::info!(repository = %repo, tag = %decision.tag.tag, digest = %decision.tag.digest, "aging deleted a tag");
                report.deleted.push(outcome(repo, decision.tag, None));
            }
            Some(_) => report
                .kept
                .push(outcome(repo, decision.tag, Some(KeepReason::Moved))),
            None => {} // deleted by someone else meanwhile
        }
    }
    let still_tagged: BTreeSet<Digest> = {
        let mut found = BTreeSet::new();
        for state in read_tags(store, repo).await? {
            if let Ok(d) = state.digest.parse() {
                found.insert(d);
            }
        }
        found
    };
    for digest in digests.difference(&still_tagged) {
        if store
            .delete_manifest(repo, &Reference::Digest(digest.clone()))
            .await?
        {
            report.manifests_deleted += 1;
        }
    }
    Ok(())
}

fn outcome(repo: &RepositoryName, tag: TagState, keep: Option<KeepReason>) -> TagOutcome {
    TagOutcome {
        repository: repo.to_string(),
        tag: tag.tag,
        digest: tag.digest,
        pushed: tag.pushed,
        reason: keep.as_ref().map(KeepReason::name),
        message: keep.as_ref().map(KeepReason::message),
    }
}
