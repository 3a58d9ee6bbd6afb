//! Reconcile metrics: count, failures and duration per kind.

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::Error;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub kind: &'static str,
    pub error: &'static str,
}

pub struct ControllerMetrics {
    reconciles: Family<KindLabel, Counter>,
    failures: Family<FailureLabels, Counter>,
    duration: Family<KindLabel, Histogram>,
}

impl ControllerMetrics {
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let metrics = ControllerMetrics {
            reconciles: Family::default(),
            failures: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 14))
            }),
        };
        registry.register(
            "reconciles",
            "Reconciles by kind",
            metrics.reconciles.clone(),
        );
        registry.register(
            "reconcile_failures",
            "Failed reconciles by kind and error class",
            metrics.failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile, by kind",
            metrics.duration.clone(),
        );
        Arc::new(metrics)
    }

    /// Counts a reconcile; the returned guard records its duration when dropped.
    pub fn start(&self, kind: &'static str) -> ReconcileTimer {
        self.reconciles.get_or_create(&KindLabel { kind }).inc();
        ReconcileTimer {
            histogram: self.duration.get_or_create(&KindLabel { kind }).clone(),
            started: Instant::now(),
        }
    }

    pub fn failure(&self, kind: &'static str, error: &Error) {
        self.failures
            .get_or_create(&FailureLabels {
                kind,
                error: error.label(),
            })
            .inc();
    }
}

pub struct ReconcileTimer {
    histogram: Histogram,
    started: Instant,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.started.elapsed().as_secs_f64());
    }
}
