//! Write-back into Git: a push commits the new image into a file of a Git repository
//! and pushes the commit, in process (libgit2; HTTP(S) through [`transport`], SSH
//! through [`ssh`], git:// natively).
//!
//! One firing is: fetch the branch, edit the file ([`edit`]), and, if that changed
//! anything, commit on top of the fetched head and push without force. The guarantees:
//! - **One commit per push**: each commit carries trailers naming the trigger, the tag,
//!   the digest and when the image was pushed. A push already committed (or recorded)
//!   on the branch is not committed again, nor is a file that already
//!   holds the value, so replicas firing for one push make one commit between them (the
//!   loser of the race is refused, fetches, and finds the push there).
//! - **No lost update, no rewritten history**: a refused push (someone committed in
//!   between) is retried from a fresh fetch, re-applying the edit on the new head, at
//!   most [`ATTEMPTS`] times; pushes are never forced.
//! - **Newest push wins**: a firing finds the last commit of its trigger that wrote the
//!   file; if that is for a newer push, the file stays and this push is recorded by a
//!   commit that changes no file (trailer `Berth-Superseded-By`), so a slow replica
//!   never writes an older image over a newer one and no push goes unrecorded.
//!
//! The repository is kept between firings in a cache folder per URL (bare, only the
//! branch's history), so a firing fetches only what is new. Operations on one folder
//! are serialised by an async lock.

pub mod edit;
mod known_hosts;
mod ssh;
mod transport;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use git2::{ErrorCode, FetchOptions, Oid, PushOptions, RemoteCallbacks, Repository, Signature};
use jiff::Timestamp;
use sha2::{Digest, Sha256};

pub use ssh::{SshKey, SshKeyError, is_ssh_url};
pub use transport::BasicAuth;

/// How berth authenticates to the remote.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// HTTP(S) Basic auth (a token).
    Basic(BasicAuth),
    /// An SSH key, and the host keys it trusts.
    Ssh(SshKey),
}

/// How many times a refused push is retried from a fresh fetch.
pub const ATTEMPTS: usize = 5;

/// How far back the branch is searched for this trigger's last commit.
const TRAILER_DEPTH: usize = 200;

/// The local ref holding the fetched head, and the one pushed from.
const FETCHED: &str = "refs/berth/fetched";
const OUTGOING: &str = "refs/berth/outgoing";

/// The edit of a file's text: the new text, or why it cannot be edited.
pub type Edit = Box<dyn Fn(&str) -> Result<String, edit::EditError> + Send>;

/// One write-back: where, as whom, what.
pub struct Request {
    pub url: String,
    pub branch: String,
    pub path: String,
    pub credentials: Option<Credentials>,
    pub author_name: String,
    pub author_email: String,
    /// The commit message, placeholders replaced; trailers are added.
    pub message: String,
    /// `namespace/name` of the trigger (the `Berth-Trigger` trailer).
    pub trigger: String,
    pub tag: String,
    pub digest: String,
    pub pushed_at: Timestamp,
    /// The edit of the file's text.
    pub edit: Edit,
}

/// What a write-back did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Pushed this commit (after this many attempts).
    Committed { commit: String, attempts: usize },
    /// The file already holds the value at this head: nothing to commit.
    AlreadyCurrent { head: String },
    /// The file holds a newer push of this trigger (`newer`, of `tag`): this push was
    /// recorded by a commit that changes no file, so every push has its commit.
    Superseded {
        commit: String,
        newer: String,
        tag: String,
    },
}

/// Why a write-back failed. [`GitError::reason`] is the condition reason.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("authentication to {url} failed ({detail})")]
    AuthFailed { url: String, detail: String },
    #[error("{detail}: add the server's key to known_hosts in the Secret")]
    HostKeyUnknown { url: String, detail: String },
    #[error("{detail}: refusing to talk to {url}")]
    HostKeyMismatch { url: String, detail: String },
    #[error("{detail}")]
    InvalidSecret { detail: String },
    #[error("branch {branch:?} does not exist in {url}")]
    BranchNotFound { url: String, branch: String },
    #[error("{path} does not exist on branch {branch:?} of {url}")]
    PathNotFound {
        url: String,
        branch: String,
        path: String,
    },
    #[error("{path} on branch {branch:?}: {detail}")]
    InvalidFile {
        branch: String,
        path: String,
        detail: String,
    },
    #[error("{path}: {detail}")]
    MarkerNotFound { path: String, detail: String },
    #[error("{url}: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("pushing to {url} was refused {ATTEMPTS} times in a row (last: {detail})")]
    Rejected { url: String, detail: String },
    #[error("the local Git cache {path}: {detail}")]
    Local { path: String, detail: String },
}

