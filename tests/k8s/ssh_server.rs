//! A real OpenSSH server on loopback for the write-back tests: Debian's `sshd -D`, run
//! as the current user with its own host key, an authorized_keys file of the test's
//! keys, and no PAM, so a push runs Debian's `git-receive-pack` over a real SSH login.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{require_tool, run};

/// A key pair made by `ssh-keygen`.
pub struct KeyPair {
    /// The private key, OpenSSH format (as `ssh-privatekey` of a Secret holds it).
    pub private: String,
    /// `type base64 comment`: an authorized_keys or known_hosts key.
    pub public: String,
}

/// `ssh-keygen -t kind` (with `passphrase`, "" for none), in a temporary folder.
pub fn keygen(ssh_keygen: &Path, kind: &str, passphrase: &str) -> KeyPair {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    run(Command::new(ssh_keygen)
        .args(["-q", "-t", kind, "-N", passphrase, "-C", "berth-test", "-f"])
        .arg(&path));
    KeyPair {
        private: std::fs::read_to_string(&path).unwrap(),
        public: std::fs::read_to_string(path.with_extension("pub"))
            .unwrap()
            .trim()
            .to_string(),
    }
}

/// `sshd -D` on 127.0.0.1, an ephemeral port.
pub struct Sshd {
    child: Child,
    dir: tempfile::TempDir,
    pub port: u16,
    /// The server's host key (`type base64`).
    pub host_key: String,
    /// Its `SHA256:…` fingerprint.
    pub host_fingerprint: String,
    /// Who logs in: the user running the test (and sshd).
    pub user: String,
}

impl Sshd {
    /// Starts sshd letting in the `authorized` public keys. `None` (skipped) without
    /// sshd or ssh-keygen outside CI.
    pub fn start(authorized: &[&str]) -> Option<Sshd> {
        let sshd = require_tool("sshd").or_else(|| {
            let usual = PathBuf::from("/usr/sbin/sshd");
            usual.is_file().then_some(usual)
        });
        let (Some(sshd), Some(ssh_keygen)) = (sshd, require_tool("ssh-keygen")) else {
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let host_key = dir.path().join("host_ed25519");
        run(Command::new(&ssh_keygen)
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "host", "-f"])
            .arg(&host_key));
        let public = std::fs::read_to_string(host_key.with_extension("pub")).unwrap();
        let host_key_line = public
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        let listed = run(Command::new(&ssh_keygen)
            .arg("-lf")
            .arg(host_key.with_extension("pub")));
        let host_fingerprint = listed.split_whitespace().nth(1).unwrap().to_string();
        let authorized_keys = dir.path().join("authorized_keys");
        std::fs::write(&authorized_keys, authorized.join("\n") + "\n").unwrap();
        let user = run(Command::new("id").arg("-un")).trim().to_string();
        // sshd running as root separates privileges into this (empty, root-owned)
        // folder, which systemd creates at boot; a container has none.
        if run(Command::new("id").arg("-u")).trim() == "0" {
            std::fs::create_dir_all("/run/sshd").unwrap();
        }
        let port = free_port();
        let config = dir.path().join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "ListenAddress 127.0.0.1:{port}\n\
                 HostKey {host_key}\n\
                 PidFile {pid}\n\
                 AuthorizedKeysFile {authorized_keys}\n\
                 UsePAM no\n\
                 StrictModes no\n\
                 PubkeyAuthentication yes\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 AuthenticationMethods publickey\n\
                 PermitRootLogin prohibit-password\n\
                 MaxStartups 64\n\
                 LogLevel VERBOSE\n",
                host_key = host_key.display(),
                pid = dir.path().join("sshd.pid").display(),
                authorized_keys = authorized_keys.display(),
            ),
        )
        .unwrap();
        let log = dir.path().join("sshd.log");
        // sshd re-executes itself, so it must be started by its absolute path.
        let child = Command::new(&sshd)
            .arg("-D")
            .arg("-f")
            .arg(&config)
            .arg("-E")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut server = Sshd {
            child,
            dir,
            port,
            host_key: host_key_line,
            host_fingerprint,
            user,
        };
        server.wait_listening();
        Some(server)
    }

    fn wait_listening(&mut self) {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("sshd exited ({status}): {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "sshd does not listen: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The known_hosts line for this server.
    pub fn known_hosts(&self) -> String {
        format!("[127.0.0.1]:{} {}\n", self.port, self.host_key)
    }

    /// `ssh://user@127.0.0.1:port/abs/path`.
    pub fn url(&self, repository: &Path) -> String {
        format!(
            "ssh://{}@127.0.0.1:{}{}",
            self.user,
            self.port,
            repository.display()
        )
    }

    /// The scp-like form, `user@[127.0.0.1:port]:/abs/path` (Git's way to give the
    /// port without a scheme).
    pub fn scp_url(&self, repository: &Path) -> String {
        format!(
            "{}@[127.0.0.1:{}]:{}",
            self.user,
            self.port,
            repository.display()
        )
    }

    /// sshd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// TCP connections sshd accepted so far.
    pub fn connections(&self) -> usize {
        self.log().matches("Connection from 127.0.0.1").count()
    }

    /// Logins sshd accepted so far.
    pub fn logins(&self) -> usize {
        self.log().matches("Accepted publickey").count()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

use crate::common::free_port;
