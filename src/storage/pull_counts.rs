//! Pull counts: how often each manifest of a repository was fetched (a manifest GET,
//! by tag or by digest, counts for the digest it resolved to).
//!
//! Counting costs no storage write per GET: a GET adds one to an in-memory map, and a
//! background task flushes that map every few seconds (and once at shutdown), so a
//! crash loses at most one interval of counts. The map is bounded and keyed only by
//! manifests that exist (a count is taken after the GET found the manifest), so made-up
//! requests cannot grow it; past the bound, pulls go uncounted and are counted as
//! dropped instead.
//!
//! Several replicas may share one bucket: each writes only its own object per
//! repository (`pulls/<repo>/<replica>`), adding its deltas to its own totals, and a
//! reader sums every replica's object. No replica ever read-modify-writes another's.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Store;
use super::error::Result;
use super::layout::Key;
use crate::oci::{Digest, RepositoryName};

/// At most this many (repository, digest) pairs wait for a flush; a flush every few
/// seconds empties the map, so only a burst over this many distinct manifests loses
/// counts.
pub const MAX_PENDING: usize = 100_000;

/// How often counts are written to storage by default.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(5);

/// One replica's totals for one repository, as stored.
#[derive(Debug, Default, Serialize, Deserialize)]
struct StoredCounts {
    #[serde(default)]
    counts: BTreeMap<String, u64>,
}

/// A repository's pull counts, summed over every replica.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PullCounts {
    pub by_digest: HashMap<Digest, u64>,
}

impl PullCounts {
    pub fn of(&self, digest: &Digest) -> u64 {
        self.by_digest.get(digest).copied().unwrap_or(0)
    }

    /// Every manifest GET of the repository.
    pub fn total(&self) -> u64 {
        self.by_digest
            .values()
            .fold(0u64, |a, b| a.saturating_add(*b))
    }
}

type Pending = HashMap<RepositoryName, HashMap<Digest, u64>>;

/// The in-memory side of pull counting, shared by every clone of a [`Store`].
pub struct PullCounter {
    replica: String,
    pending: Mutex<(Pending, usize)>,
    dropped: AtomicU64,
    /// Serialises flushes: each one reads and rewrites this replica's objects.
    flushing: tokio::sync::Mutex<()>,
}

/// Keeps a replica name usable as one object-key segment.
fn key_safe(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '_' | '-' => c,
            _ => '_',
        })
        .take(128)
        .collect();
    if cleaned.is_empty() || cleaned.chars().all(|c| c == '.') {
        "standalone".into()
    } else {
        cleaned
    }
}

impl PullCounter {
    pub fn new(replica: &str) -> Self {
        PullCounter {
            replica: key_safe(replica),
            pending: Mutex::new((HashMap::new(), 0)),
            dropped: AtomicU64::new(0),
            flushing: tokio::sync::Mutex::new(()),
        }
    }

    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// Pulls not counted because the map was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn add(&self, repo: &RepositoryName, digest: &Digest, n: u64) {
        let mut guard = self.pending.lock().expect("pull counter lock");
        let (pending, entries) = &mut *guard;
        if let Some(per_repo) = pending.get_mut(repo) {
            if let Some(count) = per_repo.get_mut(digest) {
                *count = count.saturating_add(n);
                return;
            }
            if *entries >= MAX_PENDING {
                self.dropped.fetch_add(n, Ordering::Relaxed);
                return;
            }
            per_repo.insert(digest.clone(), n);
        } else {
            if *entries >= MAX_PENDING {
                self.dropped.fetch_add(n, Ordering::Relaxed);
                return;
            }
            pending.insert(repo.clone(), HashMap::from([(digest.clone(), n)]));
        }
        *entries += 1;
    }

    fn take(&self) -> Pending {
        let mut guard = self.pending.lock().expect("pull counter lock");
        guard.1 = 0;
        std::mem::take(&mut guard.0)
    }

    /// Unflushed pulls per repository (one pass over the bounded map).
    pub fn pending_totals(&self) -> HashMap<RepositoryName, u64> {
        let guard = self.pending.lock().expect("pull counter lock");
        guard
            .0
            .iter()
            .map(|(repo, digests)| (repo.clone(), digests.values().copied().sum()))
            .collect()
    }

    fn pending_for(&self, repo: &RepositoryName) -> HashMap<Digest, u64> {
        let guard = self.pending.lock().expect("pull counter lock");
        guard.0.get(repo).cloned().unwrap_or_default()
    }
}

impl Store {
    /// Counts one pull of manifest `digest` of `repo`: memory only, flushed later.
    pub fn count_pull(&self, repo: &RepositoryName, digest: &Digest) {
        self.pulls.add(repo, digest, 1);
    }

    pub fn pull_counter(&self) -> &PullCounter {
        &self.pulls
    }

