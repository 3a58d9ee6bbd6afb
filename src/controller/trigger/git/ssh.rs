//! Git over SSH for libgit2, in process: a pure-Rust SSH client (russh on ring) opens
//! the session, checks the server's host key against the Secret's `known_hosts`,
//! authenticates with the Secret's private key, and runs `git-upload-pack '<path>'` or
//! `git-receive-pack '<path>'` on a channel; libgit2 speaks Git's stateful protocol
//! over that channel. No OpenSSL, no libssh2 and no `ssh` binary in the image.
//!
//! As with HTTP ([`super::transport`]), libgit2 drives the stream synchronously on the
//! `spawn_blocking` thread of the operation; the SSH session runs on the Tokio runtime.
//! What one operation needs — the key, the known hosts, the first failure — is set for
//! the thread by [`Session::enter`].

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use bytes::Bytes;
use git2::transport::{Service, SmartSubtransport, SmartSubtransportStream, Transport};
use russh::client::{self, AuthResult};
use russh::keys::ssh_key::HashAlg;
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{ChannelMsg, Disconnect};
use tokio::runtime::Handle;

use super::known_hosts::{KnownHosts, KnownHostsError, Verdict};

/// How long the TCP connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the handshake, authentication and channel setup may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one read or write may wait for the server.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// How much of the remote command's stderr is kept for the error message.
const STDERR_LIMIT: usize = 4096;
/// The user when neither the URL nor the Secret names one (GitHub, GitLab, Gitea…).
const DEFAULT_USER: &str = "git";

/// An SSH identity and the host keys it trusts, from a Trigger's Secret.
#[derive(Clone)]
pub struct SshKey {
    key: Arc<PrivateKey>,
    known_hosts: Arc<KnownHosts>,
    user: Option<String>,
}

impl std::fmt::Debug for SshKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SshKey({}, <redacted>)", self.fingerprint())
    }
}

/// Why a Secret's SSH material is unusable.
#[derive(Debug, thiserror::Error)]
pub enum SshKeyError {
    #[error("ssh-privatekey does not parse (OpenSSH or PKCS#8 format expected): {0}")]
    Key(russh::keys::Error),
    #[error("ssh-privatekey is encrypted: add its passphrase under the key passphrase")]
    Encrypted,
    #[error(transparent)]
    KnownHosts(#[from] KnownHostsError),
}

impl SshKey {
    /// The key (OpenSSH or PKCS#8 text, `passphrase` if encrypted), the `known_hosts`
    /// text, and the user when the URL names none.
    pub fn new(
        private_key: &str,
        passphrase: Option<&str>,
        known_hosts: &str,
        user: Option<String>,
    ) -> Result<SshKey, SshKeyError> {
        let key = russh::keys::decode_secret_key(private_key, passphrase).map_err(|e| match e {
            russh::keys::Error::KeyIsEncrypted => SshKeyError::Encrypted,
            e => SshKeyError::Key(e),
        })?;
        Ok(SshKey {
            key: Arc::new(key),
            known_hosts: Arc::new(KnownHosts::parse(known_hosts)?),
            user,
        })
    }

    /// `SHA256:…` of the public key (safe to show).
    pub fn fingerprint(&self) -> String {
        self.key
            .public_key()
            .fingerprint(HashAlg::Sha256)
            .to_string()
    }
}

/// Why an SSH connection failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SshError {
    #[error(
        "{0:?} is not an SSH remote (ssh://[user@]host[:port]/path, [user@]host:path or [user@][host:port]:path)"
    )]
    InvalidUrl(String),
    #[error(
        "no SSH key for {0}: the Trigger needs a secretRef with ssh-privatekey and known_hosts"
    )]
    NoKey(String),
    #[error("connecting to {addr}: {detail}")]
    Connect { addr: String, detail: String },
    #[error("{what} with {addr} took longer than {secs}s")]
    Timeout {
        addr: String,
        what: &'static str,
        secs: u64,
    },
    #[error("the SSH handshake with {addr} failed: {detail}")]
    Handshake { addr: String, detail: String },
    #[error("the host key of {host} ({fingerprint}) is not in the Secret's known_hosts")]
    HostKeyUnknown { host: String, fingerprint: String },
    #[error(
        "the host key of {host} ({fingerprint}) does not match the Secret's known_hosts (the host's line {lines})"
    )]
    HostKeyMismatch {
        host: String,
        fingerprint: String,
        lines: String,
    },
    #[error(
        "the host key of {host} ({fingerprint}) is revoked in the Secret's known_hosts (line {line})"
    )]
    HostKeyRevoked {
        host: String,
        fingerprint: String,
        line: usize,
    },
    #[error("{host} refused the SSH key {fingerprint} for user {user:?}")]
    AuthRefused {
        host: String,
        user: String,
        fingerprint: String,
    },
    #[error("{addr}: {detail}")]
    Channel { addr: String, detail: String },
}

