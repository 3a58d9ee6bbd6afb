//! A registry killed at any instant (SIGKILL: no shutdown code runs) keeps every
//! committed blob, manifest and tag intact, and never serves a half-written blob.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Berth, files_under, sha256};
use reqwest::{Client, StatusCode};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// Deterministic pseudo-random content, so every blob is distinct and checkable.
fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn push_blob(
    client: &Client,
    url: &str,
    repo: &str,
    data: Vec<u8>,
) -> reqwest::Result<String> {
    let digest = sha256(&data);
    client
        .post(format!("{url}/v2/{repo}/blobs/uploads/?digest={digest}"))
        .body(data)
        .send()
        .await?
        .error_for_status()?;
    Ok(digest)
}

fn manifest(config: &str, layers: &[(String, usize)]) -> String {
    let layers: Vec<String> = layers
        .iter()
        .map(|(d, s)| format!(r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d}","size":{s}}}"#))
        .collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":2}},"layers":[{}]}}"#,
        layers.join(",")
    )
}

async fn push_image(
    client: &Client,
    url: &str,
    repo: &str,
    tag: &str,
    seed: u64,
) -> reqwest::Result<String> {
    let config = push_blob(client, url, repo, b"{}".to_vec()).await?;
    let layer = content(seed, 64 << 10);
    let size = layer.len();
    let layer = push_blob(client, url, repo, layer).await?;
    let body = manifest(&config, &[(layer, size)]);
    let digest = sha256(body.as_bytes());
    client
        .put(format!("{url}/v2/{repo}/manifests/{tag}"))
        .header("content-type", OCI_MANIFEST)
        .body(body)
        .send()
        .await?
        .error_for_status()?;
    Ok(digest)
}

/// A chunked upload that trickles its bytes, so the kill lands mid-stream.
async fn slow_upload(client: Client, url: String, seed: u64) {
    let Ok(start) = client
        .post(format!("{url}/v2/inflight/blobs/uploads/"))
        .send()
        .await
    else {
        return;
    };
    let Some(location) = start
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .map(str::to_string)
    else {
        return;
    };
    let data = content(seed, 8 << 20);
    let digest = sha256(&data);
    let chunks: Vec<Result<Bytes, std::io::Error>> = data
        .chunks(256 << 10)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let body = reqwest::Body::wrap_stream(futures::stream::iter(chunks).then(|c| async {
        tokio::time::sleep(Duration::from_millis(5)).await;
        c
    }));
    let _ = client
        .put(format!("{url}{location}?digest={digest}"))
        .body(body)
        .send()
        .await;
}

use futures::StreamExt;

