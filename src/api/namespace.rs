use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::{Member, Quota, Visibility};

/// A registry namespace: the first path component of repository names
/// (`<namespace>/<repository>`), like an organisation or project. Its name is the
/// resource's name.
#[derive(CustomResource, KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "berth.dev",
    version = "v1alpha1",
    kind = "Namespace",
    // Not "namespaces": for a cluster-scoped resource the apiserver would read
    // /apis/berth.dev/v1alpha1/namespaces/<name> as a namespace path (kubernetes#97397).
    plural = "registrynamespaces",
    singular = "registrynamespace",
    shortname = "rns",
    category = "berth",
    status = "NamespaceStatus",
    doc = "A registry namespace (organisation, project or workspace) holding repositories, with visibility, members and quotas.",
    validation = Rule::new("self.metadata.name.matches('^[a-z0-9]+([.-][a-z0-9]+)*$') && size(self.metadata.name) <= 63").message("a registry namespace name is lowercase letters and digits separated by single '.' or '-', at most 63 characters"),
    printcolumn(name = "Visibility", type_ = "string", json_path = ".spec.visibility"),
    printcolumn(name = "Repositories", type_ = "integer", json_path = ".status.repositories"),
    printcolumn(name = "Tags", type_ = "integer", json_path = ".status.tags", priority = 1),
    printcolumn(name = "Bytes", type_ = "integer", json_path = ".status.bytesUsed"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceSpec {
    /// Who may pull without being a member: `private` (members only), `internal` (any
    /// signed-in user) or `public` (anyone, without signing in).
    #[serde(default)]
    pub visibility: Visibility,

    /// What the namespace is for, shown in the web UI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,

    /// Users and their permission on every repository of the namespace (each user once).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["user"]))]
    pub members: Vec<Member>,

    /// Limits on the whole namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<Quota>,

    /// Whether a push may create a repository that has no Repository resource yet.
    /// When false, only repositories declared as Repository resources accept pushes.
    #[serde(default = "default_true")]
    pub auto_create_repositories: bool,
}

fn default_true() -> bool {
    true
}

impl Default for NamespaceSpec {
    /// The same defaults the CRD schema applies.
    fn default() -> Self {
        NamespaceSpec {
            visibility: Visibility::default(),
            description: None,
            members: Vec::new(),
            quota: None,
            auto_create_repositories: true,
        }
    }
}

/// What the registry holds in the namespace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` is True once the namespace is in effect in the registry.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Repositories in the namespace.
    #[serde(default)]
    pub repositories: i64,
    /// Tags across all repositories of the namespace.
    #[serde(default)]
    pub tags: i64,
    /// Bytes of content linked into the namespace's repositories.
    #[serde(default)]
    pub bytes_used: i64,
}
