//! Runs garbage collection: on a schedule, after an aging rule deleted tags, and on
//! demand (`POST /api/gc`, see `endpoint.rs`). One run at a time; a request that
//! arrives during a run waits for it and then runs again, so what it deleted just
//! before asking is collected. Only the process that may write shared state runs it:
//! in a cluster, the leader (see [`Collector::set_active`]).

mod endpoint;
mod metrics;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use jiff::Timestamp;
use prometheus_client::registry::Registry;
use serde::Serialize;

pub use endpoint::router;
use metrics::GcMetrics;

use crate::schedule::Schedule;
use crate::storage::{GcOptions, GcReport, StorageError, Store};

#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error("garbage collection runs on the leader replica only; this replica is not the leader")]
    NotLeader,
    #[error("garbage collection failed: {0}")]
    Storage(#[from] StorageError),
}

/// One run, as `GET /api/gc` and the log report it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GcRun {
    pub started_at: Timestamp,
    /// What started it: `schedule`, `request`, `aging`.
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<GcReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub struct Collector {
    store: Store,
    options: GcOptions,
    schedule: Option<Schedule>,
    metrics: GcMetrics,
    active: AtomicBool,
    running: tokio::sync::Mutex<()>,
    last: std::sync::Mutex<Option<GcRun>>,
}

impl Collector {
    /// A collector for `store`, active at once (standalone); the operator deactivates
    /// it until this replica leads.
    pub fn new(
        store: Store,
        options: GcOptions,
        schedule: Option<Schedule>,
        registry: &mut Registry,
    ) -> Arc<Self> {
        Arc::new(Collector {
            store,
            options,
            schedule,
            metrics: GcMetrics::register(registry),
            active: AtomicBool::new(true),
            running: tokio::sync::Mutex::new(()),
            last: std::sync::Mutex::new(None),
        })
    }

    pub fn set_active(&self, active: bool) {
        self.active.store(active, Ordering::SeqCst);
    }

    /// Whether this replica collects (it leads, or runs alone).
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::SeqCst)
    }

    pub fn options(&self) -> &GcOptions {
        &self.options
    }

    /// Runs one collection (after the one running, if any) and reports it.
    pub async fn run(&self, reason: &str) -> Result<GcReport, GcError> {
        if !self.active.load(Ordering::SeqCst) {
            return Err(GcError::NotLeader);
        }
        let _one_at_a_time = self.running.lock().await;
        let started_at = Timestamp::now();
        tracing::info!(reason, "garbage collection started");
        let result = self.store.collect_garbage(&self.options).await;
        self.metrics.record(&result);
        let run = GcRun {
            started_at,
            reason: reason.to_string(),
            report: result.as_ref().ok().cloned(),
            error: result.as_ref().err().map(ToString::to_string),
        };
        match &result {
            Ok(r) => tracing::info!(
                reason,
                repositories = r.repositories,
                manifests_deleted = r.manifests_deleted,
                blob_links_deleted = r.blob_links_deleted,
                blobs_deleted = r.blobs_deleted,
                bytes_freed = r.bytes_freed,
                kept_recent = r.kept_recent,
                kept_claimed = r.kept_claimed,
                duration_ms = r.duration_ms,
                "garbage collection finished"
            ),
            Err(e) => tracing::warn!(reason, error = %e, "garbage collection failed"),
        }
        *self.last.lock().expect("gc report lock poisoned") = Some(run);
        Ok(result?)
    }

    pub fn last_run(&self) -> Option<GcRun> {
        self.last.lock().expect("gc report lock poisoned").clone()
    }

    /// When the schedule next starts a run.
    pub fn next_run(&self) -> Option<Timestamp> {
        self.schedule.as_ref()?.next_after(Timestamp::now())
    }

    /// Runs collections on the schedule, forever (nothing without a schedule).
    pub async fn run_on_schedule(self: Arc<Self>) {
        let Some(schedule) = self.schedule.clone() else {
            return;
        };
        loop {
            let Some(next) = schedule.next_after(Timestamp::now()) else {
                return;
            };
            let wait = next.duration_since(Timestamp::now());
            let wait = std::time::Duration::try_from(wait).unwrap_or_default();
            tokio::time::sleep(wait).await;
            if self.active.load(Ordering::SeqCst) {
                // Failures are counted, logged and kept for GET /api/gc.
                let _ = self.run("schedule").await;
            }
        }
    }
}
