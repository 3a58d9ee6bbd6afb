//! Types shared by several resources.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Who may pull without being a member.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    /// Only members (and users a repository is shared with) may pull.
    #[default]
    Private,
    /// Any signed-in user may pull.
    Internal,
    /// Anyone may pull, without signing in.
    Public,
}

/// What a member may do. Each level includes the ones before it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// Pull images.
    Read,
    /// Pull, push and tag images.
    Write,
    /// Everything, including deleting tags and repositories and editing settings.
    Manage,
}

/// A user and what they may do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    /// The user name, as it signs in to the registry.
    #[schemars(length(min = 1, max = 253))]
    pub user: String,
    /// read (pull), write (pull and push) or manage (also delete and edit).
    pub permission: Permission,
}

/// Limits on what a namespace or repository may hold. Pushes that would exceed them are refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Quota {
    /// Most bytes of content (layers, configs, manifests) that may be stored. Unlimited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_bytes: Option<i64>,
    /// Most tags that may exist. Unlimited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_tags: Option<i64>,
}

/// Selects tags by glob patterns (`*` any run of characters, `?` one character).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TagFilter {
    /// Tags to include; all tags when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    /// Tags to leave out, even when included.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
}