/// Where an SSH remote is and what to run there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub user: Option<String>,
    pub host: String,
    pub port: u16,
    /// The repository path as given to `git-upload-pack` (relative to the user's home
    /// in the scp-like form, as Git does).
    pub path: String,
}

/// Whether `url` is an SSH remote (which libgit2 hands to this transport).
pub fn is_ssh_url(url: &str) -> bool {
    Target::parse(url).is_ok()
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, SshError> {
        let invalid = || SshError::InvalidUrl(url.to_string());
        let lower = url.to_ascii_lowercase();
        if ["ssh://", "ssh+git://", "git+ssh://"]
            .iter()
            .any(|s| lower.starts_with(s))
        {
            let parsed = url::Url::parse(url).map_err(|_| invalid())?;
            let host = parsed.host_str().ok_or_else(invalid)?;
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let path = percent_encoding::percent_decode_str(parsed.path())
                .decode_utf8()
                .map_err(|_| invalid())?;
            // `ssh://host/~/repo` and `ssh://host/~user/repo` are home-relative.
            let path = match path.strip_prefix("/~") {
                Some(rest) => format!("~{rest}"),
                None => path.into_owned(),
            };
            if path.is_empty() || path == "/" {
                return Err(invalid());
            }
            let user = (!parsed.username().is_empty()).then(|| {
                percent_encoding::percent_decode_str(parsed.username())
                    .decode_utf8_lossy()
                    .into_owned()
            });
            return Ok(Target {
                user,
                host,
                port: parsed.port().unwrap_or(22),
                path,
            });
        }
        // scp-like: `[user@]host:path`, with no scheme and no slash before the colon.
        if url.contains("://") {
            return Err(invalid());
        }
        let (user, rest) = match url.split_once('@') {
            Some((user, rest)) if !user.contains('/') && !user.contains(':') => {
                (Some(user.to_string()), rest)
            }
            _ => (None, url),
        };
        // `[host:port]:path` gives a port, as Git allows; `[::1]:path` an IPv6 host.
        let (host, port, path) = if let Some(bracketed) = rest.strip_prefix('[') {
            let (inside, after) = bracketed.split_once(']').ok_or_else(invalid)?;
            let path = after.strip_prefix(':').ok_or_else(invalid)?;
            match inside.split_once(':') {
                Some((host, port)) if !port.contains(':') => {
                    (host, port.parse().map_err(|_| invalid())?, path)
                }
                _ => (inside, 22, path),
            }
        } else {
            let (host, path) = rest.split_once(':').ok_or_else(invalid)?;
            (host, 22, path)
        };
        if host.is_empty() || host.contains('/') || path.is_empty() {
            return Err(invalid());
        }
        Ok(Target {
            user,
            host: host.to_string(),
            port,
            path: path.to_string(),
        })
    }

    fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// `git-upload-pack '/path'`, quoted for the remote shell as Git quotes it.
    fn command(&self, program: &str) -> String {
        format!("{program} {}", shell_quote(&self.path))
    }
}

