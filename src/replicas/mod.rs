//! Replicas sharing one bucket, without an extra database or a message broker: what
//! they share lives in the bucket itself.
//!
//! - **One signing key** (`auth/signing-key`, created once; see
//!   `Store::shared_signing_key`): a token issued by one replica verifies on all.
//! - **A push log** ([`push_log`]): every replica appends the pushes it takes; the
//!   leader tails the log and hands the other replicas' pushes to its triggers and sync
//!   rules as if it had taken them.
//! - **A leader**: the operator's Kubernetes Lease, or for `berth serve` a lease object
//!   in the bucket ([`lease`]). Only the leader runs garbage collection, aging, sync,
//!   standalone triggers and the log's tail and pruning.

pub mod lease;
mod metrics;
pub mod push_log;

use std::future::Future;

use tokio::sync::watch;

pub use metrics::ReplicaMetrics;

/// Runs `work` while `leading` says this replica leads: started each time it becomes
/// the leader, dropped (cancelled) when it stops. Returns when `leading` closes.
pub async fn while_leading<F, Fut>(mut leading: watch::Receiver<bool>, work: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()>,
{
    loop {
        if leading.wait_for(|l| *l).await.is_err() {
            return;
        }
        tokio::select! {
            _ = work() => {}
            _ = leading.wait_for(|l| !*l) => {}
        }
    }
}

/// A name for this process's records, unique among every process that ever wrote to
/// the bucket (two processes on one host share a host name).
pub fn writer_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..16].to_string()
}
