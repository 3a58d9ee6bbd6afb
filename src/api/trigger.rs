use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, MicroTime};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Acts on a matching push: by default (`writeBack.mode: Cluster`) sets the container
/// image of a Deployment, StatefulSet or DaemonSet in the Trigger's namespace and follows
/// the rollout; with `Git` commits the image into a Git repository, with `ArgoCD` sets it
/// on an Argo CD Application.
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
#[x_kube(validation = Rule::new("(has(self.writeBack) && self.writeBack.mode != 'Cluster') || has(self.target)").message("spec.target is required in writeBack mode Cluster"))]
pub struct TriggerSpec {
    /// The repository to watch, `namespace/name` (e.g. `team-a/web`).
    #[schemars(regex(
        pattern = r"^[a-z0-9]+([.-][a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)+$"
    ))]
    pub repository: String,

    /// Which pushed tags fire the trigger.
    #[serde(default)]
    pub tags: TagMatch,

    /// The workload to update (writeBack mode `Cluster`, where it is required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<TriggerTarget>,

    /// Where the new image is written: the workload in the cluster (the default), a
    /// file in a Git repository, or an Argo CD Application.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_back: Option<WriteBack>,

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

impl TriggerSpec {
    /// The write-back mode (`Cluster` when `writeBack` is absent).
    pub fn mode(&self) -> WriteBackMode {
        self.write_back.as_ref().map(|w| w.mode).unwrap_or_default()
    }
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

/// Where a trigger writes the new image.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(self.mode == 'Git') == has(self.git) && (self.mode == 'ArgoCD') == has(self.argocd)").message("mode Git needs git, mode ArgoCD needs argocd, and only then"))]
pub struct WriteBack {
    /// `Cluster` (the default), `Git` or `ArgoCD`.
    #[serde(default)]
    pub mode: WriteBackMode,
    /// The Git repository, branch and file, for mode `Git`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<GitWriteBack>,
    /// The Argo CD Application, for mode `ArgoCD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argocd: Option<ArgoCdWriteBack>,
    /// The image name written (`host/namespace/repo`); by default the first
    /// `--registry-host` followed by `spec.repository`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_name: Option<String>,
}

/// Write-back modes.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum WriteBackMode {
    /// Patch the workload's image with server-side apply and follow the rollout.
    #[default]
    Cluster,
    /// Commit the image into a file of a Git repository (and push).
    Git,
    /// Set the image on an Argo CD Application's Kustomize images or Helm parameters.
    ArgoCD,
}

/// A file in a Git repository that a push commits the new image into.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.kustomize), has(self.helm), has(self.marker)].filter(x, x).size() == 1").message("set exactly one of kustomize, helm and marker"))]
pub struct GitWriteBack {
    /// The repository: `https://…`, `http://…` or `git://…` (SSH is not supported).
    #[schemars(length(min = 1, max = 2048))]
    pub url: String,
    /// The branch to commit to (it must exist).
    #[serde(default = "default_branch")]
    #[schemars(length(min = 1, max = 255))]
    pub branch: String,
    /// The file to edit, relative to the repository's root.
    #[schemars(length(min = 1, max = 4096))]
    pub path: String,
    /// A Secret in the Trigger's namespace with an HTTPS token: key `token` or
    /// `password`, and optionally `username` (default `x-access-token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalSecretReference>,
    /// The commit's author (and committer).
    #[serde(default)]
    pub author: GitAuthor,
    /// The commit message; `{{repository}}`, `{{tag}}`, `{{digest}}`, `{{image}}` and
    /// `{{trigger}}` are replaced. berth adds the trailers `Berth-Trigger`,
    /// `Berth-Digest` and `Berth-Pushed-At`, which order concurrent firings.
    #[serde(default = "default_message")]
    #[schemars(length(min = 1, max = 4096))]
    pub message: String,
    /// The file is a kustomization: set the `images:` entry with this name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kustomize: Option<KustomizeImage>,
    /// The file is a Helm values file: set the values at these paths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub helm: Option<HelmValues>,
    /// Any YAML file: set the values on the lines marked `# {"$berth": "NAME"}`
    /// (the whole image), `# {"$berth": "NAME:tag"}` or `# {"$berth": "NAME:digest"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marker: Option<Marker>,
}

fn default_branch() -> String {
    "main".into()
}

fn default_message() -> String {
    "Deploy {{repository}}:{{tag}}\n\n{{image}}".into()
}

/// A Secret in the resource's own namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalSecretReference {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Who commits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GitAuthor {
    /// The name (default `berth`).
    #[serde(default = "default_author_name")]
    pub name: String,
    /// The email address (default `berth@berth.dev`).
    #[serde(default = "default_author_email")]
    pub email: String,
}

impl Default for GitAuthor {
    fn default() -> Self {
        GitAuthor {
            name: default_author_name(),
            email: default_author_email(),
        }
    }
}

fn default_author_name() -> String {
    "berth".into()
}

fn default_author_email() -> String {
    "berth@berth.dev".into()
}

/// Which `images:` entry of a kustomization is set: `newName`, `newTag` and, pinned by
/// digest, `digest` (created when no entry has this name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KustomizeImage {
    /// The entry's `name`: the image as the manifests name it.
    #[schemars(length(min = 1, max = 512))]
    pub name: String,
}

/// Dotted paths in a Helm values file (e.g. `image.tag`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HelmValues {
    /// Where the tag goes; pinned by digest and without `digest`, `tag@sha256:…` goes here.
    #[schemars(length(min = 1, max = 512))]
    pub tag: String,
    /// Where the digest goes (pinned by digest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Where the image name goes (`host/namespace/repo`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// The name in berth's comment markers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Marker {
    /// The `NAME` of `# {"$berth": "NAME"}`.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// An Argo CD Application whose source a push sets the image on, as Argo CD Image
/// Updater's default write-back does (server-side apply, field manager `berth`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.kustomize) != has(self.helm)").message("set exactly one of kustomize and helm"))]
pub struct ArgoCdWriteBack {
    /// The Application's name.
    #[schemars(length(min = 1, max = 253))]
    pub application: String,
    /// Its Kubernetes namespace; the Trigger's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Set `spec.source.kustomize.images`: the entry for this image name becomes
    /// `NAME=host/repo:tag@digest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kustomize: Option<KustomizeImage>,
    /// Set `spec.source.helm.parameters` with these names (`image.tag`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub helm: Option<HelmValues>,
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
    /// When the workload (or Application) was patched, or the commit pushed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patched_at: Option<MicroTime>,
    /// Milliseconds from push to patch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<i64>,
    /// The commit that carries the image (writeBack mode `Git`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// The workload's generation after the patch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// `Committed` (mode `Git`), `Applied` (mode `ArgoCD`); in mode `Cluster`
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
