//! SyncRules in a cluster: credentials from a `kubernetes.io/dockerconfigjson` Secret in
//! berth's namespace, replication on push, a manual run with one `kubectl annotate`, and
//! the records and conditions in status.

use std::time::{Duration, Instant};

use base64::Engine as _;
use kube::api::{Api, DynamicObject};
use serde_json::{Value, json};

use crate::cluster::{TEST_LABEL, TestCluster};
use crate::common::Berth;
use crate::operator::Operator;
use crate::reconcile::{push_image, wait_ready};
use crate::resources::{berth, berth_resource};

/// A berth with a user `replicator` who manages namespace `mirror` (token flow on).
pub fn remote_with_user() -> (Berth, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("c.yaml"),
        "apiVersion: berth.dev/v1alpha1\nkind: Namespace\nmetadata: {name: mirror}\nspec:\n  visibility: private\n  members: [{user: replicator, permission: manage}]\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata:\n  name: u\n  labels: {berth.dev/user: \"true\"}\nstringData: {username: replicator, password: rep-pw}\n",
    )
    .unwrap();
    let berth = Berth::start_with(&["--config-dir", dir.path().to_str().unwrap()], &[]);
    (berth, dir)
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

async fn remote_digest(url: &str, repo: &str, tag: &str) -> Option<String> {
    let r = reqwest::Client::new()
        .get(format!("{url}/v2/{repo}/manifests/{tag}"))
        .header("authorization", basic("replicator", "rep-pw"))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .ok()?;
    (r.status() == 200).then(|| {
        r.headers()["docker-content-digest"]
            .to_str()
            .unwrap()
            .to_string()
    })
}

async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn rule_status(cluster: &TestCluster, name: &str) -> Value {
    let (resource, _) = berth_resource("SyncRule");
    let api: Api<DynamicObject> = Api::all_with(cluster.client(), &resource);
    api.get(name).await.unwrap().data["status"].clone()
}

