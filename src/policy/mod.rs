//! What the registry enforces, as plain data: namespaces and repositories declared
//! by the custom resources (in a cluster) or by YAML files (standalone). The registry
//! reads one immutable [`Snapshot`] per request; whoever watches the configuration
//! swaps in a new one when it changes. Nothing here depends on Kubernetes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use crate::api::{Member, Quota, Visibility};
use crate::oci::RepositoryName;

mod access;
mod limits;

pub use access::{Action, Caller, Denial};
pub use limits::{QuotaScope, glob_matches};

/// The registry namespace every installation has unless it is declared otherwise.
pub const DEFAULT_NAMESPACE: &str = "library";

/// A registry namespace as the registry enforces it.
#[derive(Debug, Clone, PartialEq)]
pub struct NamespacePolicy {
    pub visibility: Visibility,
    pub members: Vec<Member>,
    pub quota: Option<Quota>,
    pub auto_create_repositories: bool,
}

impl NamespacePolicy {
    /// `library`, when nobody declared it: public, and open to repositories created by push.
    pub fn default_library() -> Self {
        NamespacePolicy {
            visibility: Visibility::Public,
            members: Vec::new(),
            quota: None,
            auto_create_repositories: true,
        }
    }

    /// What a namespace whose declaration cannot be read grants when no valid version of
    /// it was ever seen: nothing to anyone but administrators, and no pushes.
    pub fn deny() -> Self {
        NamespacePolicy {
            visibility: Visibility::Private,
            members: Vec::new(),
            quota: None,
            auto_create_repositories: false,
        }
    }
}

/// A declared repository as the registry enforces it.
#[derive(Debug, Clone, PartialEq)]
pub struct RepositoryPolicy {
    pub visibility: Option<Visibility>,
    pub members: Vec<Member>,
    pub immutable_tags: Vec<String>,
    pub quota: Option<Quota>,
    pub sharing: Vec<Share>,
    /// What the web UI shows about it; grants nothing.
    pub about: About,
}

/// A repository's description (markdown), category and labels, as declared.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct About {
    pub description: Option<String>,
    pub category: Option<String>,
    pub labels: std::collections::BTreeMap<String, String>,
}

impl RepositoryPolicy {
    /// What a repository whose declaration cannot be read grants when no valid version of
    /// it was ever seen: private, no members of its own, so never more than its
    /// namespace's members hold, whatever the namespace's visibility.
    pub fn deny() -> Self {
        RepositoryPolicy {
            visibility: Some(Visibility::Private),
            members: Vec::new(),
            immutable_tags: Vec::new(),
            quota: None,
            sharing: Vec::new(),
            about: About::default(),
        }
    }
}

/// Declarations that exist but cannot be enforced as written (unparseable or invalid),
/// by the name they would take effect under.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Broken {
    pub namespaces: Vec<String>,
    /// Full repository names (`namespace/path`).
    pub repositories: Vec<String>,
    /// Some declaration could not even be attributed to a name (a file that is not
    /// YAML, a document without a name): whatever is missing since the last snapshot
    /// may be in it, so it is kept as it was.
    pub unattributed: bool,
}

impl Broken {
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty() && self.repositories.is_empty() && !self.unattributed
    }
}

/// Pull access to one repository granted to a user, until an expiry time if one is set.
#[derive(Debug, Clone, PartialEq)]
pub struct Share {
    pub user: String,
    pub until: Option<jiff::Timestamp>,
}

/// Why a push is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushRefusal {
    #[error(
        "namespace {0:?} does not exist: declare it with a berth Namespace resource named {0:?}"
    )]
    NoNamespace(String),
    #[error(
        "repository {repository:?} is not declared, and namespace {namespace:?} does not create repositories on push (spec.autoCreateRepositories is false): declare it with a berth Repository resource"
    )]
    NotDeclared {
        namespace: String,
        repository: String,
    },
}

/// One consistent view of the configuration.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Without any configuration source, every namespace exists and accepts pushes:
    /// what a newcomer running `berth serve` expects.
    pub open: bool,
    pub namespaces: HashMap<String, NamespacePolicy>,
    /// Keyed by full repository name (`namespace/path`).
    pub repositories: HashMap<String, RepositoryPolicy>,
}

impl Snapshot {
    pub fn open() -> Self {
        Snapshot {
            open: true,
            ..Default::default()
        }
    }

    /// A managed snapshot from declared namespaces and repositories. `library` is added,
    /// public, unless declared.
    pub fn managed(
        namespaces: impl IntoIterator<Item = (String, NamespacePolicy)>,
        repositories: impl IntoIterator<Item = (String, RepositoryPolicy)>,
    ) -> Self {
        let mut namespaces: HashMap<_, _> = namespaces.into_iter().collect();
        namespaces
            .entry(DEFAULT_NAMESPACE.to_string())
            .or_insert_with(NamespacePolicy::default_library);
        Snapshot {
            open: false,
            namespaces,
            repositories: repositories.into_iter().collect(),
        }
    }

