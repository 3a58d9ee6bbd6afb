//! A SyncRule as the engine runs it: the resource's spec with its credentials and CA
//! bundle already resolved (from Secrets and ConfigMaps in a cluster, from the config
//! folder standalone), and no Kubernetes types.

use jiff::Timestamp;

use super::client::{Credentials, TlsOptions, is_fallback_tag};
use crate::api::{SyncDirection, TagFilter};
use crate::policy::glob_matches;
use crate::schedule::Schedule;

#[derive(Debug, Clone, PartialEq)]
pub struct RuleConfig {
    /// The rule's name: its key in the engine and in records.
    pub name: String,
    pub direction: SyncDirection,
    /// The berth namespace replicated.
    pub namespace: String,
    /// Glob patterns of repository paths inside the namespace; all when empty.
    pub repositories: Vec<String>,
    pub tags: TagFilter,
    pub remote_url: String,
    /// The path prefix at the remote (the local namespace by default).
    pub remote_namespace: String,
    pub credentials: Option<Credentials>,
    pub tls: TlsOptions,
    pub overwrite: bool,
    pub on_push: bool,
    pub schedule: Option<Schedule>,
    /// Also copy tags pushed before the rule existed (`since`).
    pub sync_existing: bool,
    pub enabled: bool,
    /// When the rule came to exist: pushes from then on are its business.
    pub since: Timestamp,
}

impl RuleConfig {
    /// The engine's view of a SyncRule named `name`, with what its references resolved to.
    pub fn from_spec(
        name: &str,
        spec: &crate::api::SyncRuleSpec,
        credentials: Option<Credentials>,
        ca_bundle: Option<String>,
        since: Timestamp,
    ) -> Result<Self, String> {
        let schedule = spec
            .schedule
            .as_deref()
            .map(Schedule::parse)
            .transpose()
            .map_err(|e| e.to_string())?;
        url::Url::parse(&spec.remote.url)
            .map_err(|e| format!("remote.url {:?}: {e}", spec.remote.url))?;
        Ok(RuleConfig {
            name: name.to_string(),
            direction: spec.direction,
            namespace: spec.namespace.clone(),
            repositories: spec.repositories.clone(),
            tags: spec.tags.clone(),
            remote_url: spec.remote.url.trim_end_matches('/').to_string(),
            remote_namespace: spec
                .remote
                .namespace
                .clone()
                .unwrap_or_else(|| spec.namespace.clone()),
            credentials,
            tls: TlsOptions {
                ca_bundle,
                insecure_skip_verify: spec.remote.insecure_skip_tls_verify,
            },
            overwrite: spec.overwrite,
            on_push: spec.direction == SyncDirection::Push && spec.on_push.unwrap_or(true),
            schedule,
            sync_existing: spec.sync_existing,
            enabled: spec.enabled,
            since,
        })
    }

    pub fn direction_label(&self) -> &'static str {
        match self.direction {
            SyncDirection::Push => "Push",
            SyncDirection::Pull => "Pull",
        }
    }

    /// The path of `repo` inside the local namespace, if it is in it and the rule covers it.
    pub fn local_path<'r>(&self, repo: &'r str) -> Option<&'r str> {
        let path = repo.strip_prefix(&self.namespace)?.strip_prefix('/')?;
        self.covers_path(path).then_some(path)
    }

    /// The path of a remote repository inside the remote prefix, if the rule covers it.
    pub fn remote_path<'r>(&self, repo: &'r str) -> Option<&'r str> {
        let path = match self.remote_namespace.as_str() {
            "" => repo,
            prefix => repo.strip_prefix(prefix)?.strip_prefix('/')?,
        };
        self.covers_path(path).then_some(path)
    }

    fn covers_path(&self, path: &str) -> bool {
        self.repositories.is_empty() || self.repositories.iter().any(|p| glob_matches(p, path))
    }

    pub fn local_repo(&self, path: &str) -> String {
        format!("{}/{path}", self.namespace)
    }

    pub fn remote_repo(&self, path: &str) -> String {
        match self.remote_namespace.as_str() {
            "" => path.to_string(),
            prefix => format!("{prefix}/{path}"),
        }
    }

    /// Whether `tag` is replicated: included, not excluded, and not a referrers fallback
    /// tag (those travel with their subjects).
    pub fn covers_tag(&self, tag: &str) -> bool {
        if is_fallback_tag(tag) {
            return false;
        }
        let included =
            self.tags.include.is_empty() || self.tags.include.iter().any(|p| glob_matches(p, tag));
        included && !self.tags.exclude.iter().any(|p| glob_matches(p, tag))
    }

    /// The repository paths named without wildcards (a pull can skip the catalog).
    pub fn literal_paths(&self) -> Option<Vec<String>> {
        if self.repositories.is_empty()
            || self
                .repositories
                .iter()
                .any(|p| p.contains(['*', '?', '[']))
        {
            return None;
        }
        Some(self.repositories.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> RuleConfig {
        RuleConfig {
            name: "r".into(),
            direction: SyncDirection::Push,
            namespace: "team-a".into(),
            repositories: vec!["web".into(), "api*".into()],
            tags: TagFilter {
                include: vec!["v*".into()],
                exclude: vec!["*-rc".into()],
            },
            remote_url: "http://127.0.0.1:1".into(),
            remote_namespace: "dr/team-a".into(),
            credentials: None,
            tls: TlsOptions::default(),
            overwrite: false,
            on_push: true,
            schedule: None,
            sync_existing: false,
            enabled: true,
            since: Timestamp::UNIX_EPOCH,
        }
    }

    #[test]
    fn scope_is_namespace_repository_globs_and_tag_globs() {
        let r = rule();
        assert_eq!(r.local_path("team-a/web"), Some("web"));
        assert_eq!(r.local_path("team-a/api/v2"), Some("api/v2"));
        assert_eq!(r.local_path("team-a/db"), None);
        assert_eq!(r.local_path("team-ab/web"), None);
        assert_eq!(r.remote_repo("web"), "dr/team-a/web");
        assert_eq!(r.remote_path("dr/team-a/api"), Some("api"));
        assert!(r.covers_tag("v1.0"));
        assert!(!r.covers_tag("v1.0-rc"));
        assert!(!r.covers_tag("latest"));
        assert!(!r.covers_tag(&format!("sha256-{}", "0".repeat(64))));
    }
}
