//! What garbage collection reports to Prometheus. Labels come from closed sets.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::storage::{GcReport, StorageError};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
enum Outcome {
    ok,
    failed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    result: Outcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
enum Object {
    manifest,
    blob_link,
    blob,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ObjectLabels {
    object: Object,
}

pub(super) struct GcMetrics {
    runs: Family<RunLabels, Counter>,
    deleted: Family<ObjectLabels, Counter>,
    freed: Counter,
    last_success: Gauge,
    last_duration_ms: Gauge,
}

impl GcMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = GcMetrics {
            runs: Family::default(),
            deleted: Family::default(),
            freed: Counter::default(),
            last_success: Gauge::default(),
            last_duration_ms: Gauge::default(),
        };
        registry.register(
            "gc_runs",
            "Garbage collection runs by result",
            m.runs.clone(),
        );
        registry.register(
            "gc_deleted_objects",
            "Objects garbage collection deleted: manifest revisions, blob links, content",
            m.deleted.clone(),
        );
        registry.register(
            "gc_freed_bytes",
            "Bytes of content garbage collection deleted",
            m.freed.clone(),
        );
        registry.register(
            "gc_last_success_timestamp_seconds",
            "When the last successful garbage collection finished (Unix time)",
            m.last_success.clone(),
        );
        registry.register(
            "gc_last_duration_milliseconds",
            "How long the last successful garbage collection took",
            m.last_duration_ms.clone(),
        );
        m
    }

    pub fn record(&self, result: &Result<GcReport, StorageError>) {
        match result {
            Ok(r) => {
                self.runs
                    .get_or_create(&RunLabels {
                        result: Outcome::ok,
                    })
                    .inc();
                for (object, n) in [
                    (Object::manifest, r.manifests_deleted),
                    (Object::blob_link, r.blob_links_deleted),
                    (Object::blob, r.blobs_deleted),
                ] {
                    self.deleted
                        .get_or_create(&ObjectLabels { object })
                        .inc_by(n);
                }
                self.freed.inc_by(r.bytes_freed);
                self.last_success.set(jiff::Timestamp::now().as_second());
                self.last_duration_ms.set(r.duration_ms as i64);
            }
            Err(_) => {
                self.runs
                    .get_or_create(&RunLabels {
                        result: Outcome::failed,
                    })
                    .inc();
            }
        }
    }
}
