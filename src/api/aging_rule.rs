use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::TagFilter;

/// Deletes old tags: those older than a number of days, or all but the newest N.
/// Tags used by a running Pod are never deleted.
#[derive(CustomResource, KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "berth.dev",
    version = "v1alpha1",
    kind = "AgingRule",
    plural = "agingrules",
    singular = "agingrule",
    shortname = "raging",
    category = "berth",
    status = "AgingRuleStatus",
    doc = "Deletes old tags of a namespace's repositories by age or by count, on a schedule, never those a running Pod uses.",
    printcolumn(name = "Namespace", type_ = "string", json_path = ".spec.namespace"),
    printcolumn(name = "Keep Days", type_ = "integer", json_path = ".spec.keepDays"),
    printcolumn(name = "Keep Count", type_ = "integer", json_path = ".spec.keepCount"),
    printcolumn(name = "Dry Run", type_ = "boolean", json_path = ".spec.dryRun"),
    printcolumn(name = "Last Run", type_ = "date", json_path = ".status.lastRun"),
    printcolumn(
        name = "Deleted",
        type_ = "integer",
        json_path = ".status.deletedCount"
    ),
    printcolumn(name = "Freed", type_ = "integer", json_path = ".status.bytesFreed"),
    printcolumn(name = "Next Run", type_ = "date", json_path = ".status.nextRun"),
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
#[x_kube(validation = Rule::new("has(self.keepDays) != has(self.keepCount)").message("set exactly one of keepDays and keepCount"))]
#[serde(rename_all = "camelCase")]
pub struct AgingRuleSpec {
    /// The registry namespace whose repositories are aged.
    #[schemars(regex(pattern = r"^[a-z0-9]+([.-][a-z0-9]+)*$"), length(max = 63))]
    pub namespace: String,

    /// Glob patterns of repository paths (inside the namespace); all when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repositories: Vec<String>,

    /// Delete tags pushed more than this many days ago.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub keep_days: Option<i32>,

    /// Keep only this many most recently pushed tags per repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub keep_count: Option<i32>,

    /// Which tags the rule may delete: `include` patterns (all tags when empty), and
    /// `exclude` patterns that are always kept (e.g. `latest`, `v*`).
    #[serde(default)]
    pub tags: TagFilter,

    /// A cron schedule (5 fields, UTC). Daily at 03:00 when absent. To run at once,
    /// annotate the rule: `kubectl annotate agingrule NAME berth.dev/run-now=$(date +%s) --overwrite`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^\S+( \S+){4}$"))]
    pub schedule: Option<String>,

    /// Report what would be deleted without deleting anything.
    #[serde(default)]
    pub dry_run: bool,
}

/// What the last run did (or would have done).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgingRuleStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` is True when the rule is valid and scheduled; its reason says how the last run went.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// When the rule last ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<Time>,
    /// When the schedule runs it next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run: Option<Time>,
    /// The `berth.dev/run-now` annotation value last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_request: Option<String>,
    /// Whether the last run was a dry run (nothing deleted).
    #[serde(default)]
    pub last_run_dry: bool,
    /// How many tags the last run deleted (or would have, in a dry run).
    #[serde(default)]
    pub deleted_count: i64,
    /// How many tags the last run kept.
    #[serde(default)]
    pub kept_count: i64,
    /// Bytes the garbage collection right after the last run freed.
    #[serde(default)]
    pub bytes_freed: i64,
    /// Tags deleted by the last run, or that would be in a dry run (the first 100).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deleted: Vec<DeletedTag>,
    /// Tags the last run kept although the policy alone would delete them or that it
    /// always keeps, with the reason (the first 100): InUse, Immutable, Excluded, Moved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kept: Vec<KeptTag>,
}

/// A tag the rule deleted or would delete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeletedTag {
    /// The repository, `namespace/name`.
    pub repository: String,
    /// The tag.
    pub tag: String,
    /// The manifest digest the tag pointed at.
    pub digest: String,
}

/// A tag the rule kept, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeptTag {
    /// The repository, `namespace/name`.
    pub repository: String,
    /// The tag.
    pub tag: String,
    /// The manifest digest the tag points at.
    pub digest: String,
    /// InUse, Immutable, Excluded or Moved.
    pub reason: String,
    /// In words, e.g. which workload uses it.
    pub message: String,
}
