//! Who may do what to a repository: the one place access is decided, from the
//! declared visibility, members and sharing. Callers are already authenticated
//! here; proving who they are is the auth layer's job.

use jiff::Timestamp;

use super::Snapshot;
use crate::api::{Member, Permission, Visibility};
use crate::oci::RepositoryName;

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Anonymous,
    /// A signed-in user: a berth user, or a Kubernetes ServiceAccount
    /// (`system:serviceaccount:<namespace>:<name>`). Administrators may do anything
    /// in every namespace.
    User {
        name: String,
        admin: bool,
    },
    /// A user signed in with a pull-only credential (the one in a pull Secret): it
    /// pulls what the user may pull, and does nothing else.
    PullOnly {
        name: String,
        admin: bool,
    },
}

impl Caller {
    pub fn user(name: impl Into<String>) -> Self {
        Caller::User {
            name: name.into(),
            admin: false,
        }
    }

    pub fn name(&self) -> Option<&str> {
        match self {
            Caller::Anonymous => None,
            Caller::User { name, .. } | Caller::PullOnly { name, .. } => Some(name),
        }
    }

    /// How the caller is named in messages.
    pub fn describe(&self) -> String {
        match self {
            Caller::Anonymous => "an anonymous caller".into(),
            Caller::User { name, .. } => format!("user {name:?}"),
            Caller::PullOnly { name, .. } => format!("user {name:?} (with a pull-only credential)"),
        }
    }
}

/// What a request does to a repository, in the token scopes' vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    /// Read manifests, blobs, tags and referrers.
    Pull,
    /// Upload blobs, put manifests and tags.
    Push,
    /// Delete manifests, tags and blobs.
    Delete,
}

impl Action {
    pub const ALL: [Action; 3] = [Action::Pull, Action::Push, Action::Delete];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "pull" => Some(Action::Pull),
            "push" => Some(Action::Push),
            "delete" => Some(Action::Delete),
            _ => None,
        }
    }

    /// The member permission that grants this action.
    pub fn needs(self) -> Permission {
        match self {
            Action::Pull => Permission::Read,
            Action::Push => Permission::Write,
            Action::Delete => Permission::Manage,
        }
    }
}

/// Why access is refused, worded for the person reading the client's error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{caller} may not {action} {repository}: that needs {permission} permission on namespace {namespace:?} or on the repository{hint}",
    action = action.as_str(),
    permission = permission_name(*needed),
)]
pub struct Denial {
    pub caller: String,
    pub action: Action,
    pub repository: String,
    pub namespace: String,
    pub needed: Permission,
    pub hint: String,
}

fn permission_name(p: Permission) -> &'static str {
    match p {
        Permission::Read => "read",
        Permission::Write => "write",
        Permission::Manage => "manage",
    }
}

fn member_permission(members: &[Member], user: &str) -> Option<Permission> {
    members
        .iter()
        .filter(|m| m.user == user)
        .map(|m| m.permission)
        .max()
}

impl Snapshot {
    /// The repository's effective visibility: its own, else its namespace's.
    /// Undeclared namespaces are private (and take no pushes anyway).
    pub fn visibility(&self, repo: &RepositoryName) -> Visibility {
        self.repository(repo)
            .and_then(|r| r.visibility)
            .or_else(|| self.namespace(repo.namespace()).map(|n| n.visibility))
            .unwrap_or(Visibility::Private)
    }

    /// The strongest permission `user` holds on `repo` as a member of its namespace or of
    /// the repository, counting an unexpired share as read.
    pub fn permission(
        &self,
        user: &str,
        repo: &RepositoryName,
        now: Timestamp,
    ) -> Option<Permission> {
        let from_namespace = self
            .namespace(repo.namespace())
            .and_then(|n| member_permission(&n.members, user));
        let declared = self.repository(repo);
        let from_repository = declared.and_then(|r| member_permission(&r.members, user));
        let shared = declared
            .map(|r| {
                r.sharing
                    .iter()
                    .any(|s| s.user == user && s.until.is_none_or(|until| now < until))
            })
            .unwrap_or(false)
            .then_some(Permission::Read);
        [from_namespace, from_repository, shared]
            .into_iter()
            .flatten()
            .max()
    }