#[tokio::test]
async fn a_sync_rule_with_a_dockerconfigjson_secret_replicates_pushes_and_runs_on_annotate() {
    let Some(cluster) = TestCluster::start("sync-k8s").await else {
        return;
    };
    let (remote, _remote_config) = remote_with_user();
    let selector = format!("{TEST_LABEL}={}", cluster.id());
    let operator = Operator::start(&cluster, &["--selector", &selector]);
    let ns = cluster.unique("team");
    cluster
        .create(&berth("Namespace", &ns, json!({})))
        .await
        .unwrap();
    wait_ready(&cluster, "Namespace", &ns, None).await;

    // `kubectl create secret docker-registry` makes exactly this.
    let auth = base64::engine::general_purpose::STANDARD.encode("replicator:rep-pw");
    let config = json!({"auths": {remote.addr.clone(): {"username": "replicator", "password": "rep-pw", "auth": auth}}});
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "remote-creds", "namespace": cluster.namespace()},
        "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": config.to_string()},
    });
    cluster
        .kubectl_stdin(&["apply", "-f", "-"], &secret.to_string())
        .ok();
    let name = cluster.unique("to-mirror");
    cluster
        .create(&berth(
            "SyncRule",
            &name,
            json!({
                "direction": "Push",
                "namespace": ns,
                "remote": {"url": remote.url(), "namespace": "mirror", "credentialsSecret": {"name": "remote-creds"}},
            }),
        ))
        .await
        .unwrap();
    let ready = wait_ready(&cluster, "SyncRule", &name, None).await;
    assert_eq!(ready.data["status"]["conditions"][0]["reason"], "Synced");

    // A push is replicated and recorded.
    let digest = push_image(&operator.url(), &format!("{ns}/app"), "v1", "k8s-sync")
        .await
        .unwrap();
    wait_until("the push at the remote", || async {
        remote_digest(&remote.url(), "mirror/app", "v1")
            .await
            .as_deref()
            == Some(digest.as_str())
    })
    .await;
    wait_until("the copy recorded in status", || async {
        let status = rule_status(&cluster, &name).await;
        status["runs"][0]["result"] == "Succeeded"
            && status["runs"][0]["digest"] == digest.as_str()
            && status["runs"][0]["trigger"] == "Automatic"
            && status["runs"][0]["reference"] == format!("{ns}/app:v1").as_str()
            && status["lastSuccess"].is_string()
    })
    .await;

    // Deleted at the remote; one annotation puts it back.
    let r = reqwest::Client::new()
        .delete(format!("{}/v2/mirror/app/manifests/{digest}", remote.url()))
        .header("authorization", basic("replicator", "rep-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(remote_digest(&remote.url(), "mirror/app", "v1").await, None);
    cluster
        .kubectl(&["annotate", "syncrule", &name, "berth.dev/sync-now=first"])
        .ok();
    wait_until("the manual run copied it again", || async {
        remote_digest(&remote.url(), "mirror/app", "v1")
            .await
            .as_deref()
            == Some(digest.as_str())
    })
    .await;
    wait_until("the manual run recorded", || async {
        let status = rule_status(&cluster, &name).await;
        status["runs"][0]["trigger"] == "Manual" && status["lastSyncNow"] == "first"
    })
    .await;
    // Each copy is also a Kubernetes Event on the rule.
    wait_until("a Copied Event", || async {
        let field = format!("involvedObject.name={name}");
        let events = cluster
            .kubectl(&["get", "events", "-A", "--field-selector", &field])
            .ok();
        events.contains("Copied") && events.contains(&format!("{ns}/app:v1"))
    })
    .await;
    let printed = cluster.kubectl(&["get", "syncrule", &name]).ok();
    for column in ["DIRECTION", "REMOTE", "LAST RESULT", "READY", "REASON"] {
        assert!(printed.contains(column), "{printed}");
    }
}

#[tokio::test]
async fn an_unreachable_remote_or_a_missing_secret_is_a_precise_condition() {
    let Some(cluster) = TestCluster::start("sync-k8s-down").await else {
        return;
    };
    let selector = format!("{TEST_LABEL}={}", cluster.id());
    let _operator = Operator::start(&cluster, &["--selector", &selector]);
    let ns = cluster.unique("team");
    cluster
        .create(&berth("Namespace", &ns, json!({})))
        .await
        .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = cluster.unique("down");
    let no_secret = cluster.unique("no-secret");
    for (name, remote) in [
        (&down, json!({"url": format!("http://127.0.0.1:{port}")})),
        (
            &no_secret,
            json!({"url": "http://127.0.0.1:1", "credentialsSecret": {"name": "nope"}}),
        ),
    ] {
        cluster
            .create(&berth(
                "SyncRule",
                name,
                json!({"direction": "Push", "namespace": ns, "remote": remote}),
            ))
            .await
            .unwrap();
    }
    let reason = |status: &Value| {
        status["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Ready").cloned())
            .map(|c| {
                (
                    c["status"].as_str().unwrap_or("").to_string(),
                    c["reason"].as_str().unwrap_or("").to_string(),
                )
            })
    };
    wait_until("RemoteUnreachable", || async {
        reason(&rule_status(&cluster, &down).await)
            == Some(("False".into(), "RemoteUnreachable".into()))
    })
    .await;
    // A Secret may be applied after the rule (GitOps applies in any order), and the
    // rule is reconciled when it appears: so it waits (Reconciling), it is not stalled.
    wait_until("SecretNotFound, and Reconciling", || async {
        let status = rule_status(&cluster, &no_secret).await;
        let conditions = status["conditions"].as_array().unwrap();
        reason(&status) == Some(("False".into(), "SecretNotFound".into()))
            && conditions
                .iter()
                .any(|c| c["type"] == "Reconciling" && c["status"] == "True")
            && !conditions.iter().any(|c| c["type"] == "Stalled")
    })
    .await;
    // The remote comes up: the rule converges without anyone touching it.
    let _remote = Berth::start_at(&format!("127.0.0.1:{port}"), &[]);
    wait_until("Ready again", || async {
        reason(&rule_status(&cluster, &down).await) == Some(("True".into(), "Synced".into()))
    })
    .await;
}
