//! One leader among `berth serve` replicas on one bucket, elected with a lease object in
//! it: a push taken by a follower reaches the leader through the bucket's push log, and
//! the leader alone acts on it — its SyncRule copies the tag once, its Trigger fires
//! once. When the leader is killed, another replica takes the lease over and acts on
//! the next push.

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::common::{Berth, sha256};
use crate::minio_server;
use crate::replicas::{private_team_folder, three_replicas_with, wait_ready};

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const LEADING: &str = "berth_replica_leading";
const COPIED: &str = "berth_sync_copies_total{direction=\"Push\",result=\"Succeeded\"}";
const FIRED: &str = "berth_trigger_firings_total{result=\"NoCluster\"}";
const DELIVERED: &str = "berth_replica_pushes_delivered_total";

/// The value of one series of `/metrics` (0 when absent).
pub(crate) async fn metric(url: &str, series: &str) -> f64 {
    let text = reqwest::get(format!("{url}/metrics"))
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

async fn total(urls: &[String], series: &str) -> f64 {
    let mut sum = 0.0;
    for url in urls {
        sum += metric(url, series).await;
    }
    sum
}

/// Polls `check` every 50 ms until it holds; fails after `within`.
pub(crate) async fn wait_until<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The index of the one replica among `urls` that says it leads.
pub(crate) async fn leader_of(urls: &[String]) -> Option<usize> {
    let mut leaders = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        if metric(url, LEADING).await == 1.0 {
            leaders.push(i);
        }
    }
    assert!(leaders.len() <= 1, "two leaders at once: {leaders:?}");
    leaders.first().copied()
}

/// Pushes a small image as alice to `registry` as `team/app:<tag>`.
async fn push(http: &reqwest::Client, registry: &str, tag: &str) -> String {
    let config = format!("{{\"tag\":\"{tag}\"}}").into_bytes();
    let layer = format!("layer of {tag}").repeat(100).into_bytes();
    for blob in [&config, &layer] {
        let resp = http
            .post(format!(
                "{registry}/v2/team/app/blobs/uploads/?digest={}",
                sha256(blob)
            ))
            .basic_auth("alice", Some("alice-password"))
            .body(blob.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
    }
    let body = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(&layer), "size": layer.len()}],
    }))
    .unwrap();
    let resp = http
        .put(format!("{registry}/v2/team/app/manifests/{tag}"))
        .basic_auth("alice", Some("alice-password"))
        .header("content-type", MANIFEST_TYPE)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    sha256(&body)
}

/// The digest `remote` serves for `team/app:<tag>`, if any.
async fn remote_digest(http: &reqwest::Client, remote: &str, tag: &str) -> Option<String> {
    let resp = http
        .head(format!("{remote}/v2/team/app/manifests/{tag}"))
        .header("accept", MANIFEST_TYPE)
        .send()
        .await
        .unwrap();
    (resp.status() == StatusCode::OK).then(|| {
        resp.headers()["docker-content-digest"]
            .to_str()
            .unwrap()
            .to_string()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_push_to_a_follower_is_acted_on_once_by_the_leader_and_a_new_leader_takes_over_a_killed_one()
 {
    let Some(server) = minio_server::shared() else {
        return;
    };
    // The SyncRule's remote: another registry, on a local folder, open to all.
    let remote = Berth::start();
    let rules = format!(
        "apiVersion: berth.dev/v1alpha1\nkind: SyncRule\nmetadata: {{name: to-remote}}\n\
         spec:\n  direction: Push\n  namespace: team\n  repositories: [\"app\"]\n  remote: {{url: \"{}\", namespace: team}}\n  onPush: true\n\
         ---\n\
         apiVersion: berth.dev/v1alpha1\nkind: Trigger\nmetadata: {{name: web}}\n\
         spec:\n  repository: team/app\n  tags: {{mode: List, names: [v1, v2]}}\n  target: {{kind: Deployment, name: web}}\n",
        remote.url()
    );
    let folder = private_team_folder(&rules);
    let folder_arg = folder.path().to_str().unwrap();
    let mut replicas = three_replicas_with(
        server,
        &[
            "--config-dir",
            folder_arg,
            "--leader-lease-duration",
            "3s",
            "--push-log-poll",
            "200ms",
        ],
    );
    for r in &replicas {
        wait_ready(&r.url()).await;
    }
    let urls: Vec<String> = replicas.iter().map(Berth::url).collect();
    let http = reqwest::Client::new();

    let leader = leader_of(&urls)
        .await
        .expect("one replica leads from the start");
    let follower = (leader + 1) % 3;
    let pushed = Instant::now();
    let digest = push(&http, &urls[follower], "v1").await;
    wait_until(
        "the leader copies v1 to the remote",
        Duration::from_secs(30),
        || async {
            remote_digest(&http, &remote.url(), "v1").await.as_deref() == Some(digest.as_str())
        },
    )
    .await;
    eprintln!(
        "push to a follower → tag on the SyncRule's remote: {:?}",
        pushed.elapsed()
    );
    wait_until(
        "the leader's Trigger fires for v1",
        Duration::from_secs(30),
        || async { metric(&urls[leader], FIRED).await == 1.0 },
    )
    .await;
    eprintln!(
        "push to a follower → the leader's Trigger fired: {:?}",
        pushed.elapsed()
    );
    assert_eq!(
        metric(&urls[leader], DELIVERED).await,
        1.0,
        "heard from the push log"
    );
    assert_eq!(total(&urls, FIRED).await, 1.0, "only the leader fires");
    assert_eq!(total(&urls, COPIED).await, 1.0, "only the leader copies");
    assert_eq!(metric(&urls[leader], COPIED).await, 1.0);

    // The leader dies without a word; after the lease's duration another takes over.
    replicas[leader].kill();
    let survivors: Vec<String> = (0..3)
        .filter(|&i| i != leader)
        .map(|i| urls[i].clone())
        .collect();
    let killed = Instant::now();
    wait_until(
        "another replica takes the lease",
        Duration::from_secs(30),
        || async { leader_of(&survivors).await.is_some() },
    )
    .await;
    eprintln!("leader killed → a new leader: {:?}", killed.elapsed());
    let new_leader = leader_of(&survivors).await.unwrap();
    let other = 1 - new_leader;
    let (fired_before, copied_before) = (
        total(&survivors, FIRED).await,
        total(&survivors, COPIED).await,
    );
    assert_eq!(fired_before, 0.0, "followers did not fire for v1");
    assert_eq!(copied_before, 0.0, "followers did not copy v1");

    let digest = push(&http, &survivors[other], "v2").await;
    wait_until(
        "the new leader copies v2",
        Duration::from_secs(30),
        || async {
            remote_digest(&http, &remote.url(), "v2").await.as_deref() == Some(digest.as_str())
        },
    )
    .await;
    wait_until(
        "the new leader's Trigger fires for v2",
        Duration::from_secs(30),
        || async { metric(&survivors[new_leader], FIRED).await == 1.0 },
    )
    .await;
    assert_eq!(
        total(&survivors, FIRED).await,
        1.0,
        "fired once, by the new leader"
    );
    assert_eq!(
        total(&survivors, COPIED).await,
        1.0,
        "copied once, by the new leader"
    );
    assert_eq!(metric(&survivors[new_leader], COPIED).await, 1.0);
    assert!(metric(&survivors[new_leader], DELIVERED).await >= 1.0);
}