    /// Whether `caller` may perform `action` on `repo` now.
    pub fn may(
        &self,
        caller: &Caller,
        repo: &RepositoryName,
        action: Action,
        now: Timestamp,
    ) -> Result<(), Denial> {
        if self.open {
            return Ok(());
        }
        let visibility = self.visibility(repo);
        let granted = match caller {
            Caller::PullOnly { .. } if action != Action::Pull => false,
            Caller::User { admin: true, .. } | Caller::PullOnly { admin: true, .. } => true,
            Caller::Anonymous => action == Action::Pull && visibility == Visibility::Public,
            Caller::User { name, .. } | Caller::PullOnly { name, .. } => {
                let readable_by_all_users = action == Action::Pull
                    && matches!(visibility, Visibility::Public | Visibility::Internal);
                readable_by_all_users
                    || self
                        .permission(name, repo, now)
                        .is_some_and(|held| held >= action.needs())
            }
        };
        if granted {
            return Ok(());
        }
        let hint = match caller {
            Caller::Anonymous => ": sign in (docker login) first".to_string(),
            Caller::PullOnly { .. } if action != Action::Pull => {
                ", and a pull Secret's credential only pulls".to_string()
            }
            Caller::User { name, .. } | Caller::PullOnly { name, .. } => {
                match self.permission(name, repo, now) {
                    Some(held) => format!(", and it holds only {}", permission_name(held)),
                    None => String::new(),
                }
            }
        };
        Err(Denial {
            caller: caller.describe(),
            action,
            repository: repo.to_string(),
            namespace: repo.namespace().to_string(),
            needed: action.needs(),
            hint,
        })
    }

    /// Whether `caller` may read the namespace `name` as a whole (pull any repository
    /// of it that declares no visibility of its own): what makes a namespace show in
    /// the web UI even before it holds a repository the caller may pull.
    pub fn may_read_namespace(&self, caller: &Caller, name: &str) -> bool {
        if self.open {
            return true;
        }
        let Some(namespace) = self.namespace(name) else {
            return false;
        };
        match caller {
            Caller::User { admin: true, .. } | Caller::PullOnly { admin: true, .. } => true,
            Caller::Anonymous => namespace.visibility == Visibility::Public,
            Caller::User { name: user, .. } | Caller::PullOnly { name: user, .. } => {
                matches!(
                    namespace.visibility,
                    Visibility::Public | Visibility::Internal
                ) || member_permission(&namespace.members, user).is_some()
            }
        }
    }

