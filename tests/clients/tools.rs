//! The clients, each with its configuration confined to a temp directory (see
//! scripts/CLIENTS.md): nothing here reads or writes ~/.docker, /etc/containers
//! (beyond podman's signature policy), /etc/containerd or the user's storage. The one
//! shared thing is skopeo's and podman's blob-info cache under /var/lib/containers,
//! which no flag moves; the tests assert results, never request patterns.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::common::{require_tool, run};

/// Finds every tool in `names`; `None` (test skipped, loudly) when one is missing
/// outside CI.
pub fn tools<const N: usize>(names: [&str; N]) -> Option<[PathBuf; N]> {
    let found: Vec<PathBuf> = names.iter().filter_map(|n| require_tool(n)).collect();
    found.try_into().ok()
}

/// A Go client that reads docker-style config and its own under $HOME (crane, oras,
/// regctl): HOME, DOCKER_CONFIG, REGCTL_CONFIG and the XDG directories point into a
/// private temp directory.
pub struct Isolated {
    bin: PathBuf,
    dir: TempDir,
}

impl Isolated {
    pub fn new(bin: &Path) -> Isolated {
        Isolated {
            bin: bin.to_path_buf(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn cmd(&self) -> Command {
        let d = self.dir.path();
        let mut cmd = Command::new(&self.bin);
        cmd.env("HOME", d.join("home"))
            .env("DOCKER_CONFIG", d.join("docker"))
            .env("REGCTL_CONFIG", d.join("regctl.json"))
            .env("XDG_CONFIG_HOME", d.join("config"))
            .env("XDG_CACHE_HOME", d.join("cache"))
            .env_remove("ORAS_CACHE");
        cmd
    }

    /// Runs the client with `args`; returns stdout.
    pub fn run(&self, args: &[&str]) -> String {
        run(self.cmd().args(args))
    }

    /// The client's docker config folder (`$DOCKER_CONFIG`), created if missing.
    pub fn docker_config_dir(&self) -> PathBuf {
        let dir = self.dir.path().join("docker");
        fs::create_dir_all(&dir).unwrap();
        dir
    }
}

/// skopeo with a private policy, registries.conf, registries.d, auth file and tmpdir.
pub struct Skopeo {
    bin: PathBuf,
    dir: TempDir,
}

impl Skopeo {
    pub fn new(bin: &Path) -> Skopeo {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::write(
            d.join("policy.json"),
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )
        .unwrap();
        fs::write(
            d.join("registries.conf"),
            "unqualified-search-registries = []\n",
        )
        .unwrap();
        fs::write(d.join("auth.json"), r#"{"auths":{}}"#).unwrap();
        fs::create_dir_all(d.join("registries.d")).unwrap();
        fs::create_dir_all(d.join("tmp")).unwrap();
        Skopeo {
            bin: bin.to_path_buf(),
            dir,
        }
    }

    pub fn cmd(&self) -> Command {
        let d = self.dir.path();
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--policy")
            .arg(d.join("policy.json"))
            .arg("--registries.d")
            .arg(d.join("registries.d"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .env("CONTAINERS_REGISTRIES_CONF", d.join("registries.conf"))
            .env("REGISTRY_AUTH_FILE", d.join("auth.json"))
            .env("TMPDIR", d.join("tmp"));
        cmd
    }

    /// `skopeo copy --quiet [extra…] SRC DEST`, TLS off on both sides.
    pub fn copy(&self, src: &str, dest: &str, extra: &[&str]) {
        run(self
            .cmd()
            .args(["copy", "--quiet"])
            .args(["--src-tls-verify=false", "--dest-tls-verify=false"])
            .args(extra)
            .args([src, dest]));
    }

    /// `skopeo inspect --raw`: the manifest bytes as the registry serves them.
    pub fn inspect_raw(&self, image: &str) -> Vec<u8> {
        let out = self
            .cmd()
            .args(["inspect", "--raw", "--tls-verify=false", image])
            .output()
            .expect("run skopeo inspect");
        assert!(
            out.status.success(),
            "skopeo inspect --raw {image}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// The `Digest` field of `skopeo inspect`.
    pub fn inspect_digest(&self, image: &str) -> String {
        let out = run(self.cmd().args(["inspect", "--tls-verify=false", image]));
        let info: serde_json::Value = serde_json::from_str(&out).expect("inspect JSON");
        info["Digest"].as_str().expect("Digest").to_string()
    }
}

/// podman with private storage (vfs), containers.conf, registries.conf (the registry
/// marked insecure) and auth file.
pub struct Podman {
    bin: PathBuf,
    dir: TempDir,
}

impl Podman {
    pub fn new(bin: &Path, registry: &str) -> Podman {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        fs::write(
            dir.path().join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{d}/root\"\nrunroot = \"{d}/runroot\"\n"
            ),
        )
        .unwrap();
        fs::write(
            dir.path().join("containers.conf"),
            format!(
                "[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 events_logfile_path = \"{d}/events.log\"\ntmp_dir = \"{d}/tmp\"\n"
            ),
        )
        .unwrap();
        fs::write(
            dir.path().join("registries.conf"),
            format!(
                "unqualified-search-registries = []\n[[registry]]\nlocation = \"{registry}\"\ninsecure = true\n"
            ),
        )
        .unwrap();
        fs::write(dir.path().join("auth.json"), r#"{"auths":{}}"#).unwrap();
        fs::create_dir_all(dir.path().join("tmp")).unwrap();
        Podman {
            bin: bin.to_path_buf(),
            dir,
        }
    }

    pub fn cmd(&self) -> Command {
        let d = self.dir.path();
        let mut cmd = Command::new(&self.bin);
        cmd.env("CONTAINERS_STORAGE_CONF", d.join("storage.conf"))
            .env("CONTAINERS_CONF", d.join("containers.conf"))
            .env("CONTAINERS_REGISTRIES_CONF", d.join("registries.conf"))
            .env("REGISTRY_AUTH_FILE", d.join("auth.json"))
            .env("TMPDIR", d.join("tmp"));
        cmd
    }

    pub fn run(&self, args: &[&str]) -> String {
        run(self.cmd().args(args))
    }

    /// A path in podman's private directory (e.g. for `--digestfile`).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Leaves nothing mounted or registered behind even when a test failed midway.
        let _ = self.cmd().args(["rmi", "-af"]).output();
    }
}

/// A private containerd (root, state, sockets and opt directory in a temp dir; CRI and
/// the snapshotters that need special filesystems disabled), killed when dropped.
pub struct Containerd {
    child: Child,
    ctr: PathBuf,
    dir: TempDir,
}

impl Containerd {
    pub fn start(containerd: &Path, ctr: &Path) -> Containerd {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let config = dir.path().join("config.toml");
        fs::write(
            &config,
            format!(
                r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
"#
            ),
        )
        .unwrap();
        let log = fs::File::create(dir.path().join("containerd.log")).unwrap();
        let child = Command::new(containerd)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn containerd");
        let mut daemon = Containerd {
            child,
            ctr: ctr.to_path_buf(),
            dir,
        };
        daemon.wait_until_up();
        daemon
    }

    fn wait_until_up(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("containerd exited with {status}:\n{}", self.log());
            }
            if self.dir.path().join("containerd.sock").exists() {
                let up = self
                    .cmd()
                    .args(["--connect-timeout", "1s", "version"])
                    .output()
                    .is_ok_and(|o| o.status.success());
                if up {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not come up:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// `ctr` against this daemon, in namespace `berth`.
    pub fn cmd(&self) -> Command {
        let mut cmd = Command::new(&self.ctr);
        cmd.arg("--address")
            .arg(self.dir.path().join("containerd.sock"))
            .args(["--namespace", "berth"]);
        cmd
    }

    pub fn ctr(&self, args: &[&str]) -> String {
        run(self.cmd().args(args))
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