/// Every object under blobs/ hashes to its own name: nothing torn was ever committed.
fn assert_every_stored_blob_matches_its_digest(berth: &Berth) {
    let root = berth.data_dir.join("blobs");
    for file in files_under(&root) {
        let (algorithm, hex) = file.split_once('/').unwrap();
        if hex.contains('#') || hex.contains('.') {
            // object_store's staging files for an interrupted write; never linked or served.
            continue;
        }
        assert_eq!(algorithm, "sha256");
        let data = std::fs::read(root.join(&file)).unwrap();
        assert_eq!(
            sha256(&data),
            format!("sha256:{hex}"),
            "blob {file} is torn"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_berth_mid_write_loses_nothing_committed() {
    let mut berth = Berth::start();
    let client = Client::new();

    // What is committed before the crashes.
    let mut committed = Vec::new();
    for i in 0..3 {
        let tag = format!("stable-{i}");
        let digest = push_image(&client, &berth.url(), "app", &tag, i)
            .await
            .unwrap();
        committed.push((tag, digest));
    }

    // Every push of the moving tag acknowledged so far, oldest first, over all rounds:
    // under load a round may end before any push of it is acknowledged.
    let mut acknowledged_moving: Vec<String> = Vec::new();
    for round in 0..4u64 {
        let url = berth.url();
        // Writers racing the kill: slow blob uploads, and a tag being re-pushed over and over.
        let mut tasks = Vec::new();
        for u in 0..3 {
            tasks.push(tokio::spawn(slow_upload(
                client.clone(),
                url.clone(),
                100 + round * 10 + u,
            )));
        }
        let retagger = {
            let client = client.clone();
            let url = url.clone();
            tokio::spawn(async move {
                let mut pushed = Vec::new();
                for n in 0..1000u64 {
                    match push_image(&client, &url, "app", "moving", 1000 + round * 1000 + n).await
                    {
                        Ok(d) => pushed.push(d),
                        Err(_) => break,
                    }
                }
                pushed
            })
        };
        tokio::time::sleep(Duration::from_millis(150 + 70 * round)).await;
        berth.kill();
        for t in tasks {
            let _ = t.await;
        }
        acknowledged_moving.extend(retagger.await.unwrap());

        berth.restart();
        let url = berth.url();
        assert_every_stored_blob_matches_its_digest(&berth);

        // Every tag committed before the crash still serves its whole image.
        for (tag, digest) in &committed {
            let r = client
                .get(format!("{url}/v2/app/manifests/{tag}"))
                .send()
                .await
                .unwrap();
            assert_eq!(
                r.status(),
                StatusCode::OK,
                "tag {tag} lost in round {round}"
            );
            assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
            let m: serde_json::Value = r.json().await.unwrap();
            for layer in m["layers"].as_array().unwrap() {
                let d = layer["digest"].as_str().unwrap();
                let blob = client
                    .get(format!("{url}/v2/app/blobs/{d}"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(blob.status(), StatusCode::OK);
                assert_eq!(sha256(&blob.bytes().await.unwrap()), d);
            }
        }
        // The moving tag is one whole manifest: one that was acknowledged, or the one in flight.
        let r = client
            .get(format!("{url}/v2/app/manifests/moving"))
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::OK {
            let digest = r.headers()["docker-content-digest"]
                .to_str()
                .unwrap()
                .to_string();
            let body = r.bytes().await.unwrap();
            assert_eq!(sha256(&body), digest, "moving tag serves a torn manifest");
            serde_json::from_slice::<serde_json::Value>(&body)
                .expect("moving tag manifest is whole JSON");
            if let Some(last) = acknowledged_moving.last() {
                // Never older than the last acknowledged push.
                let acknowledged_earlier = &acknowledged_moving[..acknowledged_moving.len() - 1];
                assert!(
                    !acknowledged_earlier.contains(&digest) || &digest == last,
                    "moving tag went back in time after the crash"
                );
            }
        } else {
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            assert!(
                acknowledged_moving.is_empty(),
                "moving tag vanished after round {round}, though {} pushes of it were acknowledged: \
                 {status} {body}",
                acknowledged_moving.len()
            );
        }
        // Interrupted uploads never show up as blobs.
        for u in 0..3 {
            let data = content(100 + round * 10 + u, 8 << 20);
            let r = client
                .get(format!("{url}/v2/inflight/blobs/{}", sha256(&data)))
                .send()
                .await
                .unwrap();
            if r.status() == StatusCode::OK {
                assert_eq!(
                    r.bytes().await.unwrap().len(),
                    data.len(),
                    "partial blob served"
                );
            } else {
                assert_eq!(r.status(), StatusCode::NOT_FOUND);
            }
        }
        // And the registry takes new pushes on the same data.
        let tag = format!("after-crash-{round}");
        let digest = push_image(&client, &url, "app", &tag, 9000 + round)
            .await
            .unwrap();
        committed.push((tag, digest));
    }
}

/// An upload a client started and never finished (here: berth killed under it, a week
/// ago) is deleted when berth starts, and counted; a recent one is left to resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_uploads_are_deleted_after_the_expiry() {
    let mut berth = Berth::start();
    let client = Client::new();
    let mut sessions = Vec::new();
    for _ in 0..2 {
        let r = client
            .post(format!("{}/v2/app/blobs/uploads/", berth.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        let location = r.headers()["location"].to_str().unwrap().to_string();
        let r = client
            .patch(format!("{}{location}", berth.url()))
            .header("content-range", "0-4")
            .body("12345")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        sessions.push(location);
    }
    berth.kill();
    // The first session was last written eight days ago, and a write into it was cut
    // off by the kill (a staging file object_store does not list).
    let id = sessions[0].rsplit('/').next().unwrap();
    let dir = berth.data_dir.join("uploads").join(id);
    std::fs::write(dir.join("parts/00000000000000000005#1"), "678").unwrap();
    for file in files_under(&dir) {
        let status = std::process::Command::new("touch")
            .args(["-m", "-d", "8 days ago"])
            .arg(dir.join(file))
            .status()
            .unwrap();
        assert!(status.success());
    }

    berth.restart();
    let url = berth.url();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = client
            .get(format!("{url}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics.contains("berth_uploads_expired_total 1") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the week-old upload was not expired: {}",
            metrics
                .lines()
                .filter(|l| l.contains("uploads_expired"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = client
        .get(format!("{url}{}", sessions[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let body = r.text().await.unwrap();
    assert!(body.contains("BLOB_UPLOAD_UNKNOWN"), "{body}");
    assert!(
        !dir.exists(),
        "its parts and staging files went with it: {:?}",
        files_under(&dir)
    );

    // The recent one resumes where it stopped.
    let r = client
        .get(format!("{url}{}", sessions[1]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(r.headers()["range"], "0-4");
}

/// Every tag in `tags` serves its manifest and every blob it names, whole.
async fn assert_tags_pull_whole(client: &Client, url: &str, tags: &[(String, String)]) {
    for (tag, digest) in tags {
        let r = client
            .get(format!("{url}/v2/app/manifests/{tag}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "tag {tag} is broken");
        assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
        let m: serde_json::Value = r.json().await.unwrap();
        let mut blobs = vec![m["config"]["digest"].as_str().unwrap().to_string()];
        for l in m["layers"].as_array().unwrap() {
            blobs.push(l["digest"].as_str().unwrap().to_string());
        }
        for blob in blobs {
            let r = client
                .get(format!("{url}/v2/app/blobs/{blob}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK, "tag {tag} lost blob {blob}");
            assert_eq!(
                sha256(&r.bytes().await.unwrap()),
                blob,
                "tag {tag}: blob torn"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_berth_mid_garbage_collection_breaks_no_tag() {
    let mut berth = Berth::start_with(&["--gc-grace", "0s", "--gc-untagged-delay", "0s"], &[]);
    let client = Client::new();
    let url = berth.url();
    let mut kept = Vec::new();
    for i in 0..20u64 {
        let tag = format!("keep-{i}");
        kept.push((
            tag.clone(),
            push_image(&client, &url, "app", &tag, i).await.unwrap(),
        ));
    }
    // Garbage: images deleted again, half of them sharing a layer with a kept image.
    for i in 0..300u64 {
        let seed = if i % 2 == 0 { i % 20 } else { 10_000 + i };
        let tag = format!("gone-{i}");
        push_image(&client, &url, "app", &tag, seed).await.unwrap();
        let r = client
            .delete(format!("{url}/v2/app/manifests/{tag}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
    }

    let mut interrupted = 0;
    for round in 0..6u64 {
        let url = berth.url();
        let collection = tokio::spawn({
            let client = client.clone();
            let url = url.clone();
            async move { client.post(format!("{url}/api/gc")).send().await }
        });
        tokio::time::sleep(Duration::from_millis(15 + 25 * round)).await;
        berth.kill();
        if !matches!(collection.await, Ok(Ok(r)) if r.status() == StatusCode::OK) {
            interrupted += 1;
        }
        berth.restart();
        assert_every_stored_blob_matches_its_digest(&berth);
        assert_tags_pull_whole(&client, &berth.url(), &kept).await;
    }

    // Run to the end: the garbage is gone, the kept images stay whole.
    let r = client
        .post(format!("{}/api/gc", berth.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let report: serde_json::Value = r.json().await.unwrap();
    assert_eq!(report["run"]["reason"], "request", "{report}");
    assert_tags_pull_whole(&client, &berth.url(), &kept).await;
    // 20 kept layers, one shared config, and the 20 kept manifests.
    let blobs = files_under(&berth.data_dir.join("blobs"))
        .into_iter()
        .filter(|f| !f.contains('#'))
        .count();
    assert_eq!(blobs, 41, "only what the kept tags use remains");
    assert!(interrupted >= 1, "no kill landed during a collection");
}
