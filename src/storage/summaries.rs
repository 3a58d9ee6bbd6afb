//! Per-repository summaries for the web UI's listings: tags, bytes, last push and
//! stored pull count of each repository, kept in memory so that listing or sorting a
//! namespace of 10,000 repositories (and summing usage per namespace) reads memory
//! instead of 10,000 tag listings and link reads.
//!
//! The index is filled in the background when berth starts (`warm_summaries`) and
//! lazily for whatever a listing needs before that (a restart starts empty and refills
//! from storage, so it is never stale across restarts), and kept true cheaply: every write of this process under a
//! repository's keys — a tag, manifest or blob link written or deleted, a repository
//! removed, garbage collection, this replica's pull-count flush — invalidates that
//! repository's entry once the write is done. A summary computed concurrently with
//! such a write is not kept: each entry carries an epoch that the invalidation bumps,
//! and a computed summary is stored only if the epoch it started from is unchanged.
//! Writes by other processes sharing the storage (other replicas) are seen when an
//! entry is older than [`MAX_AGE`]: it is served and refreshed in the background.
//!
//! Bounded: at most [`MAX_ENTRIES`] repositories are cached (about 100 bytes each);
//! beyond that, summaries are computed per request and not kept.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use jiff::Timestamp;
use object_store::path::Path;

use super::Store;
use super::error::Result;
use crate::oci::RepositoryName;

/// Entries older than this are refreshed (in the background) when read.
pub const MAX_AGE: Duration = Duration::from_secs(30);
/// The most repositories the index holds.
pub const MAX_ENTRIES: usize = 1_000_000;
/// Repositories summarised at once when filling the index.
const CONCURRENCY: usize = 16;

/// What a listing shows of a repository.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RepositorySummary {
    pub tags: u64,
    pub bytes: u64,
    pub last_push: Option<Timestamp>,
    /// Manifest GETs, over every replica (including this one's unflushed counts).
    pub pulls: u64,
}

struct Entry {
    epoch: u64,
    /// The summary with stored pull counts only, and when it was computed.
    summary: Option<(RepositorySummary, Instant)>,
}

#[derive(Default)]
pub struct Summaries {
    entries: Mutex<HashMap<String, Entry>>,
    refreshing: AtomicBool,
}

impl Summaries {
    /// Forgets what is known of the repository whose data `key` belongs to.
    pub(super) fn invalidate_key(&self, key: &Path) {
        let key = key.as_ref();
        let dir = key
            .strip_prefix("repositories/")
            .or_else(|| key.strip_prefix("pulls/"))
            .and_then(|rest| rest.split('/').next());
        if let Some(dir) = dir {
            self.invalidate(&dir.replace('+', "/"));
        }
    }

    pub(super) fn invalidate(&self, repo: &str) {
        let mut entries = self.entries.lock().expect("summaries lock");
        if let Some(entry) = entries.get_mut(repo) {
            entry.epoch += 1;
            entry.summary = None;
        }
    }

    /// The epoch a computation of `repo` starts from (the entry is created if room).
    fn begin(&self, repo: &str) -> Option<u64> {
        let mut entries = self.entries.lock().expect("summaries lock");
        if let Some(entry) = entries.get(repo) {
            return Some(entry.epoch);
        }
        if entries.len() >= MAX_ENTRIES {
            return None;
        }
        entries.insert(
            repo.to_string(),
            Entry {
                epoch: 0,
                summary: None,
            },
        );
        Some(0)
    }

    /// Keeps a computed summary, unless a write invalidated the repository meanwhile.
    fn finish(&self, repo: &str, epoch: Option<u64>, summary: RepositorySummary) {
        let Some(epoch) = epoch else { return };
        let mut entries = self.entries.lock().expect("summaries lock");
        if let Some(entry) = entries.get_mut(repo)
            && entry.epoch == epoch
        {
            entry.summary = Some((summary, Instant::now()));
        }
    }

    /// Drops every entry (a repository removed under another name, tests).
    pub fn clear(&self) {
        self.entries.lock().expect("summaries lock").clear();
    }