impl GitError {
    /// The condition (and Event) reason.
    pub fn reason(&self) -> &'static str {
        match self {
            GitError::AuthFailed { .. } => "GitAuthFailed",
            GitError::HostKeyUnknown { .. } => "GitHostKeyUnknown",
            GitError::HostKeyMismatch { .. } => "GitHostKeyMismatch",
            GitError::InvalidSecret { .. } => "InvalidSecret",
            GitError::BranchNotFound { .. } => "BranchNotFound",
            GitError::PathNotFound { .. } | GitError::MarkerNotFound { .. } => "PathNotFound",
            GitError::InvalidFile { .. } => "InvalidFile",
            GitError::Unreachable { .. } => "GitUnreachable",
            GitError::Rejected { .. } => "PushRejected",
            GitError::Local { .. } => "GitCacheFailed",
        }
    }

    /// Whether only a change (of the Trigger, its Secret or the repository) fixes it:
    /// Stalled, not retried on its own beyond the periodic resync.
    pub fn is_stalled(&self) -> bool {
        !matches!(
            self,
            GitError::Unreachable { .. } | GitError::Rejected { .. } | GitError::Local { .. }
        )
    }
}

/// Where the repository of `url` is cached.
fn cache_dir(url: &str) -> PathBuf {
    let root = std::env::var_os("BERTH_GIT_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("berth-git"));
    root.join(hex::encode(&Sha256::digest(url.as_bytes())[..12]))
}

/// One lock per cache folder: bounded by the number of distinct repositories.
fn lock_for(dir: &Path) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>> = OnceLock::new();
    let mut locks = LOCKS
        .get_or_init(Default::default)
        .lock()
        .expect("git lock map poisoned");
    locks.entry(dir.to_path_buf()).or_default().clone()
}

/// Commits and pushes the edit of `request` (see the module documentation).
pub async fn write_back(request: Request) -> Result<Outcome, GitError> {
    let dir = cache_dir(&request.url);
    let lock = lock_for(&dir);
    let _held = lock.lock().await;
    tokio::task::spawn_blocking(move || run(&dir, &request))
        .await
        .map_err(|e| GitError::Local {
            path: String::new(),
            detail: e.to_string(),
        })?
}

fn local(dir: &Path, e: impl std::fmt::Display) -> GitError {
    GitError::Local {
        path: dir.display().to_string(),
        detail: e.to_string(),
    }
}

fn open(dir: &Path) -> Result<Repository, GitError> {
    if let Ok(repo) = Repository::open_bare(dir) {
        return Ok(repo);
    }
    // Absent or damaged: start afresh (it is only a cache).
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| local(dir, e))?;
    Repository::init_bare(dir).map_err(|e| local(dir, e))
}