/// Single-quotes `text` for a POSIX shell (`'` and `!` closed over, as `sq_quote` does).
fn shell_quote(text: &str) -> String {
    let mut out = String::from("'");
    for c in text.chars() {
        match c {
            '\'' | '!' => {
                out.push_str("'\\");
                out.push(c);
                out.push('\'');
            }
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

struct State {
    key: Option<SshKey>,
    handle: Handle,
    /// The first connection failure of this session, for the condition reason.
    failure: Option<SshError>,
}

thread_local! {
    static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
}

/// The SSH context of Git operations on this thread; cleared when dropped.
pub struct Session(());

impl Session {
    /// Sets `key` for the Git operations of this thread (a `spawn_blocking` thread).
    pub fn enter(key: Option<SshKey>) -> io::Result<Session> {
        register();
        let handle = Handle::try_current().map_err(io::Error::other)?;
        STATE.with(|s| {
            *s.borrow_mut() = Some(State {
                key,
                handle,
                failure: None,
            })
        });
        Ok(Session(()))
    }

    /// The connection failure seen during this session, if any.
    pub fn failure(&self) -> Option<SshError> {
        STATE.with(|s| s.borrow().as_ref().and_then(|s| s.failure.clone()))
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        STATE.with(|s| *s.borrow_mut() = None);
    }
}

/// Registers the transport for SSH URLs (and scp-like ones, which libgit2 looks up as
/// `ssh://`) with libgit2, once per process.
fn register() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for scheme in ["ssh", "ssh+git", "git+ssh"] {
            // SAFETY: registration happens once, before any use of the scheme, and not
            // concurrently with other registrations: `Once` does both.
            let registered = unsafe {
                git2::transport::register(scheme, |remote| {
                    // Stateful (`rpc` false): one channel carries the whole exchange.
                    Transport::smart(remote, false, SshSubtransport)
                })
            };
            if let Err(e) = registered {
                tracing::error!(scheme, error = %e, "registering the Git SSH transport failed");
            }
        }
    });
}

struct SshSubtransport;

impl SmartSubtransport for SshSubtransport {
    fn action(
        &self,
        url: &str,
        action: Service,
    ) -> Result<Box<dyn SmartSubtransportStream>, git2::Error> {
        let program = match action {
            Service::UploadPackLs | Service::UploadPack => "git-upload-pack",
            Service::ReceivePackLs | Service::ReceivePack => "git-receive-pack",
        };
        let opened = (|| -> Result<SshStream, SshError> {
            let target = Target::parse(url)?;
            let (key, handle) = STATE
                .with(|s| {
                    s.borrow()
                        .as_ref()
                        .map(|s| (s.key.clone(), s.handle.clone()))
                })
                .ok_or_else(|| SshError::Channel {
                    addr: target.addr(),
                    detail: "a Git SSH connection outside a berth session".into(),
                })?;
            let key = key.ok_or_else(|| SshError::NoKey(target.host.clone()))?;
            let stream = handle.block_on(open(&target, &key, program))?;
            Ok(SshStream {
                handle,
                stream: Some(stream),
                pending: Bytes::new(),
                stderr: Vec::new(),
                exit_status: None,
                received: false,
                finished: false,
                command: format!("{program} on {}", target.addr()),
            })
        })();
        match opened {
            Ok(stream) => Ok(Box::new(stream)),
            Err(e) => {
                STATE.with(|s| {
                    if let Some(state) = s.borrow_mut().as_mut() {
                        state.failure.get_or_insert(e.clone());
                    }
                });
                Err(git2::Error::from_str(&e.to_string()))
            }
        }
    }

    fn close(&self) -> Result<(), git2::Error> {
        Ok(())
    }
}

/// Checks the server's host key against the known hosts; keeps the verdict, since
/// russh only reports "unknown key" whatever the reason.
struct HostKeyCheck {
    host: String,
    port: u16,
    known_hosts: Arc<KnownHosts>,
    refused: Arc<Mutex<Option<SshError>>>,
}

impl client::Handler for HostKeyCheck {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = server_key else {
            // Certificates are not offered (see `open`), so not accepted either.
            return Ok(false);
        };
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        let host = self.host.clone();
        let refusal = match self.known_hosts.check(&self.host, self.port, key) {
            Verdict::Trusted => return Ok(true),
            Verdict::Unknown => SshError::HostKeyUnknown { host, fingerprint },
            Verdict::Mismatch(lines) => SshError::HostKeyMismatch {
                host,
                fingerprint,
                lines: lines
                    .iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            },
            Verdict::Revoked(line) => SshError::HostKeyRevoked {
                host,
                fingerprint,
                line,
            },
        };
        *self.refused.lock().expect("host key verdict poisoned") = Some(refusal);
        Ok(false)
    }
}

