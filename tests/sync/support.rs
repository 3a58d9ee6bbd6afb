//! What the sync tests share: registries on loopback (berth processes and CNCF
//! distribution), images pushed over HTTP, and waiting for replication to show.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::common::{self, Berth};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// A registry as the tests reach it: base URL and optional Basic credentials.
#[derive(Clone)]
pub struct Reg {
    pub url: String,
    pub auth: Option<String>,
}

impl Reg {
    pub fn open(url: String) -> Reg {
        Reg { url, auth: None }
    }

    pub fn with_user(url: String, user: &str, password: &str) -> Reg {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        Reg {
            url,
            auth: Some(format!("Basic {token}")),
        }
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{path}", self.url)
        };
        let r = client().request(method, url);
        match &self.auth {
            Some(a) => r.header("authorization", a),
            None => r,
        }
    }

    /// Uploads `data` as a blob of `repo` (monolithic POST+PUT); returns its descriptor.
    pub async fn put_blob(&self, repo: &str, media_type: &str, data: &[u8]) -> Value {
        let digest = common::sha256(data);
        let r = self
            .req(reqwest::Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "start upload: {}", r.text().await.unwrap());
        let location = r.headers()["location"].to_str().unwrap().to_string();
        let location = if location.starts_with("http") {
            location
        } else {
            format!("{}{location}", self.url)
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let r = self
            .req(
                reqwest::Method::PUT,
                &format!("{location}{sep}digest={digest}"),
            )
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            201,
            "finish upload: {}",
            r.text().await.unwrap()
        );
        json!({"mediaType": media_type, "digest": digest, "size": data.len()})
    }

    /// Stores a manifest; returns its digest.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> String {
        let r = self
            .req(
                reqwest::Method::PUT,
                &format!("/v2/{repo}/manifests/{reference}"),
            )
            .header("content-type", media_type)
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        let status = r.status();
        assert_eq!(
            status,
            201,
            "put manifest {repo}:{reference}: {}",
            r.text().await.unwrap()
        );
        common::sha256(body)
    }

    /// An image of `layers` (and a config naming `marker`) tagged `tag`; returns
    /// (digest, manifest bytes).
    pub async fn push_image(
        &self,
        repo: &str,
        tag: &str,
        layers: &[&[u8]],
        marker: &str,
    ) -> (String, Vec<u8>) {
        let config = format!(r#"{{"architecture":"amd64","os":"linux","marker":"{marker}"}}"#);
        let config = self
            .put_blob(
                repo,
                "application/vnd.oci.image.config.v1+json",
                config.as_bytes(),
            )
            .await;
        let mut descriptors = Vec::new();
        for layer in layers {
            descriptors.push(
                self.put_blob(repo, "application/vnd.oci.image.layer.v1.tar+gzip", layer)
                    .await,
            );
        }
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config,
            "layers": descriptors,
        }))
        .unwrap();
        let digest = self.put_manifest(repo, tag, OCI_MANIFEST, &manifest).await;
        (digest, manifest)
    }

    /// A two-platform index tagged `tag` (children by digest); returns (digest, bytes).
    pub async fn push_index(&self, repo: &str, tag: &str, shared: &[u8]) -> (String, Vec<u8>) {
        let mut children = Vec::new();
        for arch in ["amd64", "arm64"] {
            let layer = format!("{arch} layer of {tag}").repeat(1000);
            let (digest, bytes) = self
                .push_image(
                    repo,
                    &format!("tmp-{arch}"),
                    &[shared, layer.as_bytes()],
                    arch,
                )
                .await;
            children.push(json!({
                "mediaType": OCI_MANIFEST, "digest": digest, "size": bytes.len(),
                "platform": {"architecture": arch, "os": "linux"}
            }));
        }
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children,
        }))
        .unwrap();
        let digest = self.put_manifest(repo, tag, OCI_INDEX, &index).await;
        (digest, index)
    }

    /// A signature-like artifact whose subject is `subject` (stored by digest).
    pub async fn push_referrer(
        &self,
        repo: &str,
        subject: &str,
        subject_size: usize,
        subject_type: &str,
    ) -> String {
        let empty = self
            .put_blob(repo, "application/vnd.oci.empty.v1+json", b"{}")
            .await;
        let sig = self
            .put_blob(
                repo,
                "application/vnd.dev.cosign.simplesigning.v1+json",
                b"signed: yes",
            )
            .await;
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.dev.sigstore.bundle.v0.3+json",
            "config": empty,
            "layers": [sig],
            "subject": {"mediaType": subject_type, "digest": subject, "size": subject_size},
        }))
        .unwrap();
        let digest = common::sha256(&manifest);
        self.put_manifest(repo, &digest, OCI_MANIFEST, &manifest)
            .await
    }

    /// The digest `reference` resolves to, if it exists.
    pub async fn digest(&self, repo: &str, reference: &str) -> Option<String> {
        let r = self
            .req(
                reqwest::Method::GET,
                &format!("/v2/{repo}/manifests/{reference}"),
            )
            .header("accept", format!("{OCI_MANIFEST}, {OCI_INDEX}"))
            .send()
            .await
            .ok()?;
        if r.status() != 200 {
            return None;
        }
        Some(common::sha256(&r.bytes().await.ok()?))
    }

    pub async fn manifest_json(&self, repo: &str, reference: &str) -> Value {
        let r = self
            .req(
                reqwest::Method::GET,
                &format!("/v2/{repo}/manifests/{reference}"),
            )
            .header("accept", format!("{OCI_MANIFEST}, {OCI_INDEX}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{repo}:{reference}");
        r.json().await.unwrap()
    }

    pub async fn has_blob(&self, repo: &str, digest: &str) -> bool {
        self.req(reqwest::Method::HEAD, &format!("/v2/{repo}/blobs/{digest}"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    }

    pub async fn tags(&self, repo: &str) -> Vec<String> {
        let r = self
            .req(reqwest::Method::GET, &format!("/v2/{repo}/tags/list"))
            .send()
            .await
            .unwrap();
        if r.status() != 200 {
            return Vec::new();
        }
        let v: Value = r.json().await.unwrap();
        v["tags"]
            .as_array()
            .map(|a| a.iter().map(|t| t.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    }

    /// The referrers of `digest` as berth's referrers API lists them.
    pub async fn referrers(&self, repo: &str, digest: &str) -> Vec<String> {
        let r = self
            .req(
                reqwest::Method::GET,
                &format!("/v2/{repo}/referrers/{digest}"),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        v["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["digest"].as_str().unwrap().to_string())
            .collect()
    }
}

fn client() -> reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT
        .get_or_init(|| reqwest::Client::builder().build().unwrap())
        .clone()
}

/// The value of one series of berth's `/metrics` (0 when absent).
pub async fn metric(berth_url: &str, series: &str) -> f64 {
    let text = client()
        .get(format!("{berth_url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// Polls `check` until it holds, failing with `what` after `within`.
pub async fn wait_until<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A config folder for a standalone berth: namespace `team-a` (alice, an administrator,
/// pushes) plus `extra` YAML documents.
pub struct Folder {
    pub dir: tempfile::TempDir,
}

pub const ALICE: (&str, &str) = ("alice", "alice-password");

impl Folder {
    pub fn new(extra: &str) -> Folder {
        let dir = tempfile::tempdir().unwrap();
        let base = format!(
            "apiVersion: berth.dev/v1alpha1\nkind: Namespace\nmetadata: {{name: team-a}}\nspec: {{visibility: internal}}\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata:\n  name: user-alice\n  labels: {{berth.dev/user: \"true\"}}\n\
             stringData: {{username: {}, password: {}, admin: \"true\"}}\n",
            ALICE.0, ALICE.1
        );
        std::fs::write(dir.path().join("base.yaml"), base).unwrap();
        std::fs::write(dir.path().join("sync.yaml"), extra).unwrap();
        Folder { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn arg(&self) -> String {
        self.path().to_str().unwrap().to_string()
    }

    /// Replaces the rules file (berth reloads it within a second).
    pub fn write_rules(&self, yaml: &str) {
        std::fs::write(self.path().join("sync.yaml"), yaml).unwrap();
    }
}

/// A standalone berth with `folder`, ready (users loaded), and how to push to it as alice.
pub async fn berth_with(folder: &Folder) -> (Berth, Reg) {
    let berth = Berth::start_with(&["--config-dir", &folder.arg()], &[]);
    wait_ready(&berth.url()).await;
    let reg = Reg::with_user(berth.url(), ALICE.0, ALICE.1);
    (berth, reg)
}

/// A SyncRule document.
pub fn rule(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: berth.dev/v1alpha1\nkind: SyncRule\nmetadata: {{name: {name}}}\nspec:\n{spec}\n---\n"
    )
}

/// CNCF distribution v3 (`distribution-registry`) on a loopback port: no referrers API.
pub struct Distribution {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Distribution {
    pub fn start() -> Option<Distribution> {
        let bin = common::require_tool("distribution-registry")?;
        Some(Distribution::start_at(&bin, free_port(), None))
    }

    /// Serving HTTPS with `cert` and `key` (PEM files).
    pub fn start_tls(cert: &Path, key: &Path) -> Option<Distribution> {
        let bin = common::require_tool("distribution-registry")?;
        Some(Distribution::start_at(&bin, free_port(), Some((cert, key))))
    }

    fn start_at(bin: &PathBuf, port: u16, tls: Option<(&Path, &Path)>) -> Distribution {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.yml");
        let tls_config = match tls {
            Some((cert, key)) => format!(
                "  tls: {{certificate: {}, key: {}}}\n",
                cert.display(),
                key.display()
            ),
            None => String::new(),
        };
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\n  delete: {{enabled: true}}\nhttp:\n  addr: 127.0.0.1:{port}\n{tls_config}",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new(bin)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start distribution-registry");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "distribution did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Distribution {
            child,
            url,
            _dir: dir,
        }
    }
}

impl Drop for Distribution {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub use crate::common::free_port;

/// `n` bytes that differ by `seed` (layers that do not compress away).
pub fn layer(seed: &str, n: usize) -> Vec<u8> {
    use sha2::Digest as _;
    let mut out = Vec::with_capacity(n + 32);
    let mut block = sha2::Sha256::digest(seed.as_bytes()).to_vec();
    while out.len() < n {
        block = sha2::Sha256::digest(&block).to_vec();
        out.extend_from_slice(&block);
    }
    out.truncate(n);
    out
}

/// Waits for `/readyz`: the config folder (and its users) loaded.
pub async fn wait_ready(url: &str) {
    wait_until("berth ready", Duration::from_secs(30), || async {
        client()
            .get(format!("{url}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
}

/// A TCP proxy on loopback to `target` that forwards client→server bytes at most
/// `bytes_per_second`, counting them: a slow link, to catch a copy mid-way.
pub struct SlowLink {
    pub url: String,
    pub forwarded: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl SlowLink {
    pub async fn start(target: &str, bytes_per_second: u64) -> SlowLink {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let forwarded = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = forwarded.clone();
        let target = target.to_string();
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = tokio::net::TcpStream::connect(&target).await else {
                    continue;
                };
                let counter = counter.clone();
                tokio::spawn(async move {
                    let (mut ri, mut wi) = inbound.into_split();
                    let (mut ro, mut wo) = outbound.into_split();
                    let up = async move {
                        let mut buf = vec![0u8; 16 << 10];
                        loop {
                            let n = match ri.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            counter.fetch_add(n as u64, Ordering::Relaxed);
                            if wo.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                            let pause = n as f64 / bytes_per_second as f64;
                            tokio::time::sleep(Duration::from_secs_f64(pause)).await;
                        }
                        let _ = wo.shutdown().await;
                    };
                    let down = async move {
                        let _ = tokio::io::copy(&mut ro, &mut wi).await;
                    };
                    tokio::join!(up, down);
                });
            }
        });
        SlowLink {
            url,
            forwarded,
            task,
        }
    }
}

impl Drop for SlowLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A CA and a server certificate for 127.0.0.1 signed by it, made with openssl:
/// (folder, ca.crt, server.crt, server.key).
pub fn test_certificates() -> Option<(tempfile::TempDir, PathBuf, PathBuf, PathBuf)> {
    let openssl = common::require_tool("openssl")?;
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    let run = |args: &[&str]| {
        common::run(Command::new(&openssl).current_dir(dir.path()).args(args));
    };
    std::fs::write(p("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=berth sync test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    let (ca, cert, key) = (p("ca.crt"), p("server.crt"), p("server.key"));
    Some((dir, ca, cert, key))
}
