//! Where a digest runs (operator mode): the workloads whose Pods run it, read from the
//! Pods' `status.containerStatuses[].imageID`, and the Triggers that rolled it out,
//! with their history entries for it. Read from the cluster on each request, bounded
//! to a fixed number of objects, and best-effort: an apiserver error is reported in
//! the answer, never a failed page.

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use serde::Serialize;

use crate::api::{Trigger, TriggerFiring};
use crate::oci::RepositoryName;

/// Pods and Triggers read per request, at most.
const LIST_LIMIT: u32 = 5000;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    pub namespace: String,
    pub kind: String,
    pub name: String,
    pub pods: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TriggerRollout {
    pub namespace: String,
    pub name: String,
    pub target: String,
    pub history: Vec<TriggerFiring>,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Runs {
    pub workloads: Vec<Workload>,
    pub triggers: Vec<TriggerRollout>,
    pub error: Option<String>,
}

/// The cluster berth runs in, for the tag page.
#[derive(Clone)]
pub struct Cluster {
    pub client: kube::Client,
}

impl Cluster {
    pub async fn runs(&self, repo: &RepositoryName, digest: &str) -> Runs {
        let mut runs = Runs::default();
        match self.workloads(digest).await {
            Ok(w) => runs.workloads = w,
            Err(e) => runs.error = Some(format!("listing Pods: {e}")),
        }
        match self.triggers(repo, digest).await {
            Ok(t) => runs.triggers = t,
            Err(e) => runs.error = Some(format!("listing Triggers: {e}")),
        }
        runs
    }

    async fn workloads(&self, digest: &str) -> Result<Vec<Workload>, kube::Error> {
        let pods: Api<Pod> = Api::all(self.client.clone());
        let list = pods.list(&ListParams::default().limit(LIST_LIMIT)).await?;
        let mut found: Vec<Workload> = Vec::new();
        for pod in list.items {
            let runs_it = pod
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .is_some_and(|cs| {
                    // The digest the node resolved, or an image pinned by that digest.
                    cs.iter().any(|c| {
                        c.image_id.ends_with(digest) || c.image.ends_with(&format!("@{digest}"))
                    })
                });
            if !runs_it {
                continue;
            }
            let namespace = pod.metadata.namespace.clone().unwrap_or_default();
            let pod_name = pod.metadata.name.clone().unwrap_or_default();
            let (kind, name) = self.owner_of(&pod, &namespace).await;
            match found
                .iter_mut()
                .find(|w| w.namespace == namespace && w.kind == kind && w.name == name)
            {
                Some(w) => w.pods.push(pod_name),
                None => found.push(Workload {
                    namespace,
                    kind,
                    name,
                    pods: vec![pod_name],
                }),
            }
        }
        Ok(found)
    }

    /// The workload a Pod belongs to: its controller, and a ReplicaSet's Deployment.
    async fn owner_of(&self, pod: &Pod, namespace: &str) -> (String, String) {
        let owner = pod
            .metadata
            .owner_references
            .as_ref()
            .and_then(|o| o.iter().find(|r| r.controller == Some(true)));
        let Some(owner) = owner else {
            return ("Pod".into(), pod.metadata.name.clone().unwrap_or_default());
        };
        if owner.kind == "ReplicaSet" {
            let sets: Api<ReplicaSet> = Api::namespaced(self.client.clone(), namespace);
            if let Ok(Some(set)) = sets.get_opt(&owner.name).await
                && let Some(deployment) = set
                    .metadata
                    .owner_references
                    .as_ref()
                    .and_then(|o| o.iter().find(|r| r.kind == "Deployment"))
            {
                return ("Deployment".into(), deployment.name.clone());
            }
        }
        (owner.kind.clone(), owner.name.clone())
    }

    async fn triggers(
        &self,
        repo: &RepositoryName,
        digest: &str,
    ) -> Result<Vec<TriggerRollout>, kube::Error> {
        let triggers: Api<Trigger> = Api::all(self.client.clone());
        let list = triggers
            .list(&ListParams::default().limit(LIST_LIMIT))
            .await?;
        Ok(list
            .items
            .into_iter()
            .filter(|t| t.spec.repository == repo.as_str())
            .filter_map(|t| {
                let history: Vec<TriggerFiring> = t
                    .status
                    .as_ref()
                    .map(|s| {
                        s.history
                            .iter()
                            .filter(|f| f.digest == digest)
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default();
                if history.is_empty() {
                    return None;
                }
                Some(TriggerRollout {
                    namespace: t.metadata.namespace.clone().unwrap_or_default(),
                    name: t.metadata.name.clone().unwrap_or_default(),
                    target: match &t.spec.target {
                        Some(target) => format!("{:?}/{}", target.kind, target.name),
                        None => format!("{:?}", t.spec.mode()),
                    },
                    history,
                })
            })
            .collect())
    }
}