fn run(dir: &Path, request: &Request) -> Result<Outcome, GitError> {
    let (basic, key) = match request.credentials.clone() {
        Some(Credentials::Basic(basic)) => (Some(basic), None),
        Some(Credentials::Ssh(key)) => (None, Some(key)),
        None => (None, None),
    };
    let session = Sessions {
        http: transport::Session::enter(basic).map_err(|e| local(dir, e))?,
        ssh: ssh::Session::enter(key).map_err(|e| local(dir, e))?,
    };
    let repo = open(dir)?;
    let mut last_refusal = String::new();
    for attempt in 1..=ATTEMPTS {
        let head = fetch(&repo, request, &session)?;
        let head_commit = repo.find_commit(head).map_err(|e| local(dir, e))?;
        let tree = head_commit.tree().map_err(|e| local(dir, e))?;
        let invalid = |detail: String| GitError::InvalidFile {
            branch: request.branch.clone(),
            path: request.path.clone(),
            detail,
        };
        let trailers = format!(
            "Berth-Trigger: {}\nBerth-Tag: {}\nBerth-Digest: {}\nBerth-Pushed-At: {}\n",
            request.trigger, request.tag, request.digest, request.pushed_at
        );
        let (new_tree, message, newer) = match prior(&repo, head, request) {
            Prior::Recorded => {
                return Ok(Outcome::AlreadyCurrent {
                    head: head.to_string(),
                });
            }
            // A newer push is in the file: record this one without touching the file.
            Prior::Newer { commit, tag } => {
                let message = format!(
                    "{}\n\nNot applied: the newer push of {tag} (commit {commit}) stays in {}.\n\n{trailers}Berth-Superseded-By: {commit}\n",
                    request.message.trim_end(),
                    request.path,
                );
                (tree.id(), message, Some((commit, tag)))
            }
            Prior::None => {
                let Some(new_tree) = edited_tree(&repo, &tree, request)? else {
                    return Ok(Outcome::AlreadyCurrent {
                        head: head.to_string(),
                    });
                };
                let message = format!("{}\n\n{trailers}", request.message.trim_end());
                (new_tree, message, None)
            }
        };
        let new_tree = repo.find_tree(new_tree).map_err(|e| local(dir, e))?;
        let signature = Signature::now(&request.author_name, &request.author_email)
            .map_err(|e| invalid(format!("author: {e}")))?;
        let commit = repo
            .commit(
                None,
                &signature,
                &signature,
                &message,
                &new_tree,
                &[&head_commit],
            )
            .map_err(|e| local(dir, e))?;
        repo.reference(OUTGOING, commit, true, "berth write-back")
            .map_err(|e| local(dir, e))?;
        match push(&repo, request, &session)? {
            None => {
                let commit = commit.to_string();
                return Ok(match newer {
                    None => Outcome::Committed {
                        commit,
                        attempts: attempt,
                    },
                    Some((newer, tag)) => Outcome::Superseded { commit, newer, tag },
                });
            }
            Some(refusal) => {
                tracing::debug!(url = %request.url, attempt, %refusal, "push refused; fetching and applying again");
                last_refusal = refusal;
                // Replicas racing on one branch: spread the retries a little.
                let jitter = u64::from(commit.as_bytes()[0]) % 50;
                std::thread::sleep(Duration::from_millis(20 * attempt as u64 + jitter));
            }
        }
    }
    Err(GitError::Rejected {
        url: request.url.clone(),
        detail: last_refusal,
    })
}

/// The tree with the request's edit applied to its file, or `None` if the file holds
/// the value already.
fn edited_tree(
    repo: &Repository,
    tree: &git2::Tree,
    request: &Request,
) -> Result<Option<Oid>, GitError> {
    let not_found = || GitError::PathNotFound {
        url: request.url.clone(),
        branch: request.branch.clone(),
        path: request.path.clone(),
    };
    let invalid = |detail: String| GitError::InvalidFile {
        branch: request.branch.clone(),
        path: request.path.clone(),
        detail,
    };
    let entry = tree
        .get_path(Path::new(&request.path))
        .map_err(|_| not_found())?;
    let blob = repo.find_blob(entry.id()).map_err(|_| not_found())?;
    let text = std::str::from_utf8(blob.content()).map_err(|_| invalid("not UTF-8 text".into()))?;
    let edited = (request.edit)(text).map_err(|e| match e {
        edit::EditError::NotFound(detail) => GitError::MarkerNotFound {
            path: request.path.clone(),
            detail,
        },
        edit::EditError::Unsupported(detail) => invalid(detail),
    })?;
    if edited == text {
        return Ok(None);
    }
    let cache = |e: git2::Error| GitError::Local {
        path: repo.path().display().to_string(),
        detail: e.to_string(),
    };
    let new_blob = repo.blob(edited.as_bytes()).map_err(cache)?;
    let parts: Vec<&str> = request.path.split('/').filter(|p| !p.is_empty()).collect();
    replace(repo, Some(tree), &parts, new_blob, entry.filemode())
        .map(Some)
        .map_err(cache)
}

/// The transports' contexts of one write-back (on its thread).
struct Sessions {
    http: transport::Session,
    ssh: ssh::Session,
}

