//! Real Git servers on loopback for the write-back tests: `git daemon` with
//! receive-pack enabled (git://), and Git's smart HTTP (`git http-backend`, run as a CGI
//! by a small hyper server here) that checks a token by Basic auth and can let "someone
//! else" commit to the branch just before a push is received.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, Response};

use crate::common::run;

/// A bare repository `repo.git` under a temporary root, seeded with one commit.
pub struct GitRepo {
    pub root: tempfile::TempDir,
    git: PathBuf,
}

impl GitRepo {
    /// A repository whose `branch` holds `files` (path, content), committed by "seed".
    pub fn new(git: &Path, branch: &str, files: &[(&str, &str)]) -> GitRepo {
        let root = tempfile::tempdir().unwrap();
        let repo = GitRepo {
            root,
            git: git.to_path_buf(),
        };
        run(repo
            .cmd(None)
            .args(["init", "-q", "--bare", "-b", branch])
            .arg(repo.bare()));
        repo.commit_as("seed", branch, files, "seed");
        repo
    }

    pub fn bare(&self) -> PathBuf {
        self.root.path().join("repo.git")
    }

    fn cmd(&self, git_dir: Option<&Path>) -> Command {
        let mut cmd = Command::new(&self.git);
        if let Some(dir) = git_dir {
            cmd.arg("--git-dir").arg(dir);
        }
        cmd.env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", self.root.path())
            .env("GIT_AUTHOR_NAME", "someone")
            .env("GIT_AUTHOR_EMAIL", "someone@example.com")
            .env("GIT_COMMITTER_NAME", "someone")
            .env("GIT_COMMITTER_EMAIL", "someone@example.com");
        cmd
    }

    /// Someone else commits `files` on `branch` (a clone, a commit, a plain push).
    pub fn commit_as(&self, who: &str, branch: &str, files: &[(&str, &str)], message: &str) {
        let work = tempfile::tempdir().unwrap();
        let exists = self
            .cmd(Some(&self.bare()))
            .args([
                "rev-parse",
                "--verify",
                "-q",
                &format!("refs/heads/{branch}"),
            ])
            .output()
            .unwrap()
            .status
            .success();
        if exists {
            run(self
                .cmd(None)
                .args(["clone", "-q", "-b", branch])
                .arg(self.bare())
                .arg(work.path()));
        } else {
            run(self
                .cmd(None)
                .args(["init", "-q", "-b", branch])
                .arg(work.path()));
        }
        for (path, content) in files {
            let file = work.path().join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, content).unwrap();
        }
        let in_work = |args: &[&str]| {
            let mut cmd = self.cmd(None);
            cmd.arg("-C").arg(work.path()).args(args);
            cmd.env("GIT_AUTHOR_NAME", who)
                .env("GIT_COMMITTER_NAME", who);
            run(&mut cmd);
        };
        in_work(&["add", "-A"]);
        in_work(&["commit", "-q", "--allow-empty", "-m", message]);
        let bare = self.bare();
        in_work(&[
            "push",
            "-q",
            bare.to_str().unwrap(),
            &format!("HEAD:refs/heads/{branch}"),
        ]);
    }

    /// `git log` of `branch`, first parents, newest first: one line per commit in `format`.
    pub fn log(&self, branch: &str, format: &str) -> Vec<String> {
        run(self.cmd(Some(&self.bare())).args([
            "log",
            "--first-parent",
            &format!("--format={format}"),
            branch,
        ]))
        .lines()
        .map(str::to_string)
        .collect()
    }

    /// The full message of `commit`.
    pub fn message(&self, commit: &str) -> String {
        run(self
            .cmd(Some(&self.bare()))
            .args(["log", "-1", "--format=%B", commit]))
    }

    /// The file at `path` on `branch`.
    pub fn show(&self, branch: &str, path: &str) -> String {
        run(self
            .cmd(Some(&self.bare()))
            .args(["show", &format!("{branch}:{path}")]))
    }

    /// The files `commit` changed against its first parent.
    pub fn changed_files(&self, commit: &str) -> Vec<String> {
        run(self.cmd(Some(&self.bare())).args([
            "diff-tree",
            "--no-commit-id",
            "--name-only",
            "-r",
            &format!("{commit}^"),
            commit,
        ]))
        .lines()
        .map(str::to_string)
        .collect()
    }

    /// Whether `ancestor` is an ancestor of `branch`.
    pub fn is_ancestor(&self, ancestor: &str, branch: &str) -> bool {
        self.cmd(Some(&self.bare()))
            .args(["merge-base", "--is-ancestor", ancestor, branch])
            .status()
            .unwrap()
            .success()
    }
}

use crate::common::free_port;

