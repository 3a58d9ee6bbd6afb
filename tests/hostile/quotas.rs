//! Quotas and immutable tags hold however many clients race.

use std::sync::Arc;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::sha256;
use crate::registry::{Registry, basic, user_secret};

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

const CONFIG: &str = r#"
apiVersion: berth.dev/v1alpha1
kind: Namespace
metadata: {name: team-a}
spec:
  visibility: private
  members:
    - {user: will, permission: write}
  quota: {maxTags: 2}
---
apiVersion: berth.dev/v1alpha1
kind: Namespace
metadata: {name: small}
spec:
  visibility: private
  members:
    - {user: will, permission: write}
  quota: {maxBytes: 65536}
---
apiVersion: berth.dev/v1alpha1
kind: Namespace
metadata: {name: releases}
spec:
  visibility: private
  members:
    - {user: will, permission: write}
---
apiVersion: berth.dev/v1alpha1
kind: Repository
metadata: {name: releases.app}
spec:
  namespace: releases
  name: app
  immutableTags: ["v*"]
---
"#;

async fn start() -> Arc<Registry> {
    let config = format!("{CONFIG}{}", user_secret("will", "will-password", false));
    Arc::new(Registry::start(&config).await)
}

fn will() -> String {
    basic("will", "will-password")
}

/// Pushes a config blob into `repo` and returns manifests over it, one per `note`.
async fn manifests(registry: &Registry, repo: &str, notes: usize) -> Vec<Vec<u8>> {
    let config = b"{}".to_vec();
    let digest = sha256(&config);
    let r = registry
        .raw(
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
            Some(&will()),
            Some(("application/octet-stream", config.clone())),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    (0..notes)
        .map(|n| {
            json!({
                "schemaVersion": 2,
                "mediaType": MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest, "size": config.len()},
                "layers": [],
                "annotations": {"note": format!("push {n}")},
            })
            .to_string()
            .into_bytes()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_pushes_of_one_new_immutable_tag_leave_exactly_one_winner() {
    let registry = start().await;
    let bodies = manifests(&registry, "releases/app", 50).await;
    let pushes: Vec<_> = bodies
        .into_iter()
        .map(|body| {
            let registry = registry.clone();
            tokio::spawn(async move {
                let digest = sha256(&body);
                let r = registry
                    .raw(
                        Method::PUT,
                        "/v2/releases/app/manifests/v1.0.0",
                        Some(&will()),
                        Some((MANIFEST, body)),
                    )
                    .await;
                (r, digest)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for push in pushes {
        let (reply, digest) = push.await.unwrap();
        match reply.status {
            StatusCode::CREATED => winners.push(digest),
            StatusCode::FORBIDDEN => {
                assert_eq!(reply.json()["errors"][0]["code"], "DENIED");
                assert!(reply.text().contains("immutable"), "{}", reply.text());
            }
            other => panic!("a racing push got {other}: {}", reply.text()),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one client is told the release is stored"
    );
    let tagged = registry
        .raw(
            Method::HEAD,
            "/v2/releases/app/manifests/v1.0.0",
            Some(&will()),
            None,
        )
        .await;
    assert_eq!(
        tagged.headers["docker-content-digest"].to_str().unwrap(),
        winners[0],
        "the tag holds the manifest of the push that was told it won"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_pushes_of_new_tags_never_exceed_the_tag_quota() {
    let registry = start().await;
    // Two repositories of one namespace: the namespace's count is what must hold.
    manifests(&registry, "team-a/web", 0).await;
    let bodies = manifests(&registry, "team-a/app", 20).await;
    let pushes: Vec<_> = bodies
        .into_iter()
        .enumerate()
        .map(|(n, body)| {
            let registry = registry.clone();
            let repo = if n % 2 == 0 {
                "team-a/app"
            } else {
                "team-a/web"
            };
            tokio::spawn(async move {
                registry
                    .raw(
                        Method::PUT,
                        &format!("/v2/{repo}/manifests/t{n}"),
                        Some(&will()),
                        Some((MANIFEST, body)),
                    )
                    .await
            })
        })
        .collect();
    let mut created = 0;
    for push in pushes {
        let reply = push.await.unwrap();
        match reply.status {
            StatusCode::CREATED => created += 1,
            StatusCode::FORBIDDEN => assert!(reply.text().contains("maxTags"), "{}", reply.text()),
            other => panic!("{other}: {}", reply.text()),
        }
    }
    assert_eq!(created, 2, "maxTags: 2");
    let mut total = 0;
    for repo in ["team-a/app", "team-a/web"] {
        let tags = registry
            .raw(
                Method::GET,
                &format!("/v2/{repo}/tags/list"),
                Some(&will()),
                None,
            )
            .await;
        total += tags.json()["tags"].as_array().map_or(0, Vec::len);
    }
    assert_eq!(total, 2, "the namespace holds exactly maxTags tags");
}

#[tokio::test]
async fn a_chunked_upload_past_the_byte_quota_is_cut_off_and_leaves_nothing() {
    let registry = start().await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let started = registry
        .raw(
            Method::POST,
            "/v2/small/app/blobs/uploads/",
            Some(&will()),
            None,
        )
        .await;
    assert_eq!(started.status, StatusCode::ACCEPTED);
    let location = started.headers["location"].to_str().unwrap().to_string();
    // 1 MiB in 64 KiB pieces with no Content-Length: nothing to judge up front.
    let blob: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
        blob.chunks(64 << 10).map(|c| Ok(c.to_vec())).collect();
    let reply = http
        .patch(format!("{}{location}", registry.url()))
        .header("authorization", will())
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(pieces)))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::FORBIDDEN);
    let body: serde_json::Value = reply.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "DENIED", "{body}");
    assert!(body.to_string().contains("maxBytes"), "{body}");

    // The session is gone, the blob was never stored, and no tag can point at it.
    let digest = sha256(&blob);
    let finish = registry
        .raw(
            Method::PUT,
            &format!("{location}?digest={digest}"),
            Some(&will()),
            None,
        )
        .await;
    assert_eq!(finish.status, StatusCode::NOT_FOUND, "{}", finish.text());
    let blob_head = registry
        .raw(
            Method::HEAD,
            &format!("/v2/small/app/blobs/{digest}"),
            Some(&will()),
            None,
        )
        .await;
    assert_eq!(blob_head.status, StatusCode::NOT_FOUND);
    let tags = registry
        .raw(Method::GET, "/v2/small/app/tags/list", Some(&will()), None)
        .await;
    assert!(
        tags.status == StatusCode::NOT_FOUND
            || tags.json()["tags"].as_array().is_none_or(|t| t.is_empty()),
        "{}",
        tags.text()
    );
    // Bytes within the quota still go through.
    let small = b"small enough".to_vec();
    let r = registry
        .raw(
            Method::POST,
            &format!("/v2/small/app/blobs/uploads/?digest={}", sha256(&small)),
            Some(&will()),
            Some(("application/octet-stream", small)),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
}
