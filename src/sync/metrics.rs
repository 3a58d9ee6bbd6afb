//! Sync metrics: labels from closed sets only (direction and result), never a rule,
//! repository or tag name.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CopyLabels {
    pub direction: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    pub direction: &'static str,
}

pub struct SyncMetrics {
    copies: Family<CopyLabels, Counter>,
    bytes: Family<DirectionLabel, Counter>,
    lag: Family<DirectionLabel, Histogram>,
    pub failing_rules: Gauge,
}

impl Default for SyncMetrics {
    fn default() -> Self {
        SyncMetrics {
            copies: Family::default(),
            bytes: Family::default(),
            // 10 ms … 23 min
            lag: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.01, 2.0, 18))
            }),
            failing_rules: Gauge::default(),
        }
    }
}

impl SyncMetrics {
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let m = SyncMetrics::default();
        registry.register(
            "sync_copies",
            "Tags a SyncRule copied or tried to, by direction (Push, Pull) and result \
             (Succeeded, Failed, Conflict)",
            m.copies.clone(),
        );
        registry.register(
            "sync_bytes",
            "Blob bytes sent by SyncRules, by direction",
            m.bytes.clone(),
        );
        registry.register(
            "sync_lag_seconds",
            "From a tag's push (or, for pulls, the start of the run) to its copy at the other side",
            m.lag.clone(),
        );
        registry.register(
            "sync_rules_failing",
            "SyncRules whose last attempt failed (Ready=False): remote unreachable, refused, …",
            m.failing_rules.clone(),
        );
        Arc::new(m)
    }

    pub fn copied(&self, direction: &'static str, result: &'static str) {
        self.copies
            .get_or_create(&CopyLabels { direction, result })
            .inc();
    }

    pub fn bytes(&self, direction: &'static str, n: u64) {
        self.bytes
            .get_or_create(&DirectionLabel { direction })
            .inc_by(n);
    }

    pub fn lag(&self, direction: &'static str, seconds: f64) {
        self.lag
            .get_or_create(&DirectionLabel { direction })
            .observe(seconds.max(0.0));
    }
}