/// Classifies a transport error: refused credentials or host key, or unreachable.
fn transport_error(request: &Request, session: &Sessions, e: git2::Error) -> GitError {
    let url = request.url.clone();
    if let Some((status @ (401 | 403), url)) = session.http.refused() {
        let detail = format!("HTTP {status}: check the Secret's token");
        return GitError::AuthFailed { url, detail };
    }
    if e.class() == git2::ErrorClass::Http && e.message().contains("authentication") {
        let detail = "HTTP 401: check the Secret's token".into();
        return GitError::AuthFailed { url, detail };
    }
    match session.ssh.failure() {
        Some(e @ ssh::SshError::AuthRefused { .. }) => {
            let detail = format!("{e}: check the Secret's ssh-privatekey");
            return GitError::AuthFailed { url, detail };
        }
        Some(e @ ssh::SshError::HostKeyUnknown { .. }) => {
            let detail = e.to_string();
            return GitError::HostKeyUnknown { url, detail };
        }
        Some(
            e @ (ssh::SshError::HostKeyMismatch { .. } | ssh::SshError::HostKeyRevoked { .. }),
        ) => {
            let detail = e.to_string();
            return GitError::HostKeyMismatch { url, detail };
        }
        Some(e @ (ssh::SshError::NoKey(_) | ssh::SshError::InvalidUrl(_))) => {
            let detail = e.to_string();
            return GitError::InvalidSecret { detail };
        }
        _ => {}
    }
    GitError::Unreachable {
        url: request.url.clone(),
        detail: e.message().to_string(),
    }
}

/// Fetches the branch; returns its head.
fn fetch(repo: &Repository, request: &Request, session: &Sessions) -> Result<Oid, GitError> {
    // A stale ref from an earlier fetch must not pass for the branch.
    if let Ok(mut r) = repo.find_reference(FETCHED) {
        let _ = r.delete();
    }
    let mut remote = repo
        .remote_anonymous(&request.url)
        .map_err(|e| GitError::Unreachable {
            url: request.url.clone(),
            detail: e.message().to_string(),
        })?;
    let refspec = format!("+refs/heads/{}:{FETCHED}", request.branch);
    let mut options = FetchOptions::new();
    options.download_tags(git2::AutotagOption::None);
    remote
        .fetch(&[&refspec], Some(&mut options), None)
        .map_err(|e| transport_error(request, session, e))?;
    repo.refname_to_id(FETCHED)
        .map_err(|_| GitError::BranchNotFound {
            url: request.url.clone(),
            branch: request.branch.clone(),
        })
}

/// Pushes [`OUTGOING`] to the branch without force. `Some(why)` when the server or
/// libgit2 refused it as not a fast-forward (or the ref moved meanwhile).
fn push(
    repo: &Repository,
    request: &Request,
    session: &Sessions,
) -> Result<Option<String>, GitError> {
    let mut remote = repo
        .remote_anonymous(&request.url)
        .map_err(|e| GitError::Unreachable {
            url: request.url.clone(),
            detail: e.message().to_string(),
        })?;
    let refused = std::cell::RefCell::new(None);
    let mut callbacks = RemoteCallbacks::new();
    callbacks.push_update_reference(|reference, status| {
        if let Some(status) = status {
            *refused.borrow_mut() = Some(format!("{reference}: {status}"));
        }
        Ok(())
    });
    let mut options = PushOptions::new();
    options.remote_callbacks(callbacks);
    // No leading `+`: never a forced update.
    let refspec = format!("{OUTGOING}:refs/heads/{}", request.branch);
    let pushed = remote.push(&[&refspec], Some(&mut options));
    drop(options);
    match pushed {
        Ok(()) => Ok(refused.into_inner()),
        Err(e) if e.code() == ErrorCode::NotFastForward => Ok(Some(e.message().to_string())),
        Err(e) => Err(transport_error(request, session, e)),
    }
}

/// The tree `tree` with the blob at `parts` replaced by `blob`.
fn replace(
    repo: &Repository,
    tree: Option<&git2::Tree>,
    parts: &[&str],
    blob: Oid,
    mode: i32,
) -> Result<Oid, git2::Error> {
    let mut builder = repo.treebuilder(tree)?;
    match parts {
        [] => return Err(git2::Error::from_str("an empty path")),
        [name] => {
            builder.insert(name, blob, mode)?;
        }
        [name, rest @ ..] => {
            let sub = match tree.and_then(|t| t.get_name(name)) {
                Some(entry) => Some(repo.find_tree(entry.id())?),
                None => None,
            };
            let oid = replace(repo, sub.as_ref(), rest, blob, mode)?;
            builder.insert(name, oid, 0o040000)?;
        }
    }
    builder.write()
}

/// What the branch already holds of this trigger's pushes.
#[derive(Debug, PartialEq, Eq)]
enum Prior {
    /// Nothing that concerns this push: apply it.
    None,
    /// This push (tag and digest) was committed or recorded already: a replica or a
    /// retry fired it again.
    Recorded,
    /// The file holds a newer push of this trigger: `(commit, tag)`.
    Newer { commit: String, tag: String },
}