    /// Fails closed on `broken` declarations: each keeps its version from `previous` (the
    /// last valid one) or, if it never had one, denies. A broken declaration never falls
    /// back to something wider, such as a public namespace's visibility.
    pub fn failing_closed(mut self, broken: &Broken, previous: &Snapshot) -> Self {
        for name in &broken.namespaces {
            let kept = previous.namespaces.get(name).filter(|_| !previous.open);
            self.namespaces.insert(
                name.clone(),
                kept.cloned().unwrap_or_else(NamespacePolicy::deny),
            );
        }
        for name in &broken.repositories {
            let kept = previous.repositories.get(name).filter(|_| !previous.open);
            self.repositories.insert(
                name.clone(),
                kept.cloned().unwrap_or_else(RepositoryPolicy::deny),
            );
        }
        if broken.unattributed && !previous.open {
            for (name, ns) in &previous.namespaces {
                self.namespaces
                    .entry(name.clone())
                    .or_insert_with(|| ns.clone());
            }
            for (name, repo) in &previous.repositories {
                self.repositories
                    .entry(name.clone())
                    .or_insert_with(|| repo.clone());
            }
        }
        self
    }

    pub fn namespace(&self, name: &str) -> Option<&NamespacePolicy> {
        self.namespaces.get(name)
    }

    pub fn repository(&self, repo: &RepositoryName) -> Option<&RepositoryPolicy> {
        self.repositories.get(repo.as_str())
    }

    /// Whether content may be pushed into `repo` at all (who may push is the auth layer's question).
    pub fn check_push(&self, repo: &RepositoryName) -> Result<(), PushRefusal> {
        if self.open {
            return Ok(());
        }
        let namespace = repo.namespace();
        let policy = self
            .namespace(namespace)
            .ok_or_else(|| PushRefusal::NoNamespace(namespace.to_string()))?;
        if !policy.auto_create_repositories && self.repository(repo).is_none() {
            return Err(PushRefusal::NotDeclared {
                namespace: namespace.to_string(),
                repository: repo.to_string(),
            });
        }
        Ok(())
    }
}

/// The live configuration: readers take the current snapshot, the watcher replaces it.
#[derive(Clone)]
pub struct Policy {
    snapshot: Arc<RwLock<Arc<Snapshot>>>,
    loaded: Arc<AtomicBool>,
    /// Bumped whenever the set of namespaces that exist changes (one appears or goes
    /// away), so whatever refers to a namespace is looked at again at once.
    namespaces_changed: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Policy {
    /// A policy that is in effect from the start.
    pub fn new(snapshot: Snapshot) -> Self {
        Policy {
            snapshot: Arc::new(RwLock::new(Arc::new(snapshot))),
            loaded: Arc::new(AtomicBool::new(true)),
            namespaces_changed: Arc::new(tokio::sync::watch::Sender::new(0)),
        }
    }

    /// A policy still waiting for its source: only `library` exists until the first
    /// [`replace`](Self::replace), and [`is_loaded`](Self::is_loaded) is false, so the
    /// readiness probe keeps traffic away.
    pub fn pending() -> Self {
        let policy = Policy::new(Snapshot::managed([], []));
        policy.loaded.store(false, Ordering::SeqCst);
        policy
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::SeqCst)
    }

    pub fn current(&self) -> Arc<Snapshot> {
        self.snapshot.read().expect("policy lock poisoned").clone()
    }

