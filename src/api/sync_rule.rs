use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::TagFilter;

/// Replication of a namespace's repositories to another registry (push) or from one (pull).
#[derive(CustomResource, KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "berth.dev",
    version = "v1alpha1",
    kind = "SyncRule",
    plural = "syncrules",
    singular = "syncrule",
    shortname = "rsync",
    category = "berth",
    status = "SyncRuleStatus",
    doc = "Replicates repositories of a namespace to another registry, or from one, on push and on a schedule.",
    printcolumn(name = "Direction", type_ = "string", json_path = ".spec.direction"),
    printcolumn(name = "Namespace", type_ = "string", json_path = ".spec.namespace"),
    printcolumn(name = "Remote", type_ = "string", json_path = ".spec.remote.url"),
    printcolumn(
        name = "Last Result",
        type_ = "string",
        json_path = ".status.runs[0].result"
    ),
    printcolumn(
        name = "Last Success",
        type_ = "date",
        json_path = ".status.lastSuccess"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self.direction == 'Push' || !has(self.onPush) || !self.onPush").message("onPush only applies to direction Push"))]
#[serde(rename_all = "camelCase")]
pub struct SyncRuleSpec {
    /// `Push` copies local images to the remote registry; `Pull` copies remote images here.
    pub direction: SyncDirection,

    /// The local registry namespace to replicate.
    #[schemars(regex(pattern = r"^[a-z0-9]+([.-][a-z0-9]+)*$"), length(max = 63))]
    pub namespace: String,

    /// Glob patterns of repository paths (inside the namespace) to replicate; all when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repositories: Vec<String>,

    /// Which tags to replicate.
    #[serde(default)]
    pub tags: TagFilter,

    /// The other registry.
    pub remote: RemoteRegistry,

    /// Whether a tag that already exists at the destination with other content is overwritten.
    #[serde(default)]
    pub overwrite: bool,

    /// Replicate each matching tag as soon as it is pushed (direction Push only; true
    /// when absent for Push rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_push: Option<bool>,

    /// A cron schedule (5 fields, UTC) for full runs, e.g. `0 3 * * *`. No scheduled runs when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^\S+( \S+){4}$"))]
    pub schedule: Option<String>,

    /// Also copy the tags that were there before the rule existed (they are left alone
    /// otherwise). For Pull rules every remote tag is mirrored either way.
    #[serde(default)]
    pub sync_existing: bool,

    /// Set to false to pause the rule without deleting it.
    #[serde(default = "default_true")]
    pub enabled: bool,
}

fn default_true() -> bool {
    true
}

/// Which way images flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum SyncDirection {
    Push,
    Pull,
}

/// Another OCI registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RemoteRegistry {
    /// Base URL of the registry, e.g. `https://registry.example.com`.
    #[schemars(regex(pattern = r"^https?://[^/\s]+(/\S*)?$"))]
    pub url: String,
    /// Namespace (path prefix) at the remote; the local namespace name when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Credentials for the remote registry: a Secret in berth's own namespace, either
    /// `kubernetes.io/dockerconfigjson` (the entry for the remote's host is used) or with
    /// `username` and `password` keys (`kubernetes.io/basic-auth`). Used for Basic auth
    /// and for the token flow, whichever the remote asks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<SecretReference>,
    /// Certificates (PEM) to trust for the remote besides the system's, from a ConfigMap
    /// or Secret in berth's own namespace (as cert-manager's trust bundles provide them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<CaBundleReference>,
    /// Skip TLS certificate verification (for registries with self-signed certificates).
    #[serde(default)]
    pub insecure_skip_tls_verify: bool,
}

/// A PEM bundle in a ConfigMap or Secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CaBundleReference {
    /// `ConfigMap` or `Secret`.
    pub kind: CaBundleKind,
    /// Its name, in berth's namespace.
    pub name: String,
    /// The key holding the PEM certificates.
    #[serde(default = "default_ca_key")]
    pub key: String,
}

fn default_ca_key() -> String {
    "ca.crt".into()
}

/// Where a CA bundle is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum CaBundleKind {
    ConfigMap,
    Secret,
}

/// A Secret by name and Kubernetes namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretReference {
    /// Name of the Secret.
    pub name: String,
    /// Kubernetes namespace of the Secret; berth's own namespace when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// What replication did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncRuleStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` is True when the rule is valid and its remote reachable.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The most recent replications, newest first (bounded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runs: Vec<SyncRun>,
    /// When a replication last succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success: Option<Time>,
    /// The last value of the `berth.dev/sync-now` annotation acted on: a new value
    /// starts a manual run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_now: Option<String>,
}

/// One replicated tag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncRun {
    /// When the copy started.
    pub started: Time,
    /// `repository:tag` that was copied (the repository on the side copied from).
    pub reference: String,
    /// The digest copied (for a conflict: the one that was not copied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// `Succeeded`, `Failed` or `Conflict` (the other side has the tag at other
    /// content and `overwrite` is false).
    pub result: String,
    /// `Automatic` (a push, the schedule, a catch-up) or `Manual` (`berth.dev/sync-now`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
    /// Why it failed or was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// How long the copy took, in milliseconds.
    pub duration_ms: i64,
    /// Bytes transferred.
    pub bytes: i64,
}
