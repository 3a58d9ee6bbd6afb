//! Garbage collection on a bucket that several `berth serve` replicas share, on a real
//! MinIO: the leader sweeps while a follower links content the sweep is deleting (the
//! sweep marker makes the follower wait and check, see `src/storage/sweep_gate.rs`),
//! in-place upload data nobody will finish or reference goes, and a leader killed
//! mid-sweep neither blocks pushes past its marker's expiry nor stops the next sweep.
//!
//! The replicas run with a hidden test flag, `--gc-test-pause`, that holds each sweep
//! between sweeping the repositories and sweeping content: the window in which a write
//! on another replica could link content the sweep has already decided to delete.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::ObjectStore;
use object_store::path::Path;
use reqwest::StatusCode;

use crate::backends::{s3_location, s3_objects};
use crate::common::{Berth, sha256};
use crate::leader::{leader_of, metric, wait_until};
use crate::minio_server::{self, MinioServer};
use crate::replicas::{
    content, expect, manifest, pull_verified, push_blob, put_manifest, replicas_on, start_session,
};

/// Longer than `--gc-grace` and `--gc-untagged-delay` (2s), with S3's whole seconds.
const AGE: Duration = Duration::from_millis(3500);

fn gc_flags(pause: &str) -> Vec<String> {
    [
        "--gc-schedule",
        "off",
        "--gc-grace",
        "2s",
        "--gc-untagged-delay",
        "2s",
        "--gc-sweep-marker-duration",
        "3s",
        "--leader-lease-duration",
        "3s",
        "--gc-test-pause",
        pause,
    ]
    .map(String::from)
    .to_vec()
}

fn start(server: &MinioServer, count: usize, extra: &[String]) -> (String, Vec<Berth>) {
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    replicas_on(server, count, &extra)
}

/// The digests named by the objects under `prefix` (`<prefix>/<alg>/<hex>`).
async fn digests_under(objects: &dyn ObjectStore, prefix: &str) -> BTreeSet<String> {
    objects
        .list(Some(&Path::from(prefix)))
        .map_ok(|m| {
            let parts: Vec<String> = m.location.parts().map(|p| p.as_ref().to_string()).collect();
            format!("{}:{}", parts[parts.len() - 2], parts[parts.len() - 1])
        })
        .try_collect()
        .await
        .unwrap()
}

async fn exists(objects: &dyn ObjectStore, key: &str) -> bool {
    let head = object_store::GetOptions::new().with_head(true);
    match objects.get_opts(&Path::from(key), head).await {
        Ok(_) => true,
        Err(object_store::Error::NotFound { .. }) => false,
        Err(e) => panic!("head {key}: {e}"),
    }
}

async fn keys_under(objects: &dyn ObjectStore, prefix: &str) -> Vec<String> {
    objects
        .list(Some(&Path::from(prefix)))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap()
}

async fn read_json(objects: &dyn ObjectStore, key: &str) -> Option<serde_json::Value> {
    match objects.get_opts(&Path::from(key), Default::default()).await {
        Ok(r) => Some(serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()),
        Err(object_store::Error::NotFound { .. }) => None,
        Err(e) => panic!("read {key}: {e}"),
    }
}

/// Runs one collection on `url` (the leader) and returns its report.
async fn collect(http: &reqwest::Client, url: &str) -> serde_json::Value {
    let resp = http.post(format!("{url}/api/gc")).send().await.unwrap();
    expect(resp, StatusCode::OK, "POST /api/gc on the leader")
        .await
        .json()
        .await
        .unwrap()
}

async fn wait_for_leader(urls: &[String]) -> usize {
    wait_until("a replica leads", Duration::from_secs(30), || async {
        leader_of(urls).await.is_some()
    })
    .await;
    leader_of(urls).await.unwrap()
}