    pub fn len(&self) -> usize {
        self.entries.lock().expect("summaries lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Store {
    /// Summaries of `repos`, in order: from the index where it knows them, computed
    /// (and kept) where it does not. This replica's unflushed pulls are added live.
    pub async fn repository_summaries(
        &self,
        repos: &[RepositoryName],
    ) -> Result<Vec<RepositorySummary>> {
        let now = Instant::now();
        let mut out = vec![None; repos.len()];
        let mut missing = Vec::new();
        let mut stale = Vec::new();
        {
            let entries = self.summaries.entries.lock().expect("summaries lock");
            for (i, repo) in repos.iter().enumerate() {
                match entries.get(repo.as_str()).and_then(|e| e.summary) {
                    Some((summary, at)) => {
                        if now.duration_since(at) > MAX_AGE {
                            stale.push(repo.clone());
                        }
                        out[i] = Some(summary);
                    }
                    None => missing.push(i),
                }
            }
        }
        let computed: Vec<(usize, RepositorySummary)> =
            futures::stream::iter(missing)
                .map(|i| {
                    let store = self.clone();
                    let repo = repos[i].clone();
                    async move {
                        Ok::<_, super::error::StorageError>((i, store.summarise(&repo).await?))
                    }
                })
                .buffer_unordered(CONCURRENCY)
                .try_collect()
                .await?;
        for (i, summary) in computed {
            out[i] = Some(summary);
        }
        if !stale.is_empty() && !self.summaries.refreshing.swap(true, Ordering::AcqRel) {
            let store = self.clone();
            tokio::spawn(async move {
                let refreshed = futures::stream::iter(stale)
                    .map(|repo| {
                        let store = store.clone();
                        async move {
                            if let Err(e) = store.summarise(&repo).await {
                                tracing::warn!(%repo, error = %e, "refreshing a repository summary");
                            }
                        }
                    })
                    .buffer_unordered(CONCURRENCY)
                    .count()
                    .await;
                tracing::debug!(refreshed, "refreshed stale repository summaries");
                store.summaries.refreshing.store(false, Ordering::Release);
            });
        }
        let pending = self.pull_counter().pending_totals();
        Ok(out
            .into_iter()
            .zip(repos)
            .map(|(summary, repo)| {
                let mut summary = summary.expect("every summary is found or computed");
                if let Some(n) = pending.get(repo) {
                    summary.pulls = summary.pulls.saturating_add(*n);
                }
                summary
            })
            .collect())
    }

    /// Reads one repository's summary from storage and keeps it in the index.
    async fn summarise(&self, repo: &RepositoryName) -> Result<RepositorySummary> {
        let epoch = self.summaries.begin(repo.as_str());
        let times = self.tag_times(repo).await?;
        let usage = self.repository_usage(repo).await?;
        let pulls = self.stored_pull_counts(repo).await?.total();
        let summary = RepositorySummary {
            tags: times.len() as u64,
            bytes: usage.bytes,
            last_push: times.iter().map(|(_, t)| *t).max(),
            pulls,
        };
        self.summaries.finish(repo.as_str(), epoch, summary);
        Ok(summary)
    }

    /// Summarises every stored repository once, in the background after a start, so
    /// that the first listing needing all of them (a sort by pulls, `/api/namespaces`)
    /// is as fast as the ones after it. Entries a write invalidates meanwhile are
    /// simply computed again when read.
    pub async fn warm_summaries(self) {
        let started = Instant::now();
        let names = match self.list_repositories().await {
            Ok(names) => names,
            Err(e) => {
                tracing::warn!(error = %e, "listing repositories to summarise them");
                return;
            }
        };
        let repos: Vec<RepositoryName> = names
            .iter()
            .filter_map(|n| n.parse().ok())
            .take(MAX_ENTRIES)
            .collect();
        for chunk in repos.chunks(1000) {
            if let Err(e) = self.repository_summaries(chunk).await {
                tracing::warn!(error = %e, "summarising repositories; listings will read them when asked");
                return;
            }
        }
        tracing::info!(
            repositories = repos.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "repository summaries ready"
        );
    }

    pub fn summaries(&self) -> &Summaries {
        &self.summaries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_during_a_computation_keeps_its_result_out() {
        let s = Summaries::default();
        let epoch = s.begin("team/app");
        s.invalidate_key(&Path::from("repositories/team+app/tags/v1"));
        s.finish("team/app", epoch, RepositorySummary::default());
        assert!(s.entries.lock().unwrap()["team/app"].summary.is_none());
        let epoch = s.begin("team/app");
        s.finish("team/app", epoch, RepositorySummary::default());
        assert!(s.entries.lock().unwrap()["team/app"].summary.is_some());
        s.invalidate_key(&Path::from("pulls/team+app/replica-0"));
        assert!(s.entries.lock().unwrap()["team/app"].summary.is_none());
    }

    #[test]
    fn keys_outside_repositories_invalidate_nothing() {
        let s = Summaries::default();
        let epoch = s.begin("a/b");
        s.invalidate_key(&Path::from("blobs/sha256/abcd"));
        s.invalidate_key(&Path::from("uploads/x/state"));
        s.finish("a/b", epoch, RepositorySummary::default());
        assert!(s.entries.lock().unwrap()["a/b"].summary.is_some());
    }
}
