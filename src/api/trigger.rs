use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, MicroTime};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Rolls out a workload when a matching tag is pushed: sets the container image of a
/// Deployment, StatefulSet or DaemonSet in the Trigger's namespace and follows the rollout.
#[derive(CustomResource, KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "berth.dev",
    version = "v1alpha1",
    kind = "Trigger",
    plural = "triggers",
    singular = "trigger",
    shortname = "rtrigger",
    category = "berth",
    namespaced,
    status = "TriggerStatus",
    doc = "Updates a workload's image when a matching tag is pushed, and records the rollout.",
    printcolumn(name = "Repository", type_ = "string", json_path = ".spec.repository"),
    printcolumn(name = "Target", type_ = "string", json_path = ".spec.target.name"),
    printcolumn(name = "Enabled", type_ = "boolean", json_path = ".spec.enabled"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct TriggerSpec {
    /// The repository to watch, `namespace/name` (e.g. `team-a/web`).
    #[schemars(regex(
        pattern = r"^[a-z0-9]+([.-][a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)+$"
    ))]
    pub repository: String,

    /// Which pushed tags fire the trigger.
    #[serde(default)]
    pub tags: TagMatch,

    /// The workload to update.
    pub target: TriggerTarget,

    /// `Digest` (the default) sets `repo:tag@sha256:…`, so Pods run exactly what was pushed;
    /// `Tag` sets `repo:tag` and records the digest in the Pod template annotation
    /// `berth.dev/image-digests`, so pushing a tag again rolls out again.
    #[serde(default)]
    pub image_reference: ImageReference,

    /// Restore the previous image when the rollout fails (a Deployment's
    /// `progressDeadlineSeconds` passes; a StatefulSet or DaemonSet is not rolled out
    /// within 10 minutes).
    #[serde(default)]
    pub rollback: bool,

    /// How many firings `status.history` keeps.
    #[serde(default = "default_history")]
    #[schemars(range(min = 1, max = 100))]
    pub history_limit: i32,

    /// Set to false to stop firing without deleting the trigger.
    #[serde(default = "default_true")]
    pub enabled: bool,
}

fn default_true() -> bool {
    true
}

fn default_history() -> i32 {
    10
}

/// Which tags fire a trigger: every tag, the listed ones, or those matching a regular expression.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(self.mode == 'List') == has(self.names) && (self.mode == 'Regex') == has(self.regex)").message("mode List needs names, mode Regex needs regex, and only then"))]
pub struct TagMatch {
    /// `All`, `List` or `Regex`.
    #[serde(default)]
    pub mode: TagMatchMode,
    /// The tags that fire the trigger, for mode `List`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub names: Option<Vec<String>>,
    /// A regular expression a whole tag must match, for mode `Regex`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// How a trigger matches tags.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum TagMatchMode {
    #[default]
    All,
    List,
    Regex,
}

/// The workload a trigger updates, in the trigger's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TriggerTarget {
    /// `Deployment`, `StatefulSet` or `DaemonSet`.
    #[serde(default)]
    pub kind: WorkloadKind,
    /// Name of the workload.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The container to update; when absent, every container whose image is this
    /// repository on this registry (a host name berth serves under, `--registry-host`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

/// Kinds of workload a trigger can update.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum WorkloadKind {
    #[default]
    Deployment,
    StatefulSet,
    DaemonSet,
}

/// How the new image is written into the workload.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum ImageReference {
    /// `repo:tag@sha256:…`
    #[default]
    Digest,
    /// `repo:tag`
    Tag,
}

/// What the trigger did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TriggerStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` is True when the trigger is enabled and its target exists and has a
    /// container to update (reason `Watching`); otherwise the reason says why not:
    /// `Disabled`, `TargetNotFound`, `NoMatchingContainer`, `InvalidRegex`, `NamespaceNotFound`.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The most recent firings, newest first (at most `historyLimit`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<TriggerFiring>,
}

/// One push that fired the trigger, and what came of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TriggerFiring {
    /// The pushed tag.
    pub tag: String,
    /// The pushed manifest digest.
    pub digest: String,
    /// When the manifest was committed (for a firing caught up later: when the tag was written).
    pub pushed_at: MicroTime,
    /// When the workload was patched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patched_at: Option<MicroTime>,
    /// Milliseconds from push to patch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<i64>,
    /// The workload's generation after the patch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// `Progressing` while the rollout runs; then `Succeeded`, `Failed`, `RolledBack`
    /// (failed, and the previous image was restored) or `Superseded` (a newer push, or
    /// someone else, changed the image before the rollout finished).
    pub result: String,
    /// When berth saw the rollout succeed or fail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<MicroTime>,
    /// Details of the outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The images the patch replaced, restored by a rollback.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_images: Vec<ContainerImage>,
}

/// A container's image before a trigger changed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerImage {
    /// The container's name.
    pub container: String,
    /// Its image.
    pub image: String,
    /// With `imageReference: Tag`, the digest berth had recorded for it in the Pod
    /// template annotation `berth.dev/image-digests`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}