/// Mounts `digest` into `repo` from wherever the registry holds it (no `from`), as a
/// client does; on 202 (nothing to mount) uploads `data` into the session it got.
/// Returns whether the mount was taken.
async fn mount_or_upload(http: &reqwest::Client, url: &str, repo: &str, data: &[u8]) -> bool {
    let digest = sha256(data);
    let resp = http
        .post(format!("{url}/v2/{repo}/blobs/uploads/?mount={digest}"))
        .send()
        .await
        .unwrap();
    match resp.status() {
        StatusCode::CREATED => true,
        StatusCode::ACCEPTED => {
            let session = resp.headers()["location"].to_str().unwrap().to_string();
            let sep = if session.contains('?') { '&' } else { '?' };
            let resp = http
                .put(format!("{url}{session}{sep}digest={digest}"))
                .header("content-type", "application/octet-stream")
                .body(data.to_vec())
                .send()
                .await
                .unwrap();
            expect(resp, StatusCode::CREATED, "upload after a refused mount").await;
            false
        }
        other => panic!(
            "mount of {digest} into {repo}: {other}: {}",
            resp.text().await.unwrap_or_default()
        ),
    }
}

/// Pushes a manifest; on `MANIFEST_BLOB_UNKNOWN` uploads its blobs again and retries,
/// as a client does.
async fn push_image(http: &reqwest::Client, url: &str, repo: &str, blobs: [&[u8]; 2]) -> String {
    let body = manifest(blobs[0], &[blobs[1]]);
    for _ in 0..3 {
        let resp = put_manifest(http, url, repo, "v1", &body).await;
        if resp.status() == StatusCode::CREATED {
            return sha256(&body);
        }
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        assert!(
            status == StatusCode::BAD_REQUEST && text.contains("MANIFEST_BLOB_UNKNOWN"),
            "manifest push to {repo}: {status}: {text}"
        );
        for blob in blobs {
            push_blob(http, url, repo, blob).await;
        }
    }
    panic!("the manifest of {repo} was refused three times");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn links_a_follower_writes_while_the_leader_sweeps_never_dangle_and_garbage_still_goes() {
    let Some(server) = minio_server::shared() else {
        return;
    };
    let (prefix, replicas) = start(server, 2, &gc_flags("2s"));
    let urls: Vec<String> = replicas.iter().map(Berth::url).collect();
    let http = reqwest::Client::new();
    let leader = wait_for_leader(&urls).await;
    let (leader, follower) = (&urls[leader], &urls[1 - leader]);

    // Per round, an image whose config and layer are old by then, deleted just before
    // the round's sweep: unreferenced when that sweep lists, and referenced again by the
    // follower while the sweep is between its listing and its deletes. A blob nobody
    // ever references goes with them.
    const ROUNDS: u32 = 4;
    let images: Vec<(Vec<u8>, Vec<u8>)> = (0..ROUNDS)
        .map(|r| (content(100 + r, 300), content(200 + r, 64 << 10)))
        .collect();
    let mut base = Vec::new();
    for (r, (config, layer)) in images.iter().enumerate() {
        push_blob(&http, leader, "team/base", config).await;
        push_blob(&http, leader, "team/base", layer).await;
        let body = manifest(config, &[layer]);
        let resp = put_manifest(&http, leader, "team/base", &format!("r{r}"), &body).await;
        expect(resp, StatusCode::CREATED, "base image").await;
        base.push(sha256(&body));
    }
    let junk = content(999, 4096);
    push_blob(&http, follower, "team/junk", &junk).await;
    tokio::time::sleep(AGE).await;

    let mut pushed = Vec::new();
    for (r, (config, layer)) in images.iter().enumerate() {
        let resp = http
            .delete(format!("{leader}/v2/team/base/manifests/{}", base[r]))
            .send()
            .await
            .unwrap();
        expect(resp, StatusCode::ACCEPTED, "delete the base image").await;
        let sweep = tokio::spawn({
            let (http, leader) = (http.clone(), leader.clone());
            async move { collect(&http, &leader).await }
        });
        // Into the sweep's pause: repositories listed, content not yet deleted.
        tokio::time::sleep(Duration::from_millis(700)).await;
        let repo = format!("team/app-{r}");
        // A mount and a deduplicated commit of old content, at once.
        let (mounted, _) = tokio::join!(
            mount_or_upload(&http, follower, &repo, layer),
            push_blob(&http, follower, &repo, config),
        );
        let digest = push_image(&http, follower, &repo, [config, layer]).await;
        let report = sweep.await.unwrap();
        eprintln!("round {r}: mount taken: {mounted}; sweep: {report}");
        pushed.push((repo, digest));
    }

    // Nothing dangles: every tag pulls whole and verified from every replica.
    for (repo, digest) in &pushed {
        for url in &urls {
            assert_eq!(&pull_verified(&http, url, repo, "v1").await, digest);
        }
    }
    let crossed = metric(
        follower,
        "berth_gc_writes_crossed_by_sweep_total{outcome=\"kept\"}",
    )
    .await
        + metric(
            follower,
            "berth_gc_writes_crossed_by_sweep_total{outcome=\"rewritten\"}",
        )
        .await
        + metric(
            follower,
            "berth_gc_writes_crossed_by_sweep_total{outcome=\"refused\"}",
        )
        .await;
    eprintln!("writes a sweep ran across: {crossed}");
    assert!(
        crossed >= ROUNDS as f64,
        "each round's writes landed inside a sweep ({crossed} did)"
    );

    // Garbage still goes: once everything is old, a quiet sweep leaves exactly the
    // blobs and manifests the tags reference.
    tokio::time::sleep(AGE).await;
    collect(&http, leader).await;
    let objects = s3_objects(server, &prefix);
    let mut referenced: BTreeSet<String> = BTreeSet::new();
    for (config, layer) in &images {
        referenced.insert(sha256(config));
        referenced.insert(sha256(layer));
    }
    assert_eq!(
        digests_under(objects.as_ref(), "blob-index").await,
        referenced,
        "index records: exactly the referenced blobs (the junk blob is gone)"
    );
    let manifests: BTreeSet<String> = pushed.iter().map(|(_, d)| d.clone()).collect();
    assert_eq!(
        digests_under(objects.as_ref(), "blobs").await,
        manifests,
        "manifest content: exactly the tagged manifests"
    );
    // Every data object left is one an index record names.
    let named: BTreeSet<String> = {
        let mut named = BTreeSet::new();
        for digest in &referenced {
            let (alg, hex) = digest.split_once(':').unwrap();
            let index = read_json(objects.as_ref(), &format!("blob-index/{alg}/{hex}"))
                .await
                .unwrap();
            named.insert(index["data"].as_str().unwrap().to_string());
        }
        named
    };
    let data: BTreeSet<String> = keys_under(objects.as_ref(), "blob-data")
        .await
        .into_iter()
        .collect();
    assert_eq!(data, named, "data objects: exactly those indexed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_on_minio_deletes_abandoned_and_unreferenced_in_place_data_and_keeps_referenced_blobs() {
    let Some(server) = minio_server::shared() else {
        return;
    };
    let mut flags = gc_flags("0s");
    flags.extend(["--upload-expiry", "2s"].map(String::from));
    let (prefix, mut replicas) = start(server, 1, &flags);
    let url = replicas[0].url();
    let http = reqwest::Client::new();
    let objects = s3_objects(server, &prefix);
    let repo = "team/app";

    // An upload abandoned with a part written (its multipart upload open) and a short
    // chunk staged beside it.
    let session = start_session(&http, &url, repo).await;
    let id = session
        .split('?')
        .next()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let first = content(1, 6 << 20);
    let resp = http
        .patch(format!("{url}{session}"))
        .header("content-type", "application/octet-stream")
        .header("content-range", format!("0-{}", first.len() - 1))
        .body(first.clone())
        .send()
        .await
        .unwrap();
    let resp = expect(resp, StatusCode::ACCEPTED, "a 6 MiB chunk").await;
    let session = resp.headers()["location"].to_str().unwrap().to_string();
    let resp = http
        .patch(format!("{url}{session}"))
        .header("content-type", "application/octet-stream")
        .header(
            "content-range",
            format!("{}-{}", first.len(), first.len() + 999),
        )
        .body(content(2, 1000))
        .send()
        .await
        .unwrap();
    expect(resp, StatusCode::ACCEPTED, "a short chunk").await;
    let state = read_json(objects.as_ref(), &format!("uploads/{id}/state"))
        .await
        .expect("the session's record");
    let upload_id = state["multipart"]["id"]
        .as_str()
        .expect("a multipart upload")
        .to_string();
    let written = keys_under(objects.as_ref(), &format!("blob-data/{id}")).await;
    assert_eq!(written.len(), 1, "the staged chunk: {written:?}");

    // Two images; the second's tag and manifest are deleted, so its layer is garbage.
    let config = content(3, 200);
    let kept_layer = content(4, 6 << 20);
    let dropped_layer = content(5, 70_000);
    for blob in [&config, &kept_layer, &dropped_layer] {
        push_blob(&http, &url, repo, blob).await;
    }
    let kept = manifest(&config, &[&kept_layer]);
    expect(
        put_manifest(&http, &url, repo, "v1", &kept).await,
        StatusCode::CREATED,
        "v1",
    )
    .await;
    let dropped = manifest(&config, &[&dropped_layer]);
    expect(
        put_manifest(&http, &url, repo, "v2", &dropped).await,
        StatusCode::CREATED,
        "v2",
    )
    .await;
    let index_of = |data: &[u8]| {
        let digest = sha256(data);
        let (alg, hex) = digest.split_once(':').unwrap();
        format!("blob-index/{alg}/{hex}")
    };
    let dropped_index = read_json(objects.as_ref(), &index_of(&dropped_layer))
        .await
        .expect("the dropped layer was committed in place");
    let dropped_data = dropped_index["data"].as_str().unwrap().to_string();
    assert!(exists(objects.as_ref(), &dropped_data).await);
    let resp = http
        .delete(format!("{url}/v2/{repo}/manifests/{}", sha256(&dropped)))
        .send()
        .await
        .unwrap();
    expect(resp, StatusCode::ACCEPTED, "delete v2").await;

    // Past the expiry and the grace period: a restart expires the session at once (it
    // checks at start), then a collection runs.
    tokio::time::sleep(AGE).await;
    replicas[0].restart();
    let url = replicas[0].url();
    wait_until(
        "the abandoned session expires",
        Duration::from_secs(30),
        || {
            let objects = objects.clone();
            let id = id.clone();
            async move {
                keys_under(objects.as_ref(), &format!("uploads/{id}"))
                    .await
                    .is_empty()
            }
        },
    )
    .await;
    // The lease of the process before the restart expires first.
    wait_for_leader(std::slice::from_ref(&url)).await;
    let report = collect(&http, &url).await;
    eprintln!("{report}");

    assert_eq!(
        keys_under(objects.as_ref(), &format!("blob-data/{id}")).await,
        Vec::<String>::new(),
        "nothing of the abandoned session is left"
    );
    let multipart = s3_location(server, &prefix)
        .open_multipart()
        .unwrap()
        .unwrap();
    let part = multipart
        .put_part(
            &Path::from(format!("blob-data/{id}/blob")),
            &upload_id,
            5,
            bytes::Bytes::from_static(b"late").into(),
        )
        .await;
    assert!(
        part.is_err(),
        "the abandoned multipart upload was aborted, so it takes no part"
    );

    assert!(
        read_json(objects.as_ref(), &index_of(&dropped_layer))
            .await
            .is_none(),
        "the unreferenced layer's index record is gone"
    );
    assert!(
        !exists(objects.as_ref(), &dropped_data).await,
        "and its data object"
    );
    let kept_index = read_json(objects.as_ref(), &index_of(&kept_layer))
        .await
        .expect("the referenced layer's index record stays");
    assert!(
        exists(objects.as_ref(), kept_index["data"].as_str().unwrap()).await,
        "and its data object"
    );
    assert_eq!(pull_verified(&http, &url, repo, "v1").await, sha256(&kept));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_killed_mid_sweep_delays_pushes_only_until_its_marker_expires_and_the_next_sweep_completes()
 {
    let Some(server) = minio_server::shared() else {
        return;
    };
    let (prefix, mut replicas) = start(server, 3, &gc_flags("8s"));
    let urls: Vec<String> = replicas.iter().map(Berth::url).collect();
    let http = reqwest::Client::new();
    let objects = s3_objects(server, &prefix);
    let leader = wait_for_leader(&urls).await;

    // A kept image, and garbage for the sweeps.
    let (config, layer) = (content(1, 300), content(2, 50_000));
    push_blob(&http, &urls[leader], "team/keep", &config).await;
    push_blob(&http, &urls[leader], "team/keep", &layer).await;
    let kept = manifest(&config, &[&layer]);
    expect(
        put_manifest(&http, &urls[leader], "team/keep", "v1", &kept).await,
        StatusCode::CREATED,
        "kept image",
    )
    .await;
    let garbage = content(3, 4096);
    push_blob(&http, &urls[leader], "team/junk", &garbage).await;
    tokio::time::sleep(AGE).await;

    // The leader starts a sweep (held in its pause) and is killed in it.
    let sweep = tokio::spawn({
        let (http, url) = (http.clone(), urls[leader].clone());
        async move { http.post(format!("{url}/api/gc")).send().await }
    });
    wait_until(
        "the sweep marks the bucket",
        Duration::from_secs(30),
        || {
            let objects = objects.clone();
            async move {
                read_json(objects.as_ref(), "gc/sweep")
                    .await
                    .is_some_and(|m| m["state"] == "sweeping")
            }
        },
    )
    .await;
    let stale = read_json(objects.as_ref(), "gc/sweep").await.unwrap();
    replicas[leader].kill();
    assert!(
        sweep.await.unwrap().is_err(),
        "the killed leader answers nothing"
    );
    let survivors: Vec<String> = (0..3)
        .filter(|&i| i != leader)
        .map(|i| urls[i].clone())
        .collect();

    // Pushes that only link existing content keep working on the survivors: they wait
    // for the stale marker to expire, find what they link still there, and succeed.
    let via = &survivors[0];
    assert!(
        mount_or_upload(&http, via, "team/new", &layer).await,
        "the mount of a kept layer is taken"
    );
    push_blob(&http, via, "team/new", &config).await;
    let digest = push_image(&http, via, "team/new", [&config, &layer]).await;
    assert_eq!(
        metric(
            via,
            "berth_gc_writes_crossed_by_sweep_total{outcome=\"kept\"}"
        )
        .await,
        1.0,
        "the mount waited for the stale marker, then found the layer kept"
    );

    // Another replica leads and its sweep completes, taking the marker over.
    let new_leader = wait_for_leader(&survivors).await;
    let report = collect(&http, &survivors[new_leader]).await;
    eprintln!("{report}");
    let marker = read_json(objects.as_ref(), "gc/sweep").await.unwrap();
    assert_eq!(marker["state"], "done");
    assert_ne!(marker["sweep"], stale["sweep"]);
    assert_eq!(
        metric(
            &survivors[new_leader],
            "berth_gc_sweep_marker_events_total{event=\"takeover\"}"
        )
        .await,
        1.0
    );
    let (alg, hex) = sha256(&garbage)
        .split_once(':')
        .map(|(a, h)| (a.to_string(), h.to_string()))
        .unwrap();
    assert!(
        read_json(objects.as_ref(), &format!("blob-index/{alg}/{hex}"))
            .await
            .is_none(),
        "the next sweep collected the garbage"
    );
    for url in &survivors {
        assert_eq!(
            pull_verified(&http, url, "team/keep", "v1").await,
            sha256(&kept)
        );
        assert_eq!(pull_verified(&http, url, "team/new", "v1").await, digest);
    }
}
