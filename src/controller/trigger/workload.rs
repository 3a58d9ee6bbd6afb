//! The workload a trigger updates, whatever its kind: its containers, what berth
//! manages in it, how far its rollout has come, and the one patch berth makes to it.
//!
//! berth writes with server-side apply under its field manager, so `managedFields` (and
//! Argo CD's diff) show berth as the owner of the images it set. An apply drops the
//! fields its manager owned but left out, so every apply carries everything berth owns in
//! the workload: the images it set earlier (other triggers' containers too) and its two
//! annotations.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::super::FIELD_MANAGER;
use crate::api::WorkloadKind;

/// Workload annotation: per trigger, the push it last applied (JSON), so a push older
/// than the one applied never overwrites it, whichever replica handles which. (The
/// apiserver counts a Deployment's annotation changes in its generation: a firing writes
/// the image and this annotation together, one generation and one rollout.)
pub const LAST_PUSH_ANNOTATION: &str = "berth.dev/last-push";

/// Pod template annotation (`imageReference: Tag`): `container=digest,…`, so pushing a
/// tag again changes the template and rolls out.
pub const IMAGE_DIGESTS_ANNOTATION: &str = "berth.dev/image-digests";

/// The push a trigger last applied to a workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastPush {
    pub tag: String,
    pub digest: String,
    pub pushed_at: MicroTime,
    /// Its rollout failed: a catch-up does not apply it again (nor undo a rollback).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub failed: bool,
}

/// One container's new image (and, for `imageReference: Tag`, the digest it stands for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageChange {
    pub container: String,
    pub image: String,
    pub digest: Option<String>,
}

/// How far a rollout has come, as `kubectl rollout status` judges it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rollout {
    Progressing(String),
    Complete(String),
    Failed(String),
}

pub struct Workload {
    pub kind: WorkloadKind,
    pub object: DynamicObject,
}

fn resource(kind: WorkloadKind) -> ApiResource {
    match kind {
        WorkloadKind::Deployment => ApiResource::erase::<Deployment>(&()),
        WorkloadKind::StatefulSet => ApiResource::erase::<StatefulSet>(&()),
        WorkloadKind::DaemonSet => ApiResource::erase::<DaemonSet>(&()),
    }
}

fn api(client: &Client, namespace: &str, kind: WorkloadKind) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), namespace, &resource(kind))
}

/// Whether the apiserver refused a write because the object changed since it was read.
pub fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

impl Workload {
    pub async fn get(
        client: &Client,
        namespace: &str,
        kind: WorkloadKind,
        name: &str,
    ) -> Result<Option<Workload>, kube::Error> {
        Ok(api(client, namespace, kind)
            .get_opt(name)
            .await?
            .map(|object| Workload { kind, object }))
    }

    /// `Deployment team-a/web`
    pub fn describe(&self) -> String {
        format!(
            "{:?} {}/{}",
            self.kind,
            self.object.namespace().unwrap_or_default(),
            self.object.name_any()
        )
    }

    pub fn generation(&self) -> Option<i64> {
        self.object.metadata.generation
    }

    fn template(&self) -> &Value {
        &self.object.data["spec"]["template"]
    }

