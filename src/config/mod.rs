//! Turns berth's resources into the registry's [`Snapshot`](crate::policy::Snapshot):
//! from the Kubernetes API (the operator's watcher) or from a folder of YAML files
//! (standalone). Both paths build the snapshot the same way.

mod folder;
pub mod user_secrets;

pub use folder::{ConfigFolder, FolderError, LoadedResources, load_text, watch_folder};

use crate::api::{Namespace, Repository};
use crate::policy::{Broken, NamespacePolicy, RepositoryPolicy, Snapshot};

/// Why a Repository's spec, though well-formed, cannot be enforced as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSpec {
    /// Enforcing it would silently protect nothing (a `[0-9]` class or a regex is never
    /// matched by the glob), so it is refused rather than ignored.
    #[error(
        "spec.immutableTags[{index}]: {pattern:?} is not a tag pattern: use tag characters (letters, digits, '_', '.', '-') with the wildcards '*' and '?', at most 128 characters"
    )]
    ImmutableTagPattern { index: usize, pattern: String },
}

const MAX_TAG_PATTERN: usize = 128;

fn tag_pattern_ok(pattern: &str) -> bool {
    !pattern.is_empty()
        && pattern.len() <= MAX_TAG_PATTERN
        && pattern
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-' | b'*' | b'?'))
}

/// Checks what the CRD schema cannot: a Repository that fails here is not enforced as
/// written, it fails closed (see [`Snapshot::failing_closed`]).
pub fn validate_repository(repo: &Repository) -> Result<(), InvalidSpec> {
    if let Some((index, pattern)) = repo
        .spec
        .immutable_tags
        .iter()
        .enumerate()
        .find(|(_, p)| !tag_pattern_ok(p))
    {
        return Err(InvalidSpec::ImmutableTagPattern {
            index,
            pattern: pattern.clone(),
        });
    }
    Ok(())
}

pub fn namespace_policy(ns: &Namespace) -> NamespacePolicy {
    NamespacePolicy {
        visibility: ns.spec.visibility,
        members: ns.spec.members.clone(),
        quota: ns.spec.quota.clone(),
        auto_create_repositories: ns.spec.auto_create_repositories,
    }
}

pub fn repository_policy(repo: &Repository) -> RepositoryPolicy {
    RepositoryPolicy {
        visibility: repo.spec.visibility,
        members: repo.spec.members.clone(),
        immutable_tags: repo.spec.immutable_tags.clone(),
        quota: repo.spec.quota.clone(),
        sharing: repo
            .spec
            .sharing
            .iter()
            .map(|s| crate::policy::Share {
                user: s.user.clone(),
                until: s.until.as_ref().map(|t| t.0),
            })
            .collect(),
        about: crate::policy::About {
            description: repo.spec.description.clone(),
            category: repo.spec.category.clone(),
            labels: repo.spec.labels.clone(),
        },
    }
}

/// The full registry name of a Repository resource: `namespace/name`.
pub fn repository_name(repo: &Repository) -> String {
    format!("{}/{}", repo.spec.namespace, repo.spec.name)
}

/// The snapshot the registry enforces for these resources. Resources being deleted
/// no longer count; invalid Repositories are denied (see [`snapshot_failing_closed`]
/// to keep their last valid version instead).
pub fn snapshot<'a>(
    namespaces: impl IntoIterator<Item = &'a Namespace>,
    repositories: impl IntoIterator<Item = &'a Repository>,
) -> Snapshot {
    snapshot_failing_closed(
        namespaces,
        repositories,
        Broken::default(),
        &Snapshot::default(),
    )
    .0
}

/// The snapshot for these resources, where the invalid Repositories and the `broken`
/// declarations (those that could not even be parsed) keep their version from
/// `previous` or deny. Returns what failed closed, for the log.
pub fn snapshot_failing_closed<'a>(
    namespaces: impl IntoIterator<Item = &'a Namespace>,
    repositories: impl IntoIterator<Item = &'a Repository>,
    mut broken: Broken,
    previous: &Snapshot,
) -> (Snapshot, Broken) {
    let live = |deleting: &Option<_>| deleting.is_none();
    let repositories: Vec<&Repository> = repositories
        .into_iter()
        .filter(|r| live(&r.metadata.deletion_timestamp))
        .filter(|r| {
            let valid = validate_repository(r).is_ok();
            if !valid {
                broken.repositories.push(repository_name(r));
            }
            valid
        })
        .collect();
    let snapshot = Snapshot::managed(
        namespaces
            .into_iter()
            .filter(|n| live(&n.metadata.deletion_timestamp))
            .map(|n| {
                (
                    n.metadata.name.clone().unwrap_or_default(),
                    namespace_policy(n),
                )
            }),
        repositories
            .into_iter()
            .map(|r| (repository_name(r), repository_policy(r))),
    );
    (snapshot.failing_closed(&broken, previous), broken)
}