/// A connected channel running `program` on the target.
struct Open {
    session: client::Handle<HostKeyCheck>,
    channel: russh::Channel<client::Msg>,
}

async fn open(target: &Target, key: &SshKey, program: &str) -> Result<Open, SshError> {
    let addr = target.addr();
    let timeout = |what: &'static str, limit: Duration| SshError::Timeout {
        addr: addr.clone(),
        what,
        secs: limit.as_secs(),
    };
    let tcp = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect((target.host.as_str(), target.port)),
    )
    .await
    .map_err(|_| timeout("connecting", CONNECT_TIMEOUT))?
    .map_err(|e| SshError::Connect {
        addr: addr.clone(),
        detail: e.to_string(),
    })?;
    let _ = tcp.set_nodelay(true);
    let mut preferred = russh::Preferred::default();
    preferred.key = key
        .known_hosts
        .preferred_algorithms(&target.host, target.port, &preferred.key)
        .into();
    let config = Arc::new(client::Config {
        preferred,
        inactivity_timeout: Some(READ_TIMEOUT),
        ..Default::default()
    });
    let refused = Arc::new(Mutex::new(None));
    let check = HostKeyCheck {
        host: target.host.clone(),
        port: target.port,
        known_hosts: key.known_hosts.clone(),
        refused: refused.clone(),
    };
    let setup = async {
        let mut session = client::connect_stream(config, tcp, check)
            .await
            .map_err(|e| {
                refused
                    .lock()
                    .expect("host key verdict poisoned")
                    .take()
                    .unwrap_or_else(|| SshError::Handshake {
                        addr: addr.clone(),
                        detail: e.to_string(),
                    })
            })?;
        let channel_error = |e: russh::Error| SshError::Channel {
            addr: addr.clone(),
            detail: e.to_string(),
        };
        let hash = if key.key.algorithm().is_rsa() {
            session
                .best_supported_rsa_hash()
                .await
                .map_err(channel_error)?
                .flatten()
        } else {
            None
        };
        let user = target
            .user
            .clone()
            .or_else(|| key.user.clone())
            .unwrap_or_else(|| DEFAULT_USER.into());
        let auth = session
            .authenticate_publickey(&user, PrivateKeyWithHashAlg::new(key.key.clone(), hash))
            .await
            .map_err(channel_error)?;
        if !matches!(auth, AuthResult::Success) {
            return Err(SshError::AuthRefused {
                host: target.host.clone(),
                user,
                fingerprint: key.fingerprint(),
            });
        }
        let channel = session
            .channel_open_session()
            .await
            .map_err(channel_error)?;
        channel
            .exec(true, target.command(program))
            .await
            .map_err(channel_error)?;
        Ok(Open { session, channel })
    };
    tokio::time::timeout(SETUP_TIMEOUT, setup)
        .await
        .map_err(|_| timeout("the SSH handshake", SETUP_TIMEOUT))?
}

/// The channel as libgit2's stream.
struct SshStream {
    handle: Handle,
    stream: Option<Open>,
    /// Data received and not yet read.
    pending: Bytes,
    stderr: Vec<u8>,
    exit_status: Option<u32>,
    /// Whether any data came back (a command that failed at once sends none).
    received: bool,
    finished: bool,
    /// `git-upload-pack on host:port`, for messages.
    command: String,
}

impl SshStream {
    fn failed(&self, detail: impl std::fmt::Display) -> io::Error {
        io::Error::other(format!("{}: {detail}", self.command))
    }

    /// The end of the channel: an error if the command failed.
    fn finish(&mut self) -> io::Result<usize> {
        self.finished = true;
        let stderr = String::from_utf8_lossy(&self.stderr).trim().to_string();
        match self.exit_status {
            Some(status) if status != 0 => {
                Err(self.failed(format!("exit status {status}: {stderr}")))
            }
            _ if !self.received && !stderr.is_empty() => Err(self.failed(stderr)),
            _ => Ok(0),
        }
    }
}