/// Reads this trigger's commits on the branch (first parents, [`TRAILER_DEPTH`] deep),
/// newest first: whether this push (tag, digest and push time) is among them, and whether the
/// last one that wrote the file is for a newer push (records of superseded pushes
/// carry `Berth-Superseded-By` and wrote nothing).
///
/// The whole depth is searched for the push, not only down to the last write: two
/// replicas (a push event on one, the leader's catch-up on the other) may fire one
/// push after a newer one was written over it.
fn prior(repo: &Repository, head: Oid, request: &Request) -> Prior {
    let Ok(mut walk) = repo.revwalk() else {
        return Prior::None;
    };
    if walk.push(head).is_err() || walk.simplify_first_parent().is_err() {
        return Prior::None;
    }
    let marker = format!("Berth-Trigger: {}\n", request.trigger);
    let mut last_write: Option<Prior> = None;
    for oid in walk.take(TRAILER_DEPTH).flatten() {
        let Ok(commit) = repo.find_commit(oid) else {
            break;
        };
        let message = commit.message().unwrap_or_default();
        if !message.contains(&marker) {
            continue;
        }
        let trailer = |name: &str| {
            message
                .lines()
                .find_map(|l| l.strip_prefix(name).map(str::trim).map(str::to_string))
        };
        let digest = trailer("Berth-Digest:").unwrap_or_default();
        let tag = trailer("Berth-Tag:").unwrap_or_default();
        let pushed_at: Option<Timestamp> = trailer("Berth-Pushed-At:").and_then(|t| t.parse().ok());
        if digest == request.digest
            && tag == request.tag
            && pushed_at.is_some_and(|at| same_moment(at, request.pushed_at))
        {
            return Prior::Recorded;
        }
        if last_write.is_some() || trailer("Berth-Superseded-By:").is_some() {
            continue;
        }
        last_write = Some(match pushed_at {
            Some(at) if at > request.pushed_at => Prior::Newer {
                commit: oid.to_string(),
                tag,
            },
            _ => Prior::None,
        });
    }
    last_write.unwrap_or(Prior::None)
}

/// Whether two push times name one push: a push event carries the moment the registry
/// answered, the leader's catch-up the time the tag was written, to the store's precision
/// (seconds on S3). A later push of the same image to the same tag (a rollback by
/// re-tagging) is further apart and is committed again.
fn same_moment(a: Timestamp, b: Timestamp) -> bool {
    a.duration_since(b).abs() <= SAME_PUSH_WITHIN
}

/// See [`same_moment`].
const SAME_PUSH_WITHIN: jiff::SignedDuration = jiff::SignedDuration::from_secs(2);