fn wait_for_port(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `git daemon` serving the repository's root, pushes allowed.
pub struct GitDaemon {
    child: Child,
    pub url: String,
}

impl GitDaemon {
    pub fn start(git: &Path, repo: &GitRepo) -> GitDaemon {
        let port = free_port();
        let root = repo.root.path();
        let child = Command::new(git)
            .args([
                "daemon",
                "--reuseaddr",
                "--export-all",
                "--enable=receive-pack",
            ])
            .arg("--listen=127.0.0.1")
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", root.display()))
            .arg(root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(SocketAddr::from(([127, 0, 0, 1], port)));
        GitDaemon {
            child,
            url: format!("git://127.0.0.1:{port}/repo.git"),
        }
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Something to do once, just before the next push is handed to Git.
pub type BeforePush = Box<dyn FnOnce() + Send>;

/// Git's smart HTTP over `git http-backend`, with a token checked by Basic auth.
pub struct GitHttp {
    pub url: String,
    /// Requests answered (any status).
    pub requests: Arc<AtomicUsize>,
    /// Requests refused for bad credentials.
    pub refused: Arc<AtomicUsize>,
    before_push: Arc<Mutex<Option<BeforePush>>>,
    task: tokio::task::JoinHandle<()>,
}

impl GitHttp {
    pub async fn start(git: &Path, repo: &GitRepo, token: &str) -> GitHttp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let before_push: Arc<Mutex<Option<BeforePush>>> = Arc::default();
        let shared = Arc::new(Backend {
            git: git.to_path_buf(),
            root: repo.root.path().to_path_buf(),
            token: token.to_string(),
            requests: requests.clone(),
            refused: refused.clone(),
            before_push: before_push.clone(),
        });
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let backend = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let backend = backend.clone();
                        async move { Ok::<_, Infallible>(backend.serve(req).await) }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        GitHttp {
            url: format!("http://{addr}/repo.git"),
            requests,
            refused,
            before_push,
            task,
        }
    }

    /// Runs `f` once, when the next push arrives, before Git receives it.
    pub fn before_next_push(&self, f: impl FnOnce() + Send + 'static) {
        *self.before_push.lock().unwrap() = Some(Box::new(f));
    }
}

impl Drop for GitHttp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Backend {
    git: PathBuf,
    root: PathBuf,
    token: String,
    requests: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    before_push: Arc<Mutex<Option<BeforePush>>>,
}

impl Backend {
    async fn serve(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let expected = base64::engine::general_purpose::STANDARD
            .encode(format!("x-access-token:{}", self.token));
        let authorized = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            == Some(format!("Basic {expected}").as_str());
        if !authorized {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Response::builder()
                .status(401)
                .header("www-authenticate", "Basic realm=\"git\"")
                .body(Full::new(Bytes::new()))
                .unwrap();
        }
        let method = req.method().to_string();
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or_default().to_string();
        let content_type = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = req.into_body().collect().await.unwrap().to_bytes();
        if method == "POST" && path.ends_with("/git-receive-pack") {
            let hook = self.before_push.lock().unwrap().take();
            if let Some(hook) = hook {
                tokio::task::spawn_blocking(hook).await.unwrap();
            }
        }
        let (git, root) = (self.git.clone(), self.root.clone());
        let output = tokio::task::spawn_blocking(move || {
            let mut child = Command::new(git)
                .arg("http-backend")
                .env_clear()
                .env("GIT_PROJECT_ROOT", root)
                .env("GIT_HTTP_EXPORT_ALL", "1")
                .env("REMOTE_USER", "berth")
                .env("REQUEST_METHOD", method)
                .env("PATH_INFO", path)
                .env("QUERY_STRING", query)
                .env("CONTENT_TYPE", content_type)
                .env("CONTENT_LENGTH", body.len().to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(&body).unwrap();
            child.wait_with_output().unwrap()
        })
        .await
        .unwrap();
        cgi_response(&output.stdout)
    }
}

/// A CGI response (headers, a blank line, the body) as an HTTP response.
fn cgi_response(out: &[u8]) -> Response<Full<Bytes>> {
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, i + 4))
        .or_else(|| {
            out.windows(2)
                .position(|w| w == b"\n\n")
                .map(|i| (i, i + 2))
        })
        .expect("a CGI response has headers");
    let head = String::from_utf8_lossy(&out[..split.0]);
    let mut headers = HashMap::new();
    for line in head.lines() {
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let status: u16 = headers
        .get("status")
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(200);
    let mut response = Response::builder().status(status);
    for (k, v) in &headers {
        if k != "status" {
            response = response.header(k, v);
        }
    }
    response
        .body(Full::new(Bytes::copy_from_slice(&out[split.1..])))
        .unwrap()
}
