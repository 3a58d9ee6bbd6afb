//! Replication between berth and other registries (`SyncRule`), with no Kubernetes
//! types: the operator (`controller::sync_rule`) and standalone mode (`standalone`)
//! both resolve a rule's credentials, hand the engine a [`RuleConfig`], and report the
//! [`RuleState`] it keeps.
//!
//! - [`client`]: an OCI registry client (token flow, TLS options, streamed blobs).
//! - [`copy`]: one tag, whole — index, manifests, blobs, referrers — sending only what
//!   the other side lacks.
//! - [`engine`]: a worker per rule; pushes, schedules, requests; catch-up and retries.

pub mod client;
pub mod copy;
pub mod credentials;
pub mod engine;
pub mod metrics;
pub mod rule;
pub mod standalone;

pub use engine::{Engine, Health, RuleState, TaskKind, TaskRecord};
pub use metrics::SyncMetrics;
pub use rule::RuleConfig;

use crate::auth::Identity;
use crate::policy::Caller;

/// The identity the engine stores pulled images as: an administrator, so the policy's
/// permissions do not stand in the way; quotas, immutable tags and namespaces still do.
pub fn engine_identity() -> Identity {
    Identity {
        caller: Caller::User {
            name: "berth-sync".into(),
            admin: true,
        },
        presented: true,
        token: None,
    }
}