    pub fn replace(&self, snapshot: Snapshot) {
        let changed = {
            let mut current = self.snapshot.write().expect("policy lock poisoned");
            let changed = current.open != snapshot.open
                || current.namespaces.len() != snapshot.namespaces.len()
                || current
                    .namespaces
                    .keys()
                    .any(|n| !snapshot.namespaces.contains_key(n));
            *current = Arc::new(snapshot);
            changed
        };
        self.loaded.store(true, Ordering::SeqCst);
        if changed {
            self.namespaces_changed
                .send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// A stream that yields after every [`replace`](Self::replace) that adds or removes
    /// a namespace (from the moment it is called; changes in a burst may yield once).
    pub fn namespace_changes(&self) -> impl futures::Stream<Item = ()> + Send + 'static {
        let receiver = self.namespaces_changed.subscribe();
        futures::stream::unfold(receiver, |mut receiver| async move {
            receiver.changed().await.ok()?;
            Some(((), receiver))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(s: &str) -> RepositoryName {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn namespace_changes_yield_when_a_namespace_appears_or_goes_only() {
        use futures::StreamExt;
        let policy = Policy::new(Snapshot::managed([], []));
        let mut changes = Box::pin(policy.namespace_changes());
        let team = || ("team".to_string(), NamespacePolicy::default_library());
        policy.replace(Snapshot::managed([team()], []));
        assert_eq!(changes.next().await, Some(()), "team appeared");
        let public_team = NamespacePolicy {
            visibility: Visibility::Private,
            ..NamespacePolicy::default_library()
        };
        policy.replace(Snapshot::managed([("team".to_string(), public_team)], []));
        let quiet = tokio::time::timeout(std::time::Duration::from_millis(50), changes.next());
        assert!(quiet.await.is_err(), "a changed namespace is not a new one");
        policy.replace(Snapshot::managed([], []));
        assert_eq!(changes.next().await, Some(()), "team went away");
    }

    #[test]
    fn an_open_registry_accepts_any_namespace() {
        assert_eq!(
            Snapshot::open().check_push(&repo("anything/at/all")),
            Ok(())
        );
    }

    #[test]
    fn a_managed_registry_needs_the_namespace_and_has_library_by_default() {
        let snapshot = Snapshot::managed([], []);
        assert_eq!(snapshot.check_push(&repo("library/nginx")), Ok(()));
        assert_eq!(
            snapshot.check_push(&repo("team-b/app")),
            Err(PushRefusal::NoNamespace("team-b".into()))
        );
    }

    #[test]
    fn without_auto_create_only_declared_repositories_take_pushes() {
        let strict = NamespacePolicy {
            auto_create_repositories: false,
            ..NamespacePolicy::default_library()
        };
        let declared = RepositoryPolicy {
            visibility: None,
            members: vec![],
            immutable_tags: vec![],
            quota: None,
            sharing: vec![],
            about: About::default(),
        };
        let snapshot = Snapshot::managed(
            [("team-a".to_string(), strict)],
            [("team-a/web".to_string(), declared)],
        );
        assert_eq!(snapshot.check_push(&repo("team-a/web")), Ok(()));
        assert!(matches!(
            snapshot.check_push(&repo("team-a/other")),
            Err(PushRefusal::NotDeclared { .. })
        ));
    }

    fn public_namespace() -> (String, NamespacePolicy) {
        ("pub".to_string(), NamespacePolicy::default_library())
    }

    fn private_repository() -> RepositoryPolicy {
        RepositoryPolicy {
            visibility: Some(Visibility::Private),
            members: vec![Member {
                user: "dora".into(),
                permission: crate::api::Permission::Read,
            }],
            ..RepositoryPolicy::deny()
        }
    }

    fn anonymous_may_pull(snapshot: &Snapshot, r: &str) -> bool {
        let now = jiff::Timestamp::now();
        snapshot
            .may(&Caller::Anonymous, &repo(r), Action::Pull, now)
            .is_ok()
    }

    #[test]
    fn a_broken_repository_never_seen_valid_is_private_even_in_a_public_namespace() {
        let broken = Broken {
            repositories: vec!["pub/secret".into()],
            ..Broken::default()
        };
        let snapshot = Snapshot::managed([public_namespace()], [])
            .failing_closed(&broken, &Snapshot::default());
        assert!(!anonymous_may_pull(&snapshot, "pub/secret"));
        assert!(
            anonymous_may_pull(&snapshot, "pub/other"),
            "its neighbours are untouched"
        );
    }

    #[test]
    fn a_broken_repository_keeps_its_last_valid_version() {
        let previous = Snapshot::managed(
            [public_namespace()],
            [("pub/secret".to_string(), private_repository())],
        );
        let broken = Broken {
            repositories: vec!["pub/secret".into()],
            ..Broken::default()
        };
        let snapshot =
            Snapshot::managed([public_namespace()], []).failing_closed(&broken, &previous);
        assert_eq!(
            snapshot.repository(&repo("pub/secret")),
            Some(&private_repository())
        );
    }

    #[test]
    fn a_broken_namespace_keeps_its_last_version_or_denies_and_takes_no_pushes() {
        let broken = Broken {
            namespaces: vec!["pub".into()],
            ..Broken::default()
        };
        let denied = Snapshot::managed([], []).failing_closed(&broken, &Snapshot::default());
        assert!(!anonymous_may_pull(&denied, "pub/app"));
        assert!(denied.check_push(&repo("pub/app")).is_err());
        let previous = Snapshot::managed([public_namespace()], []);
        let kept = Snapshot::managed([], []).failing_closed(&broken, &previous);
        assert!(anonymous_may_pull(&kept, "pub/app"));
    }

    #[test]
    fn an_unattributed_error_keeps_what_went_missing() {
        let previous = Snapshot::managed(
            [public_namespace()],
            [("pub/secret".to_string(), private_repository())],
        );
        let broken = Broken {
            unattributed: true,
            ..Broken::default()
        };
        let snapshot =
            Snapshot::managed([public_namespace()], []).failing_closed(&broken, &previous);
        assert!(!anonymous_may_pull(&snapshot, "pub/secret"));
    }
}