/// The message template with its placeholders replaced.
pub fn render_message(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = template.to_string();
    for (name, value) in values {
        out = out.replace(&format!("{{{{{name}}}}}"), value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bare repository with `kustomization.yaml` on main, reached by its path
    /// (libgit2's local transport).
    fn repository(root: &Path) -> String {
        let bare = Repository::init_bare(root.join("repo.git")).unwrap();
        let blob = bare.blob(b"images:\n- name: web\n  newTag: v0\n").unwrap();
        let mut tree = bare.treebuilder(None).unwrap();
        tree.insert("kustomization.yaml", blob, 0o100644).unwrap();
        let tree = bare.find_tree(tree.write().unwrap()).unwrap();
        let who = Signature::now("seed", "seed@example.com").unwrap();
        bare.commit(Some("refs/heads/main"), &who, &who, "seed", &tree, &[])
            .unwrap();
        root.join("repo.git").to_str().unwrap().to_string()
    }

    fn request(url: &str, tag: &str, second: i64) -> Request {
        let edits = vec![(
            vec![
                edit::Segment::key("images"),
                edit::Segment::Item {
                    key: "name".into(),
                    value: "web".into(),
                },
                edit::Segment::key("newTag"),
            ],
            tag.to_string(),
        )];
        Request {
            url: url.into(),
            branch: "main".into(),
            path: "kustomization.yaml".into(),
            credentials: None,
            author_name: "berth".into(),
            author_email: "berth@example.com".into(),
            message: format!("Deploy {tag}"),
            trigger: "ns/web".into(),
            tag: tag.into(),
            digest: format!("sha256:{tag}"),
            pushed_at: Timestamp::from_second(second).unwrap(),
            edit: Box::new(move |text| edit::set_values(text, &edits)),
        }
    }

    #[tokio::test]
    async fn a_push_commits_once_an_older_push_arriving_later_is_recorded_and_a_later_repush_rolls_back()
     {
        let root = tempfile::tempdir().unwrap();
        // The cache folder is keyed by the URL: a fresh temporary path, a fresh cache.
        let url = repository(root.path());
        let bare = Repository::open_bare(root.path().join("repo.git")).unwrap();
        let file = |bare: &Repository| {
            let head = bare.refname_to_id("refs/heads/main").unwrap();
            let tree = bare.find_commit(head).unwrap().tree().unwrap();
            let entry = tree.get_path(Path::new("kustomization.yaml")).unwrap();
            String::from_utf8(bare.find_blob(entry.id()).unwrap().content().to_vec()).unwrap()
        };
        let v2 = write_back(request(&url, "v2", 200)).await.unwrap();
        let Outcome::Committed { commit, attempts } = v2 else {
            panic!("{v2:?}")
        };
        assert_eq!(attempts, 1);
        assert_eq!(
            write_back(request(&url, "v2", 200)).await.unwrap(),
            Outcome::AlreadyCurrent {
                head: commit.clone()
            },
            "the same push again commits nothing"
        );
        // A replica that took v1 (pushed before v2) fires after v2 was committed: v1 is
        // recorded, v2 stays in the file.
        let v1 = write_back(request(&url, "v1", 100)).await.unwrap();
        let Outcome::Superseded {
            commit: record,
            newer,
            tag,
        } = v1
        else {
            panic!("{v1:?}")
        };
        assert_eq!((newer.as_str(), tag.as_str()), (commit.as_str(), "v2"));
        let head = bare.refname_to_id("refs/heads/main").unwrap();
        assert_eq!(head.to_string(), record);
        let record = bare.find_commit(head).unwrap();
        assert_eq!(record.parent_id(0).unwrap().to_string(), commit);
        assert_eq!(
            record.tree_id(),
            record.parent(0).unwrap().tree_id(),
            "the record changes no file"
        );
        let message = record.message().unwrap().to_string();
        assert!(message.starts_with("Deploy v1\n\nNot applied"), "{message}");
        assert!(message.contains("Berth-Tag: v1\n"), "{message}");
        assert!(
            message.ends_with(&format!("Berth-Superseded-By: {commit}\n")),
            "{message}"
        );
        assert!(file(&bare).contains("newTag: v2"));
        // v1 fired again (the other replica): recorded already.
        assert!(matches!(
            write_back(request(&url, "v1", 101)).await.unwrap(),
            Outcome::AlreadyCurrent { .. }
        ));
        // Another old push after the record still gives way to v2, not to the record.
        let v0 = write_back(request(&url, "v0b", 50)).await.unwrap();
        assert!(
            matches!(v0, Outcome::Superseded { ref newer, .. } if *newer == commit),
            "{v0:?}"
        );
        // A newer push still commits.
        let v3 = write_back(request(&url, "v3", 300)).await.unwrap();
        assert!(matches!(v3, Outcome::Committed { .. }), "{v3:?}");
        assert!(file(&bare).contains("newTag: v3"));
        // v2 fired once more (a replica's catch-up) after v3 was written: on the branch
        // already, so neither written nor recorded again.
        assert!(matches!(
            write_back(request(&url, "v2", 201)).await.unwrap(),
            Outcome::AlreadyCurrent { .. }
        ));
        // v2 pushed again later, over v3 (a rollback by re-tagging): a new push, committed.
        let rollback = write_back(request(&url, "v2", 400)).await.unwrap();
        assert!(
            matches!(rollback, Outcome::Committed { .. }),
            "{rollback:?}"
        );
        assert!(file(&bare).contains("newTag: v2"));
    }

    #[test]
    fn the_message_template_takes_tag_digest_and_repository() {
        let text = render_message(
            "Deploy {{repository}}:{{tag}}\n\n{{digest}} {{unknown}}",
            &[
                ("repository", "team/web"),
                ("tag", "v1"),
                ("digest", "sha256:ab"),
            ],
        );
        assert_eq!(text, "Deploy team/web:v1\n\nsha256:ab {{unknown}}");
    }
}
