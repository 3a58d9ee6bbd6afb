//! Operator replicas sharing one S3 bucket (a real MinIO): a push that lands on the
//! replica without the Lease rolls the workload out once, and reaches the leader
//! through the bucket's push log; only the leader collects garbage, and what was
//! pushed through the other survives it.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use serde_json::json;

use crate::cluster::TestCluster;
use crate::common::require_tool;
use crate::images::skopeo_push;
use crate::minio_server::MinioServer;
use crate::operator::Operator;
use crate::triggers::{
    QUIET, deployment, history, image_of, metric, registry_namespace, trigger, wait_for,
    wait_image, wait_result,
};

const DELIVERED: &str = "berth_replica_pushes_delivered_total";
const PATCHED: &str = "berth_trigger_firings_total{result=\"Patched\"}";

/// `berth operator` twice on one fresh prefix of the shared MinIO bucket, watching this
/// test's resources, with `extra` arguments.
fn two_replicas_on_one_bucket(
    cluster: &TestCluster,
    minio: &MinioServer,
    extra: &[&str],
) -> (Operator, Operator) {
    let storage = format!(
        "s3://{}/operators-{}",
        minio.bucket,
        uuid::Uuid::new_v4().simple()
    );
    let env = minio.aws_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let selector = format!("{}={}", crate::cluster::TEST_LABEL, cluster.id());
    let mut args = vec!["--selector", selector.as_str(), "--storage", &storage];
    args.extend_from_slice(extra);
    (
        Operator::start_with_env(cluster, &args, &env),
        Operator::start_with_env(cluster, &args, &env),
    )
}

/// Which of `a` and `b` holds the `berth-operator` Lease (once one does), then the other.
async fn leader_and_follower<'a>(
    cluster: &TestCluster,
    a: &'a Operator,
    b: &'a Operator,
) -> (&'a Operator, &'a Operator) {
    let leases: Api<Lease> = Api::namespaced(cluster.client(), cluster.namespace());
    let holder = wait_for(
        "a replica to hold the Lease",
        Duration::from_secs(30),
        || {
            let leases = leases.clone();
            async move {
                let lease = leases
                    .get("berth-operator")
                    .await
                    .map_err(|e| e.to_string())?;
                lease
                    .spec
                    .and_then(|s| s.holder_identity)
                    .ok_or_else(|| "no holder yet".to_string())
            }
        },
    )
    .await;
    if holder == a.pod_name { (a, b) } else { (b, a) }
}

#[tokio::test]
async fn a_push_to_the_replica_without_the_lease_rolls_out_once_and_reaches_the_leader_through_the_bucket()
 {
    let Some(cluster) = TestCluster::start("scale-out-push").await else {
        return;
    };
    let Some(skopeo) = require_tool("skopeo") else {
        return;
    };
    let Some(minio) = crate::minio_server::shared() else {
        return;
    };
    let host = "registry.berth.test";
    let (first, second) = two_replicas_on_one_bucket(
        &cluster,
        minio,
        &["--registry-host", host, "--push-log-poll", "200ms"],
    );
    let team = registry_namespace(&cluster).await;
    let repo = format!("{team}/web");
    deployment(
        &cluster,
        "web",
        &format!("{host}/{repo}:v0"),
        json!({"replicas": 1}),
    )
    .await;
    let spec = json!({
        "repository": repo,
        "tags": {"mode": "List", "names": ["v1"]},
        "target": {"name": "web"},
    });
    trigger(&cluster, "web", spec, "Watching").await;
    let (_, generation) = image_of(&cluster, "web").await;

    let (leader, follower) = leader_and_follower(&cluster, &first, &second).await;
    let heard_before = metric(&leader.url(), DELIVERED).await;

    let digest = skopeo_push(&skopeo, &follower.addr, &repo, "v1", "v1");
    wait_image(&cluster, "web", &format!("{host}/{repo}:v1@{digest}")).await;
    let h = wait_result(&cluster, "web", "v1", "Succeeded").await;
    // The leader heard the follower's push from the bucket, and acted on it too: it
    // found the image in place, so the workload was patched once.
    wait_for(
        "the leader hears the follower's push through the push log",
        Duration::from_secs(30),
        || async {
            let heard = metric(&leader.url(), DELIVERED).await;
            (heard > heard_before)
                .then_some(())
                .ok_or(format!("{heard} pushes delivered"))
        },
    )
    .await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        image_of(&cluster, "web").await.1,
        generation + 1,
        "patched once"
    );
    assert_eq!(h.len(), 1, "recorded once: {h:#?}");
    assert_eq!(history(&cluster, "web").await, h, "and nothing since");
    let patched = metric(&first.url(), PATCHED).await + metric(&second.url(), PATCHED).await;
    assert_eq!(patched, 1.0);
    let latency = h[0].latency_ms.expect("a latency is recorded");
    eprintln!("push to the follower → Deployment patched: {latency} ms");
    assert!(
        latency < 1000,
        "patched within a second of the push: {latency} ms"
    );
}