impl Read for SshStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pending.is_empty() {
            if self.finished {
                return Ok(0);
            }
            let Some(open) = self.stream.as_mut() else {
                return Ok(0);
            };
            let message = self
                .handle
                .block_on(tokio::time::timeout(READ_TIMEOUT, open.channel.wait()))
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("{}: no answer in {}s", self.command, READ_TIMEOUT.as_secs()),
                    )
                })?;
            match message {
                Some(ChannelMsg::Data { data }) => {
                    self.received = true;
                    self.pending = data;
                }
                Some(ChannelMsg::ExtendedData { data, .. }) => {
                    let room = STDERR_LIMIT.saturating_sub(self.stderr.len());
                    self.stderr.extend_from_slice(&data[..data.len().min(room)]);
                }
                Some(ChannelMsg::ExitStatus { exit_status }) => {
                    self.exit_status = Some(exit_status);
                }
                Some(ChannelMsg::Failure) => {
                    return Err(self.failed("the server refused to run the command"));
                }
                // After EOF the exit status and the close follow.
                Some(ChannelMsg::Eof) => {}
                Some(ChannelMsg::Close) | None => return self.finish(),
                Some(_) => {}
            }
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending.split_to(n));
        Ok(n)
    }
}

impl Write for SshStream {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let Some(open) = self.stream.as_ref() else {
            return Err(self.failed("the channel is closed"));
        };
        self.handle
            .block_on(tokio::time::timeout(READ_TIMEOUT, open.channel.data(data)))
            .map_err(|_| self.failed(format!("not writable in {}s", READ_TIMEOUT.as_secs())))?
            .map_err(|e| self.failed(e))?;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for SshStream {
    fn drop(&mut self) {
        if let Some(open) = self.stream.take() {
            // Close politely in the background; the session ends with its handle.
            self.handle.spawn(async move {
                let _ = open.channel.close().await;
                let _ = open
                    .session
                    .disconnect(Disconnect::ByApplication, "", "en")
                    .await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_urls_and_scp_like_remotes_name_host_port_user_and_path() {
        let t = |url: &str| Target::parse(url).unwrap();
        assert_eq!(
            t("ssh://git@127.0.0.1:2222/srv/repo.git"),
            Target {
                user: Some("git".into()),
                host: "127.0.0.1".into(),
                port: 2222,
                path: "/srv/repo.git".into()
            }
        );
        assert_eq!(t("ssh://host/~/repo.git").path, "~/repo.git");
        assert_eq!(t("git+ssh://[::1]:22/r").host, "::1");
        assert_eq!(
            t("git@github.com:team/deploy.git"),
            Target {
                user: Some("git".into()),
                host: "github.com".into(),
                port: 22,
                path: "team/deploy.git".into()
            }
        );
        assert_eq!(t("host:/abs/repo").path, "/abs/repo");
        assert_eq!(
            t("me@[127.0.0.1:2222]:/srv/r.git"),
            Target {
                user: Some("me".into()),
                host: "127.0.0.1".into(),
                port: 2222,
                path: "/srv/r.git".into()
            }
        );
        assert_eq!((t("[::1]:r").host.as_str(), t("[::1]:r").port), ("::1", 22));
        assert_eq!(t("host:/abs/repo").user, None);
        for bad in [
            "https://github.com/team/deploy.git",
            "git://host/repo",
            "/srv/repo.git",
            "ssh://host/",
            "host:",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_path_is_quoted_for_the_remote_shell() {
        let target = Target::parse("host:it's; rm -rf ~!").unwrap();
        assert_eq!(
            target.command("git-upload-pack"),
            r"git-upload-pack 'it'\''s; rm -rf ~'\!''"
        );
    }

    #[test]
    fn a_private_key_that_does_not_parse_is_refused() {
        let e = SshKey::new(
            "-----BEGIN OPENSSH PRIVATE KEY-----\nnot a key\n-----END OPENSSH PRIVATE KEY-----\n",
            None,
            "",
            None,
        )
        .unwrap_err();
        assert!(matches!(e, SshKeyError::Key(_)), "{e}");
    }
}
