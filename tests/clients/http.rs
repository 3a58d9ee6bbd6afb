//! Asking berth directly over HTTP what it stores, independently of the client that
//! put it there.

use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::common::{Berth, sha256};

/// Every manifest media type the clients here push.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "reply is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// `GET url` (blocking: a one-off runtime, as the tests themselves are synchronous).
pub fn get(url: &str, accept: Option<&str>) -> Reply {
    get_with(url, accept.map(|a| ("Accept", a)))
}

/// `GET url` with one extra header (e.g. `Authorization`).
pub fn get_with(url: &str, header: Option<(&str, &str)>) -> Reply {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(async {
            let client = reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("http client");
            let mut req = client.get(url);
            if let Some((name, value)) = header {
                req = req.header(name, value);
            }
            let resp = req
                .send()
                .await
                .unwrap_or_else(|e| panic!("GET {url}: {e}"));
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body = resp.bytes().await.expect("reply body").to_vec();
            Reply {
                status,
                headers,
                body,
            }
        })
}

/// A manifest as berth serves it.
pub struct Served {
    pub digest: String,
    pub body: Vec<u8>,
}

impl Served {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("manifest is JSON")
    }
}

/// `GET /v2/<repo>/manifests/<reference>`; checks that `Docker-Content-Digest` is the
/// digest of the bytes served.
pub fn manifest(berth: &Berth, repo: &str, reference: &str) -> Served {
    let url = format!("{}/v2/{repo}/manifests/{reference}", berth.url());
    let reply = get(&url, Some(MANIFEST_ACCEPT));
    assert_eq!(
        reply.status,
        200,
        "GET {url}: {}",
        String::from_utf8_lossy(&reply.body)
    );
    let digest = sha256(&reply.body);
    assert_eq!(
        reply.header("docker-content-digest"),
        Some(digest.as_str()),
        "GET {url}: Docker-Content-Digest is not the digest of the body"
    );
    Served {
        digest,
        body: reply.body,
    }
}

/// Status of `GET /v2/<repo>/manifests/<reference>`.
pub fn manifest_status(berth: &Berth, repo: &str, reference: &str) -> u16 {
    get(
        &format!("{}/v2/{repo}/manifests/{reference}", berth.url()),
        Some(MANIFEST_ACCEPT),
    )
    .status
}

/// Checks that berth serves blob `digest` in `repo` with exactly that digest.
pub fn assert_blob_served(berth: &Berth, repo: &str, digest: &str) {
    let url = format!("{}/v2/{repo}/blobs/{digest}", berth.url());
    let reply = get(&url, None);
    assert_eq!(reply.status, 200, "GET {url}");
    assert_eq!(sha256(&reply.body), digest, "GET {url} served other bytes");
}

/// `GET /v2/<repo>/tags/list`, sorted.
pub fn tags(berth: &Berth, repo: &str) -> Vec<String> {
    let url = format!("{}/v2/{repo}/tags/list", berth.url());
    let reply = get(&url, None);
    assert_eq!(reply.status, 200, "GET {url}");
    let mut tags: Vec<String> = reply.json()["tags"]
        .as_array()
        .map(|a| a.iter().map(|t| t.as_str().unwrap().to_string()).collect())
        .unwrap_or_default();
    tags.sort();
    tags
}

/// `GET /v2/<repo>/referrers/<digest>[?artifactType=…]`, checked to be an OCI index.
pub fn referrers(berth: &Berth, repo: &str, digest: &str, artifact_type: Option<&str>) -> Reply {
    let mut url = format!("{}/v2/{repo}/referrers/{digest}", berth.url());
    if let Some(t) = artifact_type {
        url.push_str(&format!("?artifactType={t}"));
    }
    let reply = get(&url, None);
    assert_eq!(
        reply.status,
        200,
        "GET {url}: {}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(
        reply.header("content-type"),
        Some("application/vnd.oci.image.index.v1+json"),
        "GET {url}"
    );
    reply
}