    /// (name, image) of every container of the Pod template.
    pub fn containers(&self) -> Vec<(String, String)> {
        self.template()["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                (
                    c["name"].as_str().unwrap_or_default().to_string(),
                    c["image"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    pub fn image_of(&self, container: &str) -> Option<String> {
        self.containers()
            .into_iter()
            .find(|(name, _)| name == container)
            .map(|(_, image)| image)
    }

    /// The digests recorded for `imageReference: Tag`, by container.
    pub fn image_digests(&self) -> BTreeMap<String, String> {
        self.template()["metadata"]["annotations"][IMAGE_DIGESTS_ANNOTATION]
            .as_str()
            .unwrap_or_default()
            .split(',')
            .filter_map(|pair| pair.split_once('='))
            .map(|(c, d)| (c.trim().to_string(), d.trim().to_string()))
            .collect()
    }

    /// The push each trigger last applied, by trigger name.
    pub fn last_pushes(&self) -> BTreeMap<String, LastPush> {
        self.object
            .annotations()
            .get(LAST_PUSH_ANNOTATION)
            .and_then(|v| serde_json::from_str(v).ok())
            .unwrap_or_default()
    }

    /// The fields berth's server-side applies own (`fieldsV1`), if any.
    fn berth_fields(&self) -> Option<&Value> {
        self.object
            .metadata
            .managed_fields
            .iter()
            .flatten()
            .find(|m| {
                m.manager.as_deref() == Some(FIELD_MANAGER)
                    && m.operation.as_deref() == Some("Apply")
                    && m.subresource.as_deref().unwrap_or_default().is_empty()
            })
            .and_then(|m| m.fields_v1.as_ref())
            .map(|f| &f.0)
    }

    /// Containers whose image berth set and still owns.
    pub fn berth_owned_images(&self) -> Vec<String> {
        let Some(fields) = self.berth_fields() else {
            return Vec::new();
        };
        let containers = &fields["f:spec"]["f:template"]["f:spec"]["f:containers"];
        containers
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, item)| item.get("f:image").is_some())
            .filter_map(|(key, _)| {
                let key: Value = serde_json::from_str(key.strip_prefix("k:")?).ok()?;
                Some(key["name"].as_str()?.to_string())
            })
            .collect()
    }

    /// The field managers other than berth that own `container`'s image: someone who
    /// applied it with `--force-conflicts` (a GitOps tool taking the field back), or
    /// changed it with an update (`kubectl set image`).
    pub fn other_image_owners(&self, container: &str) -> Vec<String> {
        self.object
            .metadata
            .managed_fields
            .iter()
            .flatten()
            .filter(|m| m.manager.as_deref() != Some(FIELD_MANAGER))
            .filter(|m| m.subresource.as_deref().unwrap_or_default().is_empty())
            .filter(|m| {
                let Some(fields) = m.fields_v1.as_ref() else {
                    return false;
                };
                let containers = &fields.0["f:spec"]["f:template"]["f:spec"]["f:containers"];
                containers
                    .as_object()
                    .into_iter()
                    .flatten()
                    .any(|(key, item)| {
                        let name = key
                            .strip_prefix("k:")
                            .and_then(|k| serde_json::from_str::<Value>(k).ok());
                        name.is_some_and(|n| n["name"] == container)
                            && item.get("f:image").is_some()
                    })
            })
            .filter_map(|m| m.manager.clone())
            .collect()
    }

    /// Applies `changes`, recording `last_push` for the named trigger, only if the
    /// workload is still at the resourceVersion it was read at (a 409 otherwise): two
    /// replicas acting on the same read never both write. Returns the patched workload.
    pub async fn apply(
        &self,
        client: &Client,
        changes: &[ImageChange],
        last_push: Option<(&str, &LastPush)>,
    ) -> Result<Workload, kube::Error> {
        let current: BTreeMap<String, String> = self.containers().into_iter().collect();
        let mut images: BTreeMap<String, String> = self
            .berth_owned_images()
            .into_iter()
            .filter_map(|c| current.get(&c).map(|image| (c, image.clone())))
            .collect();
        let mut digests = self.image_digests();
        for change in changes {
            images.insert(change.container.clone(), change.image.clone());
            match &change.digest {
                Some(d) => digests.insert(change.container.clone(), d.clone()),
                None => digests.remove(&change.container),
            };
        }
        digests.retain(|c, _| current.contains_key(c));
        let mut pushes = self.last_pushes();
        if let Some((trigger, push)) = last_push {
            pushes.insert(trigger.to_string(), push.clone());
        }

        let containers: Vec<Value> = images
            .iter()
            .map(|(name, image)| json!({"name": name, "image": image}))
            .collect();
        let mut template = json!({"spec": {"containers": containers}});
        if !digests.is_empty() {
            let value: Vec<String> = digests.iter().map(|(c, d)| format!("{c}={d}")).collect();
            template["metadata"] =
                json!({"annotations": {IMAGE_DIGESTS_ANNOTATION: value.join(",")}});
        }
        let name = self.object.name_any();
        let mut metadata = json!({
            "name": name,
            "resourceVersion": self.object.resource_version(),
        });
        if !pushes.is_empty() {
            let value = serde_json::to_string(&pushes).expect("serializable");
            metadata["annotations"] = json!({LAST_PUSH_ANNOTATION: value});
        }
        let resource = resource(self.kind);
        let patch = json!({
            "apiVersion": resource.api_version,
            "kind": resource.kind,
            "metadata": metadata,
            "spec": {"template": template},
        });
        let namespace = self.object.namespace().unwrap_or_default();
        let object = api(client, &namespace, self.kind)
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
        Ok(Workload {
            kind: self.kind,
            object,
        })
    }

    /// The rollout of the current generation.
    pub fn rollout(&self) -> Rollout {
        let spec = &self.object.data["spec"];
        let status = &self.object.data["status"];
        let generation = self.generation().unwrap_or(0);
        let observed = status["observedGeneration"].as_i64().unwrap_or(0);
        if observed < generation {
            return Rollout::Progressing(format!(
                "waiting for the {:?} controller to see generation {generation}",
                self.kind
            ));
        }
        let n = |field: &str| status[field].as_i64().unwrap_or(0);
        let wanted = spec["replicas"].as_i64().unwrap_or(1);
        let strategy = spec["updateStrategy"]["type"]
            .as_str()
            .unwrap_or("RollingUpdate");
        match self.kind {
            WorkloadKind::Deployment => {
                let deadline = status["conditions"].as_array().and_then(|cs| {
                    cs.iter().find(|c| {
                        c["type"] == "Progressing" && c["reason"] == "ProgressDeadlineExceeded"
                    })
                });
                if let Some(c) = deadline {
                    return Rollout::Failed(format!(
                        "ProgressDeadlineExceeded: {}",
                        c["message"]
                            .as_str()
                            .unwrap_or("the rollout made no progress")
                    ));
                }
                let (updated, total, available) =
                    (n("updatedReplicas"), n("replicas"), n("availableReplicas"));
                if updated < wanted {
                    Rollout::Progressing(format!("{updated} of {wanted} replicas updated"))
                } else if total > updated {
                    Rollout::Progressing(format!(
                        "{} old replicas pending termination",
                        total - updated
                    ))
                } else if available < updated {
                    Rollout::Progressing(format!(
                        "{available} of {updated} updated replicas available"
                    ))
                } else {
                    Rollout::Complete(format!(
                        "{updated} of {wanted} replicas updated and available"
                    ))
                }
            }
            WorkloadKind::StatefulSet => {
                if strategy != "RollingUpdate" {
                    return Rollout::Complete(format!(
                        "updateStrategy {strategy}: Pods take the new image when they are deleted"
                    ));
                }
                let ready = n("readyReplicas");
                let updated = n("updatedReplicas");
                let partition = spec["updateStrategy"]["rollingUpdate"]["partition"]
                    .as_i64()
                    .unwrap_or(0);
                if ready < wanted {
                    Rollout::Progressing(format!("{ready} of {wanted} replicas ready"))
                } else if partition > 0 && updated < wanted - partition {
                    Rollout::Progressing(format!(
                        "{updated} of {} replicas above the partition updated",
                        wanted - partition
                    ))
                } else if partition == 0 && status["updateRevision"] != status["currentRevision"] {
                    Rollout::Progressing(format!("{updated} of {wanted} replicas updated"))
                } else {
                    Rollout::Complete(format!("{updated} replicas updated and ready"))
                }
            }
            WorkloadKind::DaemonSet => {
                if strategy != "RollingUpdate" {
                    return Rollout::Complete(format!(
                        "updateStrategy {strategy}: Pods take the new image when they are deleted"
                    ));
                }
                let desired = n("desiredNumberScheduled");
                let updated = n("updatedNumberScheduled");
                let available = n("numberAvailable");
                if updated < desired {
                    Rollout::Progressing(format!("{updated} of {desired} Pods updated"))
                } else if available < desired {
                    Rollout::Progressing(format!("{available} of {desired} Pods available"))
                } else {
                    Rollout::Complete(format!("{updated} Pods updated and available"))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(kind: WorkloadKind, object: Value) -> Workload {
        Workload {
            kind,
            object: serde_json::from_value(object).unwrap(),
        }
    }

    fn deployment(generation: i64, status: Value) -> Workload {
        workload(
            WorkloadKind::Deployment,
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web", "namespace": "ns", "generation": generation},
                "spec": {"replicas": 2, "template": {"spec": {"containers": [
                    {"name": "web", "image": "h/a/web:v1"}
                ]}}},
                "status": status,
            }),
        )
    }

    #[test]
    fn a_deployment_is_complete_when_every_replica_is_updated_and_available() {
        let stale = deployment(
            3,
            json!({"observedGeneration": 2, "updatedReplicas": 2, "replicas": 2, "availableReplicas": 2}),
        );
        assert!(matches!(stale.rollout(), Rollout::Progressing(_)));
        let old_left = deployment(
            3,
            json!({"observedGeneration": 3, "updatedReplicas": 2, "replicas": 3, "availableReplicas": 2}),
        );
        assert!(matches!(old_left.rollout(), Rollout::Progressing(m) if m.contains("old")));
        let done = deployment(
            3,
            json!({"observedGeneration": 3, "updatedReplicas": 2, "replicas": 2, "availableReplicas": 2}),
        );
        assert!(matches!(done.rollout(), Rollout::Complete(_)));
    }

    #[test]
    fn a_deployment_past_its_progress_deadline_failed() {
        let stuck = deployment(
            3,
            json!({"observedGeneration": 3, "updatedReplicas": 1, "replicas": 3, "availableReplicas": 2,
                   "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                                   "message": "ReplicaSet \"web-1\" has timed out progressing."}]}),
        );
        assert!(matches!(stuck.rollout(), Rollout::Failed(m) if m.contains("timed out")));
    }

    #[test]
    fn statefulsets_and_daemonsets_follow_their_own_counters() {
        let sts = |status: Value| {
            workload(
                WorkloadKind::StatefulSet,
                json!({"metadata": {"name": "db", "generation": 2},
                       "spec": {"replicas": 2, "template": {}}, "status": status}),
            )
        };
        let rolling = sts(
            json!({"observedGeneration": 2, "readyReplicas": 2, "updatedReplicas": 1,
                                 "currentRevision": "db-1", "updateRevision": "db-2"}),
        );
        assert!(matches!(rolling.rollout(), Rollout::Progressing(_)));
        let done = sts(
            json!({"observedGeneration": 2, "readyReplicas": 2, "updatedReplicas": 2,
                              "currentRevision": "db-2", "updateRevision": "db-2"}),
        );
        assert!(matches!(done.rollout(), Rollout::Complete(_)));
        let ds = |available: i64| {
            workload(
                WorkloadKind::DaemonSet,
                json!({"metadata": {"name": "agent", "generation": 4}, "spec": {"template": {}},
                       "status": {"observedGeneration": 4, "desiredNumberScheduled": 3,
                                  "updatedNumberScheduled": 3, "numberAvailable": available}}),
            )
        };
        assert!(matches!(ds(2).rollout(), Rollout::Progressing(_)));
        assert!(matches!(ds(3).rollout(), Rollout::Complete(_)));
    }

    #[test]
    fn berth_owned_images_come_from_its_managed_fields() {
        let w = workload(
            WorkloadKind::Deployment,
            json!({
                "metadata": {"name": "web", "managedFields": [
                    {"manager": "kubectl", "operation": "Update", "fieldsType": "FieldsV1",
                     "fieldsV1": {"f:spec": {"f:template": {"f:spec": {"f:containers": {
                        "k:{\"name\":\"side\"}": {"f:image": {}}}}}}}},
                    {"manager": "berth", "operation": "Apply", "fieldsType": "FieldsV1",
                     "fieldsV1": {"f:spec": {"f:template": {"f:spec": {"f:containers": {
                        "k:{\"name\":\"web\"}": {".": {}, "f:image": {}, "f:name": {}}}}}}}},
                ]},
                "spec": {"template": {
                    "metadata": {"annotations": {IMAGE_DIGESTS_ANNOTATION: "web=sha256:1,side=sha256:2"}},
                    "spec": {"containers": [{"name": "web", "image": "a"}, {"name": "side", "image": "b"}]}}},
            }),
        );
        assert_eq!(w.berth_owned_images(), ["web"]);
        assert_eq!(
            w.image_digests().get("side").map(String::as_str),
            Some("sha256:2")
        );
        assert_eq!(w.image_of("side").as_deref(), Some("b"));
    }
}