#[tokio::test]
async fn only_the_operator_replica_holding_the_lease_collects_garbage_and_pushes_to_the_other_survive_it()
 {
    let Some(cluster) = TestCluster::start("scale-out-gc").await else {
        return;
    };
    let Some(skopeo) = require_tool("skopeo") else {
        return;
    };
    let Some(minio) = crate::minio_server::shared() else {
        return;
    };
    // Nothing is kept for being recent: what no tag reaches goes at once.
    let (first, second) = two_replicas_on_one_bucket(
        &cluster,
        minio,
        &["--gc-grace", "0s", "--gc-untagged-delay", "0s"],
    );
    let team = registry_namespace(&cluster).await;
    let repo = format!("{team}/app");
    let (leader, follower) = leader_and_follower(&cluster, &first, &second).await;

    // Two images pushed through the follower; the first one's tag is then moved onto
    // the second, so only the first's blobs are garbage.
    skopeo_push(&skopeo, &follower.addr, &repo, "old", "old");
    let kept = skopeo_push(&skopeo, &follower.addr, &repo, "new", "new");
    skopeo_push(&skopeo, &follower.addr, &repo, "old", "new");

    let http = reqwest::Client::new();
    let gc = |url: String| {
        let http = http.clone();
        async move {
            http.post(format!("{url}/api/gc"))
                .header("authorization", crate::operator::admin_basic_auth())
                .send()
                .await
                .unwrap()
        }
    };
    let refused = gc(follower.url()).await;
    assert_eq!(refused.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    let text = refused.text().await.unwrap();
    assert!(text.contains("not the leader"), "{text}");
    let ran = gc(leader.url()).await;
    assert_eq!(ran.status(), reqwest::StatusCode::OK);
    let report: serde_json::Value = ran.json().await.unwrap();
    let deleted = report["run"]["report"]["blobsDeleted"]
        .as_u64()
        .unwrap_or_else(|| panic!("a report: {report}"));
    assert!(
        deleted >= 1,
        "the first image's layer and config go: {report}"
    );

    // Everything still tagged pulls whole from the follower.
    let out = tempfile::tempdir().unwrap();
    for tag in ["old", "new"] {
        crate::common::run(std::process::Command::new(&skopeo).args([
            "copy",
            "--insecure-policy",
            "--src-tls-verify=false",
            "--src-creds",
            &crate::operator::admin_creds(),
            &format!("docker://{}/{repo}:{tag}", follower.addr),
            &format!("oci:{}:{tag}", out.path().display()),
        ]));
    }
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("index.json")).unwrap()).unwrap();
    let digests: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap())
        .collect();
    assert!(
        digests.iter().all(|d| *d == kept),
        "both tags pull the kept image: {digests:?}"
    );
}
