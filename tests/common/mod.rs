//! Shared test support: a real berth process on a loopback port, and lookup of the
//! external tools (clients, peers) the tests drive.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A berth registry running as its own process (`berth serve`), on a free loopback
/// port, with its own data directory. Killed when dropped.
pub struct Berth {
    child: Option<Child>,
    pub addr: String,
    pub data_dir: PathBuf,
    extra_args: Vec<String>,
    envs: Vec<(String, String)>,
    subcommand: String,
    _temp: Option<tempfile::TempDir>,
}

impl Berth {
    /// Starts berth on a fresh data directory.
    pub fn start() -> Berth {
        let temp = tempfile::tempdir().expect("temp dir");
        let data_dir = temp.path().join("data");
        let mut berth = Berth {
            child: None,
            addr: String::new(),
            data_dir,
            extra_args: Vec::new(),
            envs: Vec::new(),
            subcommand: "serve".into(),
            _temp: Some(temp),
        };
        berth.spawn("127.0.0.1:0");
        berth
    }

    /// Starts berth with extra `serve` arguments and environment (e.g. `--storage s3://…`).
    pub fn start_with(args: &[&str], envs: &[(&str, &str)]) -> Berth {
        Berth::start_subcommand("serve", args, envs)
    }

    /// Starts `berth serve ARGS…` listening on `addr` (a port chosen beforehand, e.g. one a
    /// sync rule already names).
    pub fn start_at(addr: &str, args: &[&str]) -> Berth {
        let temp = tempfile::tempdir().expect("temp dir");
        let mut berth = Berth {
            child: None,
            addr: String::new(),
            data_dir: temp.path().join("data"),
            extra_args: args.iter().map(|s| s.to_string()).collect(),
            envs: Vec::new(),
            subcommand: "serve".into(),
            _temp: Some(temp),
        };
        berth.spawn(addr);
        berth
    }

    /// Starts `berth SUBCOMMAND --listen 127.0.0.1:0 --data-dir DIR ARGS…` with extra
    /// environment. Like `serve`, the subcommand must print `… http://ADDR …` as its
    /// first line on stdout once it listens.
    pub fn start_subcommand(subcommand: &str, args: &[&str], envs: &[(&str, &str)]) -> Berth {
        let temp = tempfile::tempdir().expect("temp dir");
        let mut berth = Berth {
            child: None,
            addr: String::new(),
            data_dir: temp.path().join("data"),
            extra_args: args.iter().map(|s| s.to_string()).collect(),
            envs: envs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            subcommand: subcommand.to_string(),
            _temp: Some(temp),
        };
        berth.spawn("127.0.0.1:0");
        berth
    }

    fn spawn(&mut self, listen: &str) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
        cmd.arg(&self.subcommand)
            .args(["--listen", listen, "--data-dir"])
            .arg(&self.data_dir)
            .args(&self.extra_args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn berth {}: {e}", self.subcommand));
        let stdout = child.stdout.take().expect("berth stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read berth banner");
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| {
                panic!(
                    "berth {} did not report its address; it printed {line:?}",
                    self.subcommand
                )
            })
            .to_string();
        self.addr = addr;
        self.child = Some(child);
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The process id of the running berth.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills berth with SIGKILL: no shutdown code runs, as in a crash or OOM kill.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts berth again on the same data directory and port.
    pub fn restart(&mut self) {
        self.kill();
        let addr = self.addr.clone();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // The old socket may linger for a moment after the kill.
            if std::net::TcpListener::bind(&addr).is_ok() || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.spawn(&addr);
    }
}

impl Drop for Berth {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether missing tools must fail the test (in CI) rather than skip it.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Where the test scripts put built peers (see scripts/lib.sh).
pub fn tools_bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("BERTH_BIN") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var("BERTH_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                .join(".cache/berth")
        });
    cache.join("bin")
}

fn find_tool(name: &str) -> Option<PathBuf> {
    let candidate = tools_bin_dir().join(name);
    if candidate.is_file() {
        return Some(candidate);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Finds an external tool. In CI a missing tool fails the test; elsewhere the test is
/// skipped, loudly, saying how to get the tool.
pub fn require_tool(name: &str) -> Option<PathBuf> {
    match find_tool(name) {
        Some(path) => Some(path),
        None if in_ci() => panic!(
            "{name} is required but not installed: run scripts/install-system-packages.sh and scripts/build-peers.sh (scripts/test does both)"
        ),
        None => {
            eprintln!(
                "\n*** SKIPPED: {name} is not installed. Run scripts/test (or scripts/install-system-packages.sh and scripts/build-peers.sh) to get it. ***\n"
            );
            None
        }
    }
}

/// Reports a missing prerequisite (a tool, a built binary) the way `require_tool` does:
/// in CI the test fails; elsewhere it is skipped, loudly, with `how_to_get` it.
pub fn missing_prerequisite(what: &str, how_to_get: &str) {
    if in_ci() {
        panic!("{what} is required but missing: {how_to_get}");
    }
    eprintln!("\n*** SKIPPED: {what} is missing. {how_to_get} ***\n");
}

/// Runs a command, panicking with its output when it fails. Returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// sha256 digest string of `data`.
pub fn sha256(data: &[u8]) -> String {
    berth::oci::Digest::of(berth::oci::Algorithm::Sha256, data).to_string()
}

/// Every file under `dir`, relative to it, sorted.
pub fn files_under(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// A loopback port nothing listens on right now, for a daemon to bind a moment later.
/// Chosen below the kernel's ephemeral range: a port `bind(0)` hands out comes from
/// that range, where any outgoing connection of a test running beside this one can
/// take it before the daemon binds it (Argo CD's controller once died of that).
pub fn free_port() -> u16 {
    let ephemeral_low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let low = 10_000u16;
    let span = ephemeral_low.saturating_sub(low).max(1) as u128;
    for _ in 0..1000 {
        let port = low + (uuid::Uuid::new_v4().as_u128() % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between {low} and {ephemeral_low}")
}
