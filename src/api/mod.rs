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
    ArgoCdWriteBack, ContainerImage, GitAuthor, GitWriteBack, HelmValues, ImageReference,
    KustomizeImage, LocalSecretReference, Marker, TagMatch, TagMatchMode, Trigger, TriggerFiring,
    TriggerSpec, TriggerStatus, TriggerTarget, WorkloadKind, WriteBack, WriteBackMode,
};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The API group of every berth resource.
pub const GROUP: &str = "berth.dev";

/// The CRDs of all five kinds, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![
        Namespace::crd(),
        Repository::crd(),
        SyncRule::crd(),
        AgingRule::crd(),
        Trigger::crd(),
    ];
    crds.iter_mut().for_each(default_unobserved_status);
    crds
}

/// Gives `status` the default `{observedGeneration: 0}`, which the apiserver fills in
/// for a resource berth has not reported on yet. kstatus (Flux, kpt) then sees
/// generation 1 not yet observed and says InProgress; without it, a resource with no
/// status at all looks Current before berth has even seen it.
fn default_unobserved_status(crd: &mut CustomResourceDefinition) {
    for version in &mut crd.spec.versions {
        let status = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
            .and_then(|s| s.properties.as_mut())
            .and_then(|p| p.get_mut("status"));
        if let Some(status) = status {
            status.default = Some(
                k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSON(
                    serde_json::json!({"observedGeneration": 0}),
                ),
            );
        }
    }
}

/// The file under `crds/` that holds a CRD.
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}

/// A CRD as YAML, as `kubectl apply -f` takes it.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> String {
    serde_yaml::to_string(crd).expect("CRDs always serialize")
}
