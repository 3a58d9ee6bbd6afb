//! Quotas and immutable tags as declared: which limits apply to a repository.
//! Measuring usage and refusing pushes is the registry's part.

use super::Snapshot;
use crate::api::Quota;
use crate::oci::RepositoryName;

/// Where a quota was declared, for messages that point at the resource to change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaScope {
    Namespace,
    Repository,
}

impl Snapshot {
    /// The quotas that bound `repo`: its own, and its namespace's.
    pub fn quotas(&self, repo: &RepositoryName) -> Vec<(QuotaScope, &Quota)> {
        let mut quotas = Vec::new();
        if let Some(q) = self.repository(repo).and_then(|r| r.quota.as_ref()) {
            quotas.push((QuotaScope::Repository, q));
        }
        if let Some(q) = self
            .namespace(repo.namespace())
            .and_then(|n| n.quota.as_ref())
        {
            quotas.push((QuotaScope::Namespace, q));
        }
        quotas
    }

    /// The scope whose tag writes must not interleave (see `Store::lock_tags`): the
    /// namespace when its tag count is limited (pushes into any of its repositories
    /// count against one number), otherwise the repository.
    pub fn tag_scope(&self, repo: &RepositoryName) -> String {
        let namespace_counts = self
            .quotas(repo)
            .iter()
            .any(|(scope, quota)| *scope == QuotaScope::Namespace && quota.max_tags.is_some());
        if namespace_counts {
            format!("namespace {}", repo.namespace())
        } else {
            format!("repository {repo}")
        }
    }

    /// The pattern that makes `tag` immutable in `repo`, if one does.
    pub fn immutable_pattern(&self, repo: &RepositoryName, tag: &str) -> Option<&str> {
        self.repository(repo)?
            .immutable_tags
            .iter()
            .find(|p| glob_matches(p, tag))
            .map(String::as_str)
    }

    pub fn has_immutable_tags(&self, repo: &RepositoryName) -> bool {
        self.repository(repo)
            .is_some_and(|r| !r.immutable_tags.is_empty())
    }
}

/// Shell-style matching: `*` any run of characters, `?` one character, the rest literal.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            backtrack = Some((pi, ti));
            pi += 1;
        } else if let Some((star, matched)) = backtrack {
            pi = star + 1;
            ti = matched + 1;
            backtrack = Some((star, matched + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::glob_matches;

    #[test]
    fn globs_match_like_a_shell() {
        assert!(glob_matches("v*", "v1.2.3"));
        assert!(glob_matches("v*", "v"));
        assert!(!glob_matches("v*", "latest"));
        assert!(glob_matches("release-?", "release-1"));
        assert!(!glob_matches("release-?", "release-10"));
        assert!(glob_matches("*-stable", "2024-stable"));
        assert!(glob_matches("exact", "exact"));
        assert!(!glob_matches("exact", "exactly"));
        assert!(glob_matches("*", ""));
    }
}
