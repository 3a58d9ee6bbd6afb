//! Trigger metrics: what pushes did to workloads, and how fast.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

pub struct TriggerMetrics {
    firings: Family<ResultLabel, Counter>,
    patch_latency: Histogram,
    rollouts: Family<ResultLabel, Counter>,
    rollout_duration: Histogram,
}

impl Default for TriggerMetrics {
    fn default() -> Self {
        TriggerMetrics {
            firings: Family::default(),
            // 5 ms … 41 s
            patch_latency: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            rollouts: Family::default(),
            // 100 ms … 27 min
            rollout_duration: Histogram::new(exponential_buckets(0.1, 2.0, 15)),
        }
    }
}

impl TriggerMetrics {
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let metrics = TriggerMetrics::default();
        registry.register(
            "trigger_firings",
            "Pushes (or catch-ups) that matched an enabled trigger, by what came of them: \
             Patched, AlreadyCurrent, Superseded, TargetNotFound, NoMatchingContainer, NoCluster, Error",
            metrics.firings.clone(),
        );
        registry.register(
            "trigger_patch_latency_seconds",
            "From the manifest commit to the workload patch",
            metrics.patch_latency.clone(),
        );
        registry.register(
            "trigger_rollouts",
            "Rollouts started by a trigger, by outcome: Succeeded, Failed, RolledBack, Superseded",
            metrics.rollouts.clone(),
        );
        registry.register(
            "trigger_rollout_seconds",
            "From the manifest commit to the rollout's success",
            metrics.rollout_duration.clone(),
        );
        Arc::new(metrics)
    }

    pub fn firing(&self, result: &'static str) {
        self.firings.get_or_create(&ResultLabel { result }).inc();
    }

    pub fn patched(&self, latency_seconds: f64) {
        self.firing("Patched");
        self.patch_latency.observe(latency_seconds.max(0.0));
    }

    pub fn rollout(&self, result: &'static str, since_push_seconds: Option<f64>) {
        self.rollouts.get_or_create(&ResultLabel { result }).inc();
        if let Some(s) = since_push_seconds {
            self.rollout_duration.observe(s.max(0.0));
        }
    }
}
