use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::{Member, Quota, Visibility};

/// One repository (`<namespace>/<name>`) with its settings. Registry content is never
/// kept here; the status reports what storage holds.
#[derive(CustomResource, KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "berth.dev",
    version = "v1alpha1",
    kind = "Repository",
    plural = "repositories",
    singular = "repository",
    shortname = "rrepo",
    category = "berth",
    status = "RepositoryStatus",
    doc = "A repository of a registry namespace: description, category, labels, extra members, sharing, immutable tags and quota.",
    printcolumn(name = "Namespace", type_ = "string", json_path = ".spec.namespace"),
    printcolumn(name = "Path", type_ = "string", json_path = ".spec.name"),
    printcolumn(name = "Tags", type_ = "integer", json_path = ".status.tags"),
    printcolumn(name = "Size", type_ = "integer", json_path = ".status.sizeBytes"),
    printcolumn(
        name = "Pulls",
        type_ = "integer",
        json_path = ".status.pullCount",
        priority = 1
    ),
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
pub struct RepositorySpec {
    /// The registry namespace (the name of a berth Namespace) the repository belongs to. Cannot change.
    #[schemars(regex(pattern = r"^[a-z0-9]+([.-][a-z0-9]+)*$"), length(max = 63))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("namespace cannot change; create a new Repository"))]
    pub namespace: String,

    /// The repository path inside the namespace, e.g. `nginx` or `tools/builder`. Cannot change.
    #[schemars(
        regex(
            pattern = r"^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$"
        ),
        length(min = 1, max = 190)
    )]
    #[x_kube(validation = Rule::new("self == oldSelf").message("name cannot change; create a new Repository"))]
    pub name: String,

    /// Overrides the namespace's visibility for this repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visibility: Option<Visibility>,

    /// A category for browsing, e.g. `application`, `database`, `os`, `language`, `tool`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub category: Option<String>,

    /// A description in Markdown, shown in the web UI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub description: Option<String>,

    /// Labels for browsing and search in the web UI.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,

    /// Glob patterns of tags that, once pushed, can be neither overwritten nor deleted (e.g. `v*`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub immutable_tags: Vec<String>,

    /// Users with permissions on this repository in addition to the namespace's members (each user once).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["user"]))]
    pub members: Vec<Member>,

    /// Other users this repository is shared with for pulling, until a date (each user once).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["user"]))]
    pub sharing: Vec<Share>,

    /// Limits on this repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<Quota>,

    /// What happens to the repository's content when this resource is deleted:
    /// `Retain` (the default) keeps it, `Delete` removes every tag and manifest.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// Pull access granted to one user until a date.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Share {
    /// The user the repository is shared with.
    #[schemars(length(min = 1, max = 253))]
    pub user: String,
    /// When the sharing ends (RFC 3339). Shared forever when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<Time>,
}

/// What deleting the resource does to the content.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum DeletionPolicy {
    /// Keep the repository's content.
    #[default]
    Retain,
    /// Delete the repository's tags and manifests.
    Delete,
}

/// What storage holds for the repository.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` is True once the repository is in effect in the registry.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Number of tags.
    #[serde(default)]
    pub tags: i64,
    /// Bytes of content linked into the repository.
    #[serde(default)]
    pub size_bytes: i64,
    /// Manifest pulls counted by the registry.
    #[serde(default)]
    pub pull_count: i64,
    /// When a tag was last pushed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_push: Option<Time>,
}
