//! Trigger write-back mode Git: how long from a firing to its commit being pushed.
//! A measurement, not a test: it fails only when something answers wrongly.
//!
//! ```text
//! cargo bench --bench git_write_back -- [--commits 50] [--files 1] [--transports git,ssh]
//! ```
//!
//! Starts `git daemon` (receive-pack enabled) and Debian's `sshd` (a key login running
//! `git-receive-pack`) on loopback over a bare repository whose branch holds a
//! kustomization, then fires `--commits` pushes one after another over each transport
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
use berth::controller::trigger::git::{self, Credentials, Outcome, Request, SshKey};

const USAGE: &str = "\
git write-back benchmark: firing to commit pushed, against a local git daemon

  cargo bench --bench git_write_back -- [--commits N] [--files N] [--transports LIST]

  --commits N        pushes fired one after another, per transport [50]
  --files N          files in the repository besides the kustomization (a bigger tree) [1]
  --transports LIST  comma-separated: git (git daemon), ssh (sshd, a key login) [git,ssh]
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
    let mut transports = vec!["git".to_string(), "ssh".to_string()];
    let mut args = std::env::args().skip(1);
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this without it.
    let mut benching = false;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--commits" => commits = args.next().context("--commits N")?.parse()?,
            "--files" => files = args.next().context("--files N")?.parse()?,
            "--transports" => {
                transports = args
                    .next()
                    .context("--transports LIST")?
                    .split(',')
                    .map(str::to_string)
                    .collect()
            }
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

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    let mut fired = 0;
    for transport in &transports {
        let (server, url, credentials) = match transport.as_str() {
            "git" => git_daemon(root.path())?,
            "ssh" => sshd(root.path())?,
            other => bail!("unknown transport {other}\n{USAGE}"),
        };
        let result = runtime.block_on(fire(&url, credentials, commits));
        server.stop();
        let mut latencies = result?;
        fired += commits + 1;
        latencies.sort_by(f64::total_cmp);
        rows.push(format!(
            "| firing → commit pushed ({transport}, {} files) | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
            files + 1,
            latencies.len(),
            percentile(&latencies, 50.0),
            percentile(&latencies, 90.0),
            percentile(&latencies, 99.0),
            latencies.last().copied().unwrap_or_default()
        ));
    }
    let count = git(
        &["--git-dir", "repo.git", "rev-list", "--count", "main"],
        root.path(),
    )?;
    ensure!(
        count.trim() == (fired + 1).to_string(),
        "expected {} commits on main, found {count}",
        fired + 1
    );
    println!("| measure | n | p50 ms | p90 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
    Ok(())
}

/// A server process, killed when done.
struct Server(std::process::Child);

impl Server {
    fn stop(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_listening(port: u16, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        ensure!(Instant::now() < deadline, "{what} did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// `git daemon` over `root` (receive-pack enabled).
fn git_daemon(root: &Path) -> anyhow::Result<(Server, String, Option<Credentials>)> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let daemon = Command::new("git")
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
        .context("starting git daemon")?;
    let server = Server(daemon);
    wait_listening(port, "git daemon")?;
    let url = format!("git://127.0.0.1:{port}/repo.git");
    Ok((server, url, None))
}

/// Debian's sshd as the current user, letting in a fresh ed25519 key (as
/// `tests/k8s/ssh_server.rs` runs it).
fn sshd(root: &Path) -> anyhow::Result<(Server, String, Option<Credentials>)> {
    let dir = root.join("sshd");
    std::fs::create_dir_all(&dir)?;
    let keygen = |name: &str| -> anyhow::Result<String> {
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(dir.join(name))
            .output()
            .context("running ssh-keygen (scripts/install-system-packages.sh)")?;
        ensure!(
            out.status.success(),
            "ssh-keygen: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(std::fs::read_to_string(dir.join(format!("{name}.pub")))?)
    };
    let host = keygen("host")?;
    let user = keygen("user")?;
    std::fs::write(dir.join("authorized_keys"), &user)?;
    let whoami = Command::new("id").arg("-un").output()?;
    let whoami = String::from_utf8(whoami.stdout)?.trim().to_string();
    if whoami == "root" {
        // sshd's privilege separation folder, which systemd makes at boot.
        std::fs::create_dir_all("/run/sshd")?;
    }
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    std::fs::write(
        dir.join("sshd_config"),
        format!(
            "ListenAddress 127.0.0.1:{port}\nHostKey {dir}/host\nPidFile {dir}/sshd.pid\n\
             AuthorizedKeysFile {dir}/authorized_keys\nUsePAM no\nStrictModes no\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             AuthenticationMethods publickey\nPermitRootLogin prohibit-password\n",
            dir = dir.display()
        ),
    )?;
    let child = Command::new("/usr/sbin/sshd")
        .arg("-D")
        .arg("-f")
        .arg(dir.join("sshd_config"))
        .arg("-E")
        .arg(dir.join("sshd.log"))
        .spawn()
        .context("starting /usr/sbin/sshd (openssh-server)")?;
    let server = Server(child);
    wait_listening(port, "sshd")?;
    let host_key: Vec<&str> = host.split_whitespace().take(2).collect();
    let known_hosts = format!("[127.0.0.1]:{port} {}\n", host_key.join(" "));
    let private = std::fs::read_to_string(dir.join("user"))?;
    let key = SshKey::new(&private, None, &known_hosts, None)?;
    let url = format!(
        "ssh://{whoami}@127.0.0.1:{port}{}",
        root.join("repo.git").display()
    );
    Ok((server, url, Some(Credentials::Ssh(key))))
}

/// Fires `commits` pushes (and one first, not counted) one after another; the
/// milliseconds of each.
async fn fire(
    url: &str,
    credentials: Option<Credentials>,
    commits: usize,
) -> anyhow::Result<Vec<f64>> {
    let mut latencies = Vec::new();
    // One firing first: the cache's first fetch is a clone, not what a push costs.
    for i in 0..=commits {
        // Unique per transport: the URL is.
        let tag = format!("v{}-{}", i + 1, url.len());
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
            url: url.to_string(),
            branch: "main".into(),
            path: "apps/web/kustomization.yaml".into(),
            credentials: credentials.clone(),
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
            "firing {i} over {url}: {outcome:?}"
        );
        if i > 0 {
            latencies.push(took);
        }
    }
    Ok(latencies)
}
