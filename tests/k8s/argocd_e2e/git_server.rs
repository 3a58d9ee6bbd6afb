//! A Git server on loopback for Argo CD to sync from: `git daemon` serving one bare
//! repository over `git://127.0.0.1:PORT/config.git`, receive-pack enabled so that
//! anyone (the test, or berth's `git` write-back mode) can push to it as to a real
//! forge. The test writes through a clone of its own and pushes, like a person would.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::run;

use super::daemon::{Daemon, free_port};

/// The branch Argo CD follows.
pub const BRANCH: &str = "main";

/// `git daemon` and its repository; stopped when dropped.
pub struct GitServer {
    dir: tempfile::TempDir,
    port: u16,
    git: PathBuf,
    _daemon: Daemon,
}

impl GitServer {
    /// Starts `git daemon` on a free loopback port with an empty bare repository
    /// `config.git` and a work tree to commit from.
    pub fn start(git: PathBuf) -> GitServer {
        let dir = tempfile::Builder::new()
            .prefix("berth-git-")
            .tempdir()
            .expect("temp dir");
        let base = dir.path().join("served");
        std::fs::create_dir_all(&base).unwrap();
        let bare = base.join("config.git");
        run(Command::new(&git)
            .args(["init", "--quiet", "--bare", "--initial-branch", BRANCH])
            .arg(&bare));
        let port = free_port();
        let daemon = Daemon::spawn(
            "git-daemon",
            &git,
            &[
                "daemon".to_string(),
                "--reuseaddr".into(),
                "--export-all".into(),
                "--informative-errors".into(),
                "--enable=receive-pack".into(),
                "--listen=127.0.0.1".into(),
                format!("--port={port}"),
                format!("--base-path={}", base.display()),
                base.display().to_string(),
            ],
            &[],
            &dir.path().join("git-daemon.log"),
        );
        let mut daemon = daemon;
        daemon.wait_for_port(port, Duration::from_secs(10));
        let server = GitServer {
            dir,
            port,
            git,
            _daemon: daemon,
        };
        let work = server.work_tree();
        server.git_in(&work, &["init", "--quiet", "--initial-branch", BRANCH]);
        server.git_in(&work, &["remote", "add", "origin", &server.url()]);
        server
    }

    /// `git://127.0.0.1:PORT/config.git`, the repoURL an Application names.
    pub fn url(&self) -> String {
        format!("git://127.0.0.1:{}/config.git", self.port)
    }

    fn work_tree(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    fn bare(&self) -> PathBuf {
        self.dir.path().join("served/config.git")
    }

    /// Runs git in `dir` as the test's author, without the machine's configuration.
    fn git_in(&self, dir: &Path, args: &[&str]) -> String {
        std::fs::create_dir_all(dir).unwrap();
        run(Command::new(&self.git)
            .current_dir(dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .args([
                "-c",
                "user.name=berth tests",
                "-c",
                "user.email=tests@berth.invalid",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args))
    }

    /// Writes `files` (path → content; `None` deletes), commits them with `message` and
    /// pushes to the server over git://, as a person editing the configuration would.
    /// Pulls first, so commits someone else pushed (berth's write-back) are kept.
    /// Returns the new commit's SHA.
    pub fn commit(&self, files: &[(&str, Option<String>)], message: &str) -> String {
        let work = self.work_tree();
        if !self.head().is_empty() {
            self.git_in(&work, &["pull", "--quiet", "--rebase", "origin", BRANCH]);
        }
        for (path, content) in files {
            let file = work.join(path);
            match content {
                Some(text) => {
                    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
                    std::fs::write(&file, text).unwrap();
                    self.git_in(&work, &["add", path]);
                }
                None => {
                    self.git_in(&work, &["rm", "--quiet", path]);
                }
            }
        }
        self.git_in(&work, &["commit", "--quiet", "-m", message]);
        self.git_in(&work, &["push", "--quiet", "origin", BRANCH]);
        let sha = self.head();
        assert_eq!(
            sha,
            self.git_in(&work, &["rev-parse", "HEAD"]).trim(),
            "the push reached the server"
        );
        sha
    }

    /// The SHA the server's branch points at ("" before the first push).
    pub fn head(&self) -> String {
        let out = Command::new(&self.git)
            .arg("--git-dir")
            .arg(self.bare())
            .args(["rev-parse", "--verify", "--quiet", BRANCH])
            .output()
            .expect("git rev-parse");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `path` as the server's branch has it now (for checking what a write-back committed).
    #[allow(dead_code, reason = "for the git write-back test (branch gitwb)")]
    pub fn file(&self, path: &str) -> String {
        run(Command::new(&self.git)
            .arg("--git-dir")
            .arg(self.bare())
            .args(["show", &format!("{BRANCH}:{path}")]))
    }

    /// Waits until the server's branch moves past `since` (someone else pushed, e.g.
    /// berth's write-back); returns the new head.
    #[allow(dead_code, reason = "for the git write-back test (branch gitwb)")]
    pub async fn wait_for_push_after(&self, since: &str, limit: Duration) -> String {
        let start = Instant::now();
        loop {
            let head = self.head();
            if head != since {
                return head;
            }
            assert!(
                start.elapsed() < limit,
                "nothing was pushed to {} within {limit:?} (still at {since})",
                self.url()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
