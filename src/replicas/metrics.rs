//! What sharing the bucket costs and does: requests to the push log and the lease, and
//! pushes handed across. Labels from closed sets only.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `append`, `list`, `read`, `prune` (push log), `lease` (a read or write of the lease).
    pub op: &'static str,
    pub result: &'static str,
}

#[derive(Default)]
pub struct ReplicaMetrics {
    requests: Family<RequestLabels, Counter>,
    delivered: Counter,
    leading: Gauge,
}

impl ReplicaMetrics {
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let m = ReplicaMetrics::default();
        registry.register(
            "replica_bucket_requests",
            "Requests to the push log and the lease object in the bucket, by op (append, \
             list, read, prune, lease) and result (ok, error)",
            m.requests.clone(),
        );
        registry.register(
            "replica_pushes_delivered",
            "Pushes other replicas took, read from the push log by this leader and handed \
             to its triggers and sync rules",
            m.delivered.clone(),
        );
        registry.register(
            "replica_leading",
            "1 while this replica leads (runs GC, aging, sync, triggers), else 0",
            m.leading.clone(),
        );
        Arc::new(m)
    }

    pub fn request<T, E>(&self, op: &'static str, result: &Result<T, E>) {
        let result = if result.is_ok() { "ok" } else { "error" };
        self.requests
            .get_or_create(&RequestLabels { op, result })
            .inc();
    }

    pub fn delivered(&self) {
        self.delivered.inc();
    }

    pub fn set_leading(&self, leading: bool) {
        self.leading.set(i64::from(leading));
    }
}