    /// Writes the counts gathered since the last flush into this replica's objects.
    /// A repository whose write fails keeps its deltas for the next flush. Returns how
    /// many repositories were written.
    pub async fn flush_pull_counts(&self) -> Result<usize> {
        let _flushing = self.pulls.flushing.lock().await;
        let pending = self.pulls.take();
        let mut written = 0;
        let mut failure = None;
        for (repo, deltas) in pending {
            match self.add_to_own_counts(&repo, &deltas).await {
                Ok(()) => written += 1,
                Err(e) => {
                    for (digest, n) in &deltas {
                        self.pulls.add(&repo, digest, *n);
                    }
                    failure = Some(e);
                }
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(written),
        }
    }

    async fn add_to_own_counts(
        &self,
        repo: &RepositoryName,
        deltas: &HashMap<Digest, u64>,
    ) -> Result<()> {
        let key = Key::PullCounts(repo, &self.pulls.replica).path();
        // Only this replica writes this object, and flushes are serialised: the read
        // sees the last write of this very process (or of its previous life).
        let mut stored: StoredCounts = self.get_json(&key).await?.unwrap_or_default();
        for (digest, n) in deltas {
            let count = stored.counts.entry(digest.to_string()).or_default();
            *count = count.saturating_add(*n);
        }
        self.put_json(&key, &stored).await
    }

    /// The pull counts of `repo`: every replica's stored totals, plus what this replica
    /// has counted and not yet flushed.
    pub async fn pull_counts(&self, repo: &RepositoryName) -> Result<PullCounts> {
        let mut counts = self.stored_pull_counts(repo).await?;
        for (digest, n) in self.pulls.pending_for(repo) {
            let count = counts.by_digest.entry(digest).or_default();
            *count = count.saturating_add(n);
        }
        Ok(counts)
    }

    /// The pull counts of `repo` that every replica has written to storage.
    pub async fn stored_pull_counts(&self, repo: &RepositoryName) -> Result<PullCounts> {
        let prefix = Key::PullCountsAll(repo).path();
        let (replicas, _) = self.list_children(&prefix).await?;
        let mut counts = PullCounts::default();
        for replica in replicas {
            let key = prefix.clone().join(replica.as_str());
            let Some(stored) = self.get_json::<StoredCounts>(&key).await? else {
                continue;
            };
            for (digest, n) in stored.counts {
                if let Ok(digest) = digest.parse::<Digest>() {
                    let count = counts.by_digest.entry(digest).or_default();
                    *count = count.saturating_add(n);
                }
            }
        }
        Ok(counts)
    }
}

/// Flushes pull counts every `interval`, for as long as the process runs.
pub async fn flush_pull_counts_periodically(store: Store, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if let Err(e) = store.flush_pull_counts().await {
            tracing::warn!(error = %e, "writing pull counts failed; retrying at the next flush");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> Digest {
        format!("sha256:{}", hex::encode([n; 32])).parse().unwrap()
    }

    #[test]
    fn the_pending_map_is_bounded_and_excess_pulls_are_counted_as_dropped() {
        let counter = PullCounter::new("r1");
        let repo: RepositoryName = "a/b".parse().unwrap();
        for i in 0..MAX_PENDING + 10 {
            let d: Digest = format!("sha256:{:064x}", i).parse().unwrap();
            counter.add(&repo, &d, 1);
        }
        assert_eq!(counter.dropped(), 10);
        // A digest already in the map still counts.
        counter.add(&repo, &format!("sha256:{:064x}", 0).parse().unwrap(), 1);
        assert_eq!(counter.dropped(), 10);
        assert_eq!(
            counter.take().values().map(HashMap::len).sum::<usize>(),
            MAX_PENDING
        );
        counter.add(&repo, &digest(1), 1);
        assert_eq!(counter.dropped(), 10, "a flush makes room again");
    }

    #[test]
    fn replica_names_become_one_key_segment() {
        assert_eq!(key_safe("berth-0"), "berth-0");
        assert_eq!(key_safe("a/../b"), "a_.._b");
        assert_eq!(key_safe(".."), "standalone");
        assert_eq!(key_safe(""), "standalone");
    }

    #[tokio::test]
    async fn flushed_counts_of_two_replicas_add_up_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let location = super::super::StorageLocation::Local(dir.path().to_path_buf());
        let repo: RepositoryName = "team/app".parse().unwrap();
        let one = Store::open(&location).unwrap().with_replica("one");
        let two = Store::open(&location).unwrap().with_replica("two");
        for _ in 0..3 {
            one.count_pull(&repo, &digest(1));
        }
        two.count_pull(&repo, &digest(1));
        two.count_pull(&repo, &digest(2));
        assert_eq!(
            one.pull_counts(&repo).await.unwrap().total(),
            3,
            "unflushed, own only"
        );
        one.flush_pull_counts().await.unwrap();
        two.flush_pull_counts().await.unwrap();
        one.count_pull(&repo, &digest(1));
        one.flush_pull_counts().await.unwrap();
        let restarted = Store::open(&location).unwrap().with_replica("one");
        let counts = restarted.pull_counts(&repo).await.unwrap();
        assert_eq!(counts.of(&digest(1)), 5);
        assert_eq!(counts.of(&digest(2)), 1);
        assert_eq!(counts.total(), 6);
    }
}
