//! Trigger write-back mode Git: how long from a firing to its commit being pushed.
//! A measurement, not a test: it fails only when something answers wrongly.
//!
//! ```text
//! cargo bench --bench git_write_back -- [--commits 50] [--files 1]
//! ```
//!
//! Starts `git daemon` (receive-pack enabled) on loopback over a bare repository whose
//! branch holds a kustomization, then fires `--commits` pushes one after another
//! through berth's write-back (`berth::controller::trigger::git::write_back`, what a
//! Trigger runs on a push event): fetch, edit of the `images:` entry, commit, push.
//! Each must land as one commit. Reported as p50 / p90 / p99 / max in milliseconds.
//! The registry's part (manifest commit → firing) is measured by `benches/triggers.rs`
//! (milliseconds); this is the part the Git server adds.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use berth::controller::trigger::git::edit::{self, Segment};
use berth::controller::trigger::git::{self, Outcome, Request};

const USAGE: &str = "\
git write-back benchmark: firing to commit pushed, against a local git daemon

  cargo bench --bench git_write_back -- [--commits N] [--files N]

  --commits N  pushes fired one after another [50]
  --files N    files in the repository besides the kustomization (a bigger tree) [1]
";

fn git(args: &[&str], dir: &Path) -> anyhow::Result<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .env("GIT_AUTHOR_NAME", "seed")
        .env("GIT_AUTHOR_EMAIL", "seed@example.com")
        .env("GIT_COMMITTER_NAME", "seed")
        .env("GIT_COMMITTER_EMAIL", "seed@example.com")
        .output()
        .context("running git (install it: scripts/install-system-packages.sh)")?;
    ensure!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn main() -> anyhow::Result<()> {
    let mut commits = 50usize;
    let mut files = 1usize;
    let mut args = std::env::args().skip(1);
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this without it.
    let mut benching = false;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--commits" => commits = args.next().context("--commits N")?.parse()?,
            "--files" => files = args.next().context("--files N")?.parse()?,
            "--bench" => benching = true,
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    if !benching {
        println!("run it with cargo bench --bench git_write_back");
        return Ok(());
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let root = tempfile::tempdir()?;
    // SAFETY: set before any thread is started.
    unsafe { std::env::set_var("BERTH_GIT_CACHE", root.path().join("cache")) };
    let work = root.path().join("work");
    std::fs::create_dir_all(work.join("apps/web"))?;
    git(
        &["init", "-q", "--bare", "-b", "main", "repo.git"],
        root.path(),
    )?;
    git(&["init", "-q", "-b", "main"], &work)?;
    std::fs::write(
        work.join("apps/web/kustomization.yaml"),
        "resources:\n- deployment.yaml\nimages:\n- name: web\n  newTag: v0\n",
    )?;
    for i in 0..files {
        std::fs::write(work.join(format!("file-{i}.txt")), format!("{i}\n"))?;
    }
    git(&["add", "-A"], &work)?;
    git(&["commit", "-q", "-m", "seed"], &work)?;
    git(&["push", "-q", "../repo.git", "main"], &work)?;

    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut daemon = Command::new("git")
        .args([
            "daemon",
            "--reuseaddr",
            "--export-all",
            "--enable=receive-pack",
        ])
        .arg("--listen=127.0.0.1")
        .arg(format!("--port={port}"))
        .arg(format!("--base-path={}", root.path().display()))
        .arg(root.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting git daemon")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        ensure!(Instant::now() < deadline, "git daemon did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let url = format!("git://127.0.0.1:{port}/repo.git");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        let mut latencies = Vec::new();
        // One firing first: the cache's first fetch is a clone, not what a push costs.
        for i in 0..=commits {
            let tag = format!("v{}", i + 1);
            let digest = format!("sha256:{:064x}", i + 1);
            let entry = |field: &str| {
                vec![
                    Segment::key("images"),
                    Segment::Item {
                        key: "name".into(),
                        value: "web".into(),
                    },
                    Segment::key(field),
                ]
            };
            let edits = vec![
                (entry("newTag"), tag.clone()),
                (entry("digest"), digest.clone()),
            ];
            let request = Request {
                url: url.clone(),
                branch: "main".into(),
                path: "apps/web/kustomization.yaml".into(),
                credentials: None,
                author_name: "berth".into(),
                author_email: "berth@example.com".into(),
                message: format!("Deploy web:{tag}"),
                trigger: "bench/web".into(),
                tag,
                digest,
                pushed_at: jiff::Timestamp::now(),
                edit: Box::new(move |text| edit::set_values(text, &edits)),
            };
            let started = Instant::now();
            let outcome = git::write_back(request).await?;
            let took = started.elapsed().as_secs_f64() * 1000.0;
            ensure!(
                matches!(outcome, Outcome::Committed { attempts: 1, .. }),
                "firing {i}: {outcome:?}"
            );
            if i > 0 {
                latencies.push(took);
            }
        }
        anyhow::Ok(latencies)
    });
    let count = git(
        &["--git-dir", "repo.git", "rev-list", "--count", "main"],
        root.path(),
    )?;
    let _ = daemon.kill();
    let _ = daemon.wait();
    let mut latencies = result?;
    ensure!(
        count.trim() == (commits + 2).to_string(),
        "expected {} commits on main, found {count}",
        commits + 2
    );
    latencies.sort_by(f64::total_cmp);
    println!("| measure | n | p50 ms | p90 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| firing → commit pushed (git daemon, {} files) | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
        files + 1,
        latencies.len(),
        percentile(&latencies, 50.0),
        percentile(&latencies, 90.0),
        percentile(&latencies, 99.0),
        latencies.last().copied().unwrap_or_default()
    );
    Ok(())
}
