//! A managed berth with users, spoken to the way clients do: the Docker token flow
//! (401 challenge → token endpoint → bearer), or Basic auth on registry endpoints.

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{Berth, sha256};

/// A caller as a client would present itself.
#[derive(Clone, Debug)]
pub enum Creds {
    Anonymous,
    Basic(String, String),
}

impl Creds {
    pub fn user(name: &str, password: &str) -> Creds {
        Creds::Basic(name.into(), password.into())
    }
}

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

pub struct Registry {
    pub berth: Berth,
    pub config_dir: tempfile::TempDir,
    http: reqwest::Client,
}

pub fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// One user Secret, as in a cluster.
pub fn user_secret(name: &str, password: &str, admin: bool) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: user-{name}\n  labels: {{berth.dev/user: \"true\"}}\nstringData:\n  username: {name}\n  password: {password}\n  admin: \"{admin}\"\n---\n"
    )
}

impl Registry {
    /// `berth serve --config-dir` on a folder holding `config` (YAML), ready to serve.
    pub async fn start(config: &str) -> Registry {
        Registry::start_with_args(config, &[]).await
    }

    /// The same, with more `berth serve` arguments.
    pub async fn start_with_args(config: &str, args: &[&str]) -> Registry {
        let config_dir = tempfile::tempdir().unwrap();
        std::fs::write(config_dir.path().join("config.yaml"), config).unwrap();
        let mut all = vec!["--config-dir", config_dir.path().to_str().unwrap()];
        all.extend_from_slice(args);
        let berth = Berth::start_with(&all, &[]);
        let registry = Registry {
            berth,
            config_dir,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        };
        registry.wait_ready().await;
        registry
    }

    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = self
                .http
                .get(format!("{}/readyz", self.berth.url()))
                .send()
                .await;
            if r.is_ok_and(|r| r.status() == 200) {
                return;
            }
            assert!(Instant::now() < deadline, "berth never became ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn rewrite_config(&self, config: &str) {
        std::fs::write(self.config_dir.path().join("config.yaml"), config).unwrap();
    }

    pub fn url(&self) -> String {
        self.berth.url()
    }

    /// GET /auth/token with `scopes`, as docker does (Basic auth when signed in).
    pub async fn token(&self, creds: &Creds, scopes: &[String]) -> Result<Value, Reply> {
        let mut url = reqwest::Url::parse(&format!("{}/auth/token", self.url())).unwrap();
        url.query_pairs_mut().append_pair("service", "berth");
        for scope in scopes {
            url.query_pairs_mut().append_pair("scope", scope);
        }
        let mut req = self.http.get(url);
        if let Creds::Basic(u, p) = creds {
            req = req.header("authorization", basic(u, p));
        }
        let reply = to_reply(req.send().await.unwrap()).await;
        if reply.status == 200 {
            Ok(reply.json())
        } else {
            Err(reply)
        }
    }

    /// A raw request with an optional Authorization header.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        authorization: Option<&str>,
        body: Option<(&str, Vec<u8>)>,
    ) -> Reply {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url()))
            .header(
                "accept",
                "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json",
            );
        if let Some(a) = authorization {
            req = req.header("authorization", a);
        }
        if let Some((content_type, bytes)) = body {
            req = req.header("content-type", content_type).body(bytes);
        }
        to_reply(req.send().await.unwrap()).await
    }

    /// A request as a client makes it: with a token for `scopes` when the token endpoint
    /// gives one, else with Basic auth (or nothing, anonymously).
    pub async fn call(
        &self,
        creds: &Creds,
        method: Method,
        path: &str,
        scopes: &[String],
        body: Option<(&str, Vec<u8>)>,
    ) -> Reply {
        let authorization = match self.token(creds, scopes).await {
            Ok(token) => Some(format!("Bearer {}", token["token"].as_str().unwrap())),
            Err(_) => match creds {
                Creds::Basic(u, p) => Some(basic(u, p)),
                Creds::Anonymous => None,
            },
        };
        self.raw(method, path, authorization.as_deref(), body).await
    }

    /// Pushes a one-layer image (its layer made from `seed`) with Basic auth; returns the
    /// manifest digest and the layer digest.
    pub async fn push(&self, creds: &Creds, repo: &str, tag: &str, seed: &str) -> (String, String) {
        let Creds::Basic(u, p) = creds else {
            panic!("pushing needs a user")
        };
        let auth = basic(u, p);
        let mut digests = Vec::new();
        for data in [
            format!("{{\"seed\":\"{seed}\"}}").into_bytes(),
            format!("layer {seed}").into_bytes(),
        ] {
            let digest = sha256(&data);
            let r = self
                .raw(
                    Method::POST,
                    &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
                    Some(&auth),
                    Some(("application/octet-stream", data.clone())),
                )
                .await;
            assert_eq!(r.status, 201, "blob push: {}", r.text());
            digests.push((digest, data.len()));
        }
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digests[0].0, "size": digests[0].1},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digests[1].0, "size": digests[1].1}],
        })
        .to_string();
        let r = self
            .raw(
                Method::PUT,
                &format!("/v2/{repo}/manifests/{tag}"),
                Some(&auth),
                Some((
                    "application/vnd.oci.image.manifest.v1+json",
                    manifest.clone().into_bytes(),
                )),
            )
            .await;
        assert_eq!(r.status, 201, "manifest push: {}", r.text());
        (sha256(manifest.as_bytes()), digests[1].0.clone())
    }

    /// Tags an existing manifest (by digest) with `tag`, as root.
    pub async fn tag(&self, creds: &Creds, repo: &str, digest: &str, tag: &str) {
        let Creds::Basic(u, p) = creds else {
            panic!("tagging needs a user")
        };
        let manifest = self
            .raw(
                Method::GET,
                &format!("/v2/{repo}/manifests/{digest}"),
                Some(&basic(u, p)),
                None,
            )
            .await;
        assert_eq!(manifest.status, 200);
        let r = self
            .raw(
                Method::PUT,
                &format!("/v2/{repo}/manifests/{tag}"),
                Some(&basic(u, p)),
                Some(("application/vnd.oci.image.manifest.v1+json", manifest.body)),
            )
            .await;
        assert_eq!(r.status, 201, "tagging: {}", r.text());
    }
}

async fn to_reply(r: reqwest::Response) -> Reply {
    Reply {
        status: r.status(),
        headers: r.headers().clone(),
        body: r.bytes().await.unwrap().to_vec(),
    }
}

/// `berth login-command` for a user of `config_dir`, with berth's data dir for the key;
/// returns the credential from the printed `docker login` line.
pub fn login_command(config_dir: &Path, data_dir: &Path, user: &str, extra: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["login-command", "--user", user, "--config-dir"])
        .arg(config_dir)
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "login-command failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).unwrap();
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&words[..4], &["docker", "login", "-u", user], "{line}");
    assert_eq!(words[4], "-p", "{line}");
    words[5].to_string()
}
