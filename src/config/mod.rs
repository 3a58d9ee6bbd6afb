//! Turns berth's resources into the registry's [`Snapshot`](crate::policy::Snapshot):
//! from the Kubernetes API (the operator's watcher) or from a folder of YAML files
//! (standalone). Both paths build the snapshot the same way.

mod folder;
pub mod user_secrets;

pub use folder::{ConfigFolder, FolderError, LoadedResources, load_text, watch_folder};

use crate::api::{Namespace, Repository};
use crate::policy::{NamespacePolicy, RepositoryPolicy, Snapshot};

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
    }
}

/// The full registry name of a Repository resource: `namespace/name`.
pub fn repository_name(repo: &Repository) -> String {
    format!("{}/{}", repo.spec.namespace, repo.spec.name)
}

/// The snapshot the registry enforces for these resources. Resources being deleted
/// no longer count.
pub fn snapshot<'a>(
    namespaces: impl IntoIterator<Item = &'a Namespace>,
    repositories: impl IntoIterator<Item = &'a Repository>,
) -> Snapshot {
    let live = |deleting: &Option<_>| deleting.is_none();
    Snapshot::managed(
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
            .filter(|r| live(&r.metadata.deletion_timestamp))
            .map(|r| (repository_name(r), repository_policy(r))),
    )
}