    /// The actions of `wanted` that `caller` may perform on `repo`: what a token for it grants.
    pub fn allowed_actions(
        &self,
        caller: &Caller,
        repo: &RepositoryName,
        wanted: &[Action],
        now: Timestamp,
    ) -> Vec<Action> {
        wanted
            .iter()
            .copied()
            .filter(|a| self.may(caller, repo, *a, now).is_ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{NamespacePolicy, RepositoryPolicy, Share};

    fn repo(s: &str) -> RepositoryName {
        s.parse().unwrap()
    }

    fn member(user: &str, permission: Permission) -> Member {
        Member {
            user: user.into(),
            permission,
        }
    }

    fn namespace(visibility: Visibility, members: Vec<Member>) -> NamespacePolicy {
        NamespacePolicy {
            visibility,
            members,
            ..NamespacePolicy::default_library()
        }
    }

    fn now() -> Timestamp {
        "2026-11-23T12:00:00Z".parse().unwrap()
    }

    fn snapshot() -> Snapshot {
        let shared = RepositoryPolicy {
            visibility: None,
            members: vec![member("dora", Permission::Manage)],
            immutable_tags: vec![],
            quota: None,
            about: Default::default(),
            sharing: vec![
                Share {
                    user: "erin".into(),
                    until: Some("2026-12-01T00:00:00Z".parse().unwrap()),
                },
                Share {
                    user: "frank".into(),
                    until: Some("2026-11-01T00:00:00Z".parse().unwrap()),
                },
            ],
        };
        Snapshot::managed(
            [
                (
                    "team-a".to_string(),
                    namespace(
                        Visibility::Private,
                        vec![
                            member("rita", Permission::Read),
                            member("will", Permission::Write),
                            member("mona", Permission::Manage),
                        ],
                    ),
                ),
                (
                    "shared".to_string(),
                    namespace(Visibility::Internal, vec![]),
                ),
            ],
            [("team-a/web".to_string(), shared)],
        )
    }

    fn may(caller: &Caller, r: &str, action: Action) -> bool {
        snapshot().may(caller, &repo(r), action, now()).is_ok()
    }

    #[test]
    fn members_get_what_their_permission_grants_and_no_more() {
        let rita = Caller::user("rita");
        let will = Caller::user("will");
        let mona = Caller::user("mona");
        assert!(may(&rita, "team-a/app", Action::Pull));
        assert!(!may(&rita, "team-a/app", Action::Push));
        assert!(may(&will, "team-a/app", Action::Push));
        assert!(!may(&will, "team-a/app", Action::Delete));
        assert!(may(&mona, "team-a/app", Action::Delete));
    }

    #[test]
    fn a_repository_can_add_members_to_a_private_namespace() {
        let dora = Caller::user("dora");
        assert!(may(&dora, "team-a/web", Action::Delete));
        assert!(!may(&dora, "team-a/app", Action::Pull));
    }

    #[test]
    fn visibility_decides_who_pulls_without_membership() {
        assert!(may(&Caller::Anonymous, "library/nginx", Action::Pull));
        assert!(!may(&Caller::Anonymous, "library/nginx", Action::Push));
        assert!(!may(&Caller::Anonymous, "shared/tools", Action::Pull));
        assert!(may(&Caller::user("anyone"), "shared/tools", Action::Pull));
        assert!(!may(&Caller::user("anyone"), "shared/tools", Action::Push));
        assert!(!may(&Caller::user("anyone"), "team-a/app", Action::Pull));
    }

    #[test]
    fn a_share_grants_pull_until_it_expires() {
        assert!(may(&Caller::user("erin"), "team-a/web", Action::Pull));
        assert!(!may(&Caller::user("erin"), "team-a/web", Action::Push));
        assert!(!may(&Caller::user("erin"), "team-a/app", Action::Pull));
        assert!(!may(&Caller::user("frank"), "team-a/web", Action::Pull));
    }

    #[test]
    fn a_namespace_is_readable_exactly_when_its_undeclared_repositories_are() {
        let snapshot = snapshot();
        for caller in [
            Caller::Anonymous,
            Caller::user("rita"),
            Caller::user("anyone"),
            Caller::user("dora"),
        ] {
            for ns in ["team-a", "shared", "nowhere"] {
                let probe = repo(&format!("{ns}/undeclared"));
                assert_eq!(
                    snapshot.may_read_namespace(&caller, ns),
                    snapshot.may(&caller, &probe, Action::Pull, now()).is_ok(),
                    "{caller:?} on {ns}"
                );
            }
        }
    }

    #[test]
    fn administrators_may_do_anything() {
        let admin = Caller::User {
            name: "root".into(),
            admin: true,
        };
        assert!(may(&admin, "team-a/app", Action::Delete));
    }

    #[test]
    fn a_denial_says_who_what_and_which_permission_is_missing() {
        let denial = snapshot()
            .may(
                &Caller::user("rita"),
                &repo("team-a/app"),
                Action::Push,
                now(),
            )
            .unwrap_err();
        assert_eq!(
            denial.to_string(),
            "user \"rita\" may not push team-a/app: that needs write permission on namespace \"team-a\" or on the repository, and it holds only read"
        );
    }

    #[test]
    fn an_open_registry_lets_everyone_do_everything() {
        assert!(
            Snapshot::open()
                .may(&Caller::Anonymous, &repo("x/y"), Action::Delete, now())
                .is_ok()
        );
    }

    #[test]
    fn a_pull_only_caller_pulls_what_its_user_may_pull_and_nothing_else() {
        let mona = Caller::PullOnly {
            name: "mona".into(),
            admin: false,
        };
        assert!(may(&mona, "team-a/app", Action::Pull));
        assert!(!may(&mona, "team-a/app", Action::Push));
        assert!(!may(&mona, "team-a/app", Action::Delete));
        assert!(
            !may(&mona, "team-b/app", Action::Pull),
            "mona is no member there"
        );
        let root = Caller::PullOnly {
            name: "root".into(),
            admin: true,
        };
        assert!(may(&root, "team-b/app", Action::Pull));
        assert!(!may(&root, "team-b/app", Action::Push));
        let denial = snapshot()
            .may(&mona, &repo("team-a/app"), Action::Push, now())
            .unwrap_err();
        assert!(denial.to_string().contains("only pulls"), "{denial}");
    }
}
