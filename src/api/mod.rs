//! The custom resources that configure berth (group `berth.dev`, version `v1alpha1`).
//!
//! They are the configuration, and the only one: registry content (blobs, manifests,
//! tags, pull counts) is data and lives in storage. Every field is documented here,
//! because these comments become the CRD descriptions that `kubectl explain` shows.

// kube's `printcolumn(...)` repeats `type_ =` per column, which clippy mistakes for duplicates.
#[allow(clippy::duplicated_attributes)]
mod aging_rule;
mod common;
pub mod conditions;
#[allow(clippy::duplicated_attributes)]
mod namespace;
#[allow(clippy::duplicated_attributes)]
mod repository;
#[allow(clippy::duplicated_attributes)]
mod sync_rule;
#[allow(clippy::duplicated_attributes)]
mod trigger;

pub use aging_rule::{AgingRule, AgingRuleSpec, AgingRuleStatus, DeletedTag, KeptTag};
pub use common::{Member, Permission, Quota, TagFilter, Visibility};
pub use namespace::{Namespace, NamespaceSpec, NamespaceStatus};
pub use repository::{DeletionPolicy, Repository, RepositorySpec, RepositoryStatus, Share};
pub use sync_rule::{
    CaBundleKind, CaBundleReference, RemoteRegistry, SecretReference, SyncDirection, SyncRule,
    SyncRuleSpec, SyncRuleStatus, SyncRun,
};
pub use trigger::{
    ContainerImage, ImageReference, TagMatch, TagMatchMode, Trigger, TriggerFiring, TriggerSpec,
    TriggerStatus, TriggerTarget, WorkloadKind,
};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The API group of every berth resource.
pub const GROUP: &str = "berth.dev";

/// The CRDs of all five kinds, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        Namespace::crd(),
        Repository::crd(),
        SyncRule::crd(),
        AgingRule::crd(),
        Trigger::crd(),
    ]
}

/// The file under `crds/` that holds a CRD.
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}

/// A CRD as YAML, as `kubectl apply -f` takes it.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> String {
    serde_yaml::to_string(crd).expect("CRDs always serialize")
}
