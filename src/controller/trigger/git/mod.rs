//! Write-back into Git: a push commits the new image into a file of a Git repository
//! and pushes the commit, in process (libgit2; HTTP(S) through [`transport`]).
//!
//! One firing is: fetch the branch, edit the file ([`edit`]), and, if that changed
//! anything, commit on top of the fetched head and push without force. The guarantees:
//! - **Idempotent**: a file that already holds the value is not committed again, so
//!   replicas firing for one push make one commit between them (the loser of the race
//!   is refused, fetches, and finds the value there).
//! - **No lost update, no rewritten history**: a refused push (someone committed in
//!   between) is retried from a fresh fetch, re-applying the edit on the new head, at
//!   most [`ATTEMPTS`] times; pushes are never forced.
//! - **Newest push wins**: each commit carries trailers naming the trigger and when the
//!   image was pushed; a firing finds the last such commit of its trigger on the branch
//!   and gives way if it is for a newer push, so a slow replica never writes an older
//!   image over a newer one.
//!
//! The repository is kept between firings in a cache folder per URL (bare, only the
//! branch's history), so a firing fetches only what is new. Operations on one folder
//! are serialised by an async lock.

pub mod edit;
mod transport;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use git2::{ErrorCode, FetchOptions, Oid, PushOptions, RemoteCallbacks, Repository, Signature};
use jiff::Timestamp;
use sha2::{Digest, Sha256};

pub use transport::Credentials;

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
    /// The branch's last commit of this trigger is for a newer push.
    Superseded { commit: String, tag: String },
}

/// Why a write-back failed. [`GitError::reason`] is the condition reason.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("authentication to {url} failed (HTTP {status}): check the Secret's token")]
    AuthFailed { url: String, status: u16 },
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
    let session =
        transport::Session::enter(request.credentials.clone()).map_err(|e| local(dir, e))?;
    let repo = open(dir)?;
    let mut last_refusal = String::new();
    for attempt in 1..=ATTEMPTS {
        let head = fetch(&repo, request, &session)?;
        let head_commit = repo.find_commit(head).map_err(|e| local(dir, e))?;
        if let Some((commit, tag)) = newer_firing(&repo, head, request) {
            return Ok(Outcome::Superseded { commit, tag });
        }
        let tree = head_commit.tree().map_err(|e| local(dir, e))?;
        let not_found = || GitError::PathNotFound {
            url: request.url.clone(),
            branch: request.branch.clone(),
            path: request.path.clone(),
        };
        let entry = tree
            .get_path(Path::new(&request.path))
            .map_err(|_| not_found())?;
        let blob = repo.find_blob(entry.id()).map_err(|_| not_found())?;
        let invalid = |detail: String| GitError::InvalidFile {
            branch: request.branch.clone(),
            path: request.path.clone(),
            detail,
        };
        let text =
            std::str::from_utf8(blob.content()).map_err(|_| invalid("not UTF-8 text".into()))?;
        let edited = (request.edit)(text).map_err(|e| match e {
            edit::EditError::NotFound(detail) => GitError::MarkerNotFound {
                path: request.path.clone(),
                detail,
            },
            edit::EditError::Unsupported(detail) => invalid(detail),
        })?;
        if edited == text {
            return Ok(Outcome::AlreadyCurrent {
                head: head.to_string(),
            });
        }
        let new_blob = repo.blob(edited.as_bytes()).map_err(|e| local(dir, e))?;
        let parts: Vec<&str> = request.path.split('/').filter(|p| !p.is_empty()).collect();
        let new_tree = replace(&repo, Some(&tree), &parts, new_blob, entry.filemode())
            .map_err(|e| local(dir, e))?;
        let new_tree = repo.find_tree(new_tree).map_err(|e| local(dir, e))?;
        let signature = Signature::now(&request.author_name, &request.author_email)
            .map_err(|e| invalid(format!("author: {e}")))?;
        let message = format!(
            "{}\n\nBerth-Trigger: {}\nBerth-Tag: {}\nBerth-Digest: {}\nBerth-Pushed-At: {}\n",
            request.message.trim_end(),
            request.trigger,
            request.tag,
            request.digest,
            request.pushed_at
        );
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
                return Ok(Outcome::Committed {
                    commit: commit.to_string(),
                    attempts: attempt,
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

/// Classifies a transport error: refused credentials, or unreachable.
fn transport_error(request: &Request, session: &transport::Session, e: git2::Error) -> GitError {
    if let Some((status @ (401 | 403), url)) = session.refused() {
        return GitError::AuthFailed { url, status };
    }
    if e.class() == git2::ErrorClass::Http && e.message().contains("authentication") {
        return GitError::AuthFailed {
            url: request.url.clone(),
            status: 401,
        };
    }
    GitError::Unreachable {
        url: request.url.clone(),
        detail: e.message().to_string(),
    }
}

/// Fetches the branch; returns its head.
fn fetch(
    repo: &Repository,
    request: &Request,
    session: &transport::Session,
) -> Result<Oid, GitError> {
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
    session: &transport::Session,
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

/// The last commit of this trigger on the branch (first parents, [`TRAILER_DEPTH`]
/// deep), if it is for a push newer than this one: `(commit, tag)`.
fn newer_firing(repo: &Repository, head: Oid, request: &Request) -> Option<(String, String)> {
    let mut walk = repo.revwalk().ok()?;
    walk.push(head).ok()?;
    walk.simplify_first_parent().ok()?;
    let marker = format!("Berth-Trigger: {}\n", request.trigger);
    for oid in walk.take(TRAILER_DEPTH).flatten() {
        let commit = repo.find_commit(oid).ok()?;
        let message = commit.message().unwrap_or_default();
        if !message.contains(&marker) {
            continue;
        }
        let trailer = |name: &str| {
            message
                .lines()
                .find_map(|l| l.strip_prefix(name).map(str::trim).map(str::to_string))
        };
        let pushed_at: Timestamp = trailer("Berth-Pushed-At:")?.parse().ok()?;
        let digest = trailer("Berth-Digest:").unwrap_or_default();
        let tag = trailer("Berth-Tag:").unwrap_or_default();
        let same = digest == request.digest && tag == request.tag;
        return (!same && pushed_at > request.pushed_at).then(|| (oid.to_string(), tag));
    }
    None
}

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
    async fn a_push_commits_once_and_an_older_push_arriving_later_gives_way() {
        let root = tempfile::tempdir().unwrap();
        // The cache folder is keyed by the URL: a fresh temporary path, a fresh cache.
        let url = repository(root.path());
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
        // A replica that took v1 (pushed before v2) fires after v2 was committed.
        assert_eq!(
            write_back(request(&url, "v1", 100)).await.unwrap(),
            Outcome::Superseded {
                commit: commit.clone(),
                tag: "v2".into()
            }
        );
        let bare = Repository::open_bare(root.path().join("repo.git")).unwrap();
        let head = bare.refname_to_id("refs/heads/main").unwrap();
        assert_eq!(head.to_string(), commit);
        let message = bare
            .find_commit(head)
            .unwrap()
            .message()
            .unwrap()
            .to_string();
        assert!(
            message.starts_with("Deploy v2\n\nBerth-Trigger: ns/web\n"),
            "{message}"
        );
        // A newer push still commits.
        let v3 = write_back(request(&url, "v3", 300)).await.unwrap();
        assert!(matches!(v3, Outcome::Committed { .. }), "{v3:?}");
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
