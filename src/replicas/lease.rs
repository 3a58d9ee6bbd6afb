//! Leader election for `berth serve` replicas sharing a bucket, with no Kubernetes: a
//! lease object (`leader/lease`) created with `If-None-Match: *` and renewed or taken
//! over with `If-Match` on the version read, so of two replicas writing at once one wins.
//!
//! As in `controller::leader`, a lease is expired when this replica has seen the same
//! version for longer than the lease's duration by its own monotonic clock; the
//! `renewedAt` another host wrote is never compared with the local clock. The holder
//! stops acting as leader when it could not renew for [`BucketElection::renew_deadline`],
//! well before another replica may take over.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use tokio::sync::watch;

use super::ReplicaMetrics;
use crate::storage::{BucketLease, LeaseVersion, StorageError, Store};

pub struct BucketElection {
    store: Store,
    identity: String,
    duration: Duration,
    metrics: Arc<ReplicaMetrics>,
    observed: Option<Observed>,
    /// When this replica last wrote the lease (the start of that request).
    renewed: Option<Instant>,
}

/// A version of the lease, and when this replica first saw it.
struct Observed {
    version: LeaseVersion,
    since: Instant,
}

impl BucketElection {
    /// An election for the lease of `store` as `identity`, for leases of `duration`.
    pub fn new(
        store: Store,
        identity: &str,
        duration: Duration,
        metrics: Arc<ReplicaMetrics>,
    ) -> Self {
        BucketElection {
            store,
            identity: identity.to_string(),
            duration,
            metrics,
            observed: None,
            renewed: None,
        }
    }

    /// How often the holder renews, and others check.
    pub fn renew_every(&self) -> Duration {
        (self.duration / 5).max(Duration::from_millis(100))
    }

    /// How long the holder goes on leading without a successful renewal: two thirds of
    /// the duration, so it has stopped before anyone else can see the lease expire.
    pub fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
    }

    /// One attempt to acquire or renew; whether this replica leads now.
    pub async fn attempt(&mut self) -> bool {
        let started = Instant::now();
        let result = self.try_acquire_or_renew(started).await;
        self.metrics.request("lease", &result);
        match result {
            Ok(true) => {
                self.renewed = Some(started);
                true
            }
            Ok(false) => false,
            Err(e) => {
                tracing::warn!(error = %e, "leader lease request failed");
                self.renewed
                    .is_some_and(|at| at.elapsed() < self.renew_deadline())
            }
        }
    }

    async fn try_acquire_or_renew(&mut self, now: Instant) -> Result<bool, StorageError> {
        let stamp = Timestamp::now().to_string();
        let Some((lease, version)) = self.store.read_lease().await? else {
            let lease = BucketLease {
                holder: self.identity.clone(),
                acquired_at: stamp.clone(),
                renewed_at: stamp,
                duration_ms: self.duration.as_millis() as u64,
                transitions: 0,
            };
            return self.store.write_lease(&lease, None).await;
        };
        let next = if lease.holder == self.identity {
            BucketLease {
                renewed_at: stamp,
                duration_ms: self.duration.as_millis() as u64,
                ..lease
            }
        } else {
            let since = match self.observed.take() {
                Some(seen) if seen.version.same_as(&version) => seen.since,
                _ => now,
            };
            self.observed = Some(Observed {
                version: version.clone(),
                since,
            });
            let duration = Duration::from_millis(lease.duration_ms.max(1));
            if now.saturating_duration_since(since) <= duration {
                return Ok(false);
            }
            tracing::info!(previous = %lease.holder, "the leader lease expired; taking it over");
            BucketLease {
                holder: self.identity.clone(),
                acquired_at: stamp.clone(),
                renewed_at: stamp,
                duration_ms: self.duration.as_millis() as u64,
                transitions: lease.transitions + 1,
            }
        };
        self.store.write_lease(&next, Some(&version)).await
    }

    /// Acquires or renews forever, publishing whether this replica leads.
    pub async fn run(mut self, leading: watch::Sender<bool>) {
        loop {
            let now_leading = self.attempt().await;
            let was = leading.send_replace(now_leading);
            self.metrics.set_leading(now_leading);
            match (was, now_leading) {
                (false, true) => {
                    tracing::info!(identity = %self.identity, "became the leader of the replicas sharing this bucket")
                }
                (true, false) => tracing::warn!(identity = %self.identity, "no longer the leader"),
                _ => {}
            }
            tokio::time::sleep(self.renew_every()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lease's conditional writes need an object store with versions; the local
    /// folder's `object_store` has `If-None-Match` but no `If-Match`, so this checks the
    /// first acquisition and the expiry clock, and the MinIO suite the rest.
    #[tokio::test]
    async fn of_two_replicas_starting_together_exactly_one_leads() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(Arc::new(
            object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap(),
        ));
        let metrics = Arc::new(ReplicaMetrics::default());
        let mut a =
            BucketElection::new(store.clone(), "a", Duration::from_secs(3), metrics.clone());
        let mut b = BucketElection::new(store, "b", Duration::from_secs(3), metrics);
        let (a_leads, b_leads) = tokio::join!(a.attempt(), b.attempt());
        assert!(a_leads ^ b_leads, "a: {a_leads}, b: {b_leads}");
    }
}
