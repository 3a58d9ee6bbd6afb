//! `kubectl apply --server-side` of a minimal valid resource of each kind: it is
//! accepted, the apiserver fills in the defaults, and those defaults are the Rust types'
//! own (the spec read back through the typed API equals the minimal spec deserialized
//! by serde).

use kube::Resource;
use kube::api::Api;
use kube::core::object::HasSpec;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::cluster::TestCluster;
use crate::resources::berth;

/// Applies `spec` server-side as a `K` named `name`; returns the applied spec after
/// checking it against serde's defaults and against the stored object read through `api`.
async fn apply_minimal<K>(cluster: &TestCluster, api: Api<K>, name: &str, spec: Value) -> Value
where
    K: Resource<DynamicType = ()> + HasSpec + Clone + DeserializeOwned + std::fmt::Debug,
    K::Spec: Serialize + DeserializeOwned,
{
    let object = berth(&K::kind(&()), name, spec.clone());
    let out = cluster
        .kubectl_apply(&object, &["--server-side", "-o", "json"])
        .ok();
    let applied: Value = serde_json::from_str(&out).unwrap();
    let served = &applied["spec"];

    let rust: K::Spec = serde_json::from_value(spec).expect("the Rust type reads the spec");
    let rust = serde_json::to_value(&rust).unwrap();
    assert_eq!(
        served, &rust,
        "apiserver defaults (left) vs serde defaults (right)"
    );

    let stored = api.get(name).await.expect("typed get");
    assert_eq!(&serde_json::to_value(stored.spec()).unwrap(), served);
    served.clone()
}

#[tokio::test]
async fn a_minimal_namespace_is_private_and_creates_repositories_on_push() {
    let Some(cluster) = TestCluster::start("apply-rns").await else {
        return;
    };
    let team = cluster.unique("team");
    let spec = apply_minimal(
        &cluster,
        Api::<berth::api::Namespace>::all(cluster.client()),
        &team,
        json!({}),
    )
    .await;
    assert_eq!(spec["visibility"], "private");
    assert_eq!(spec["autoCreateRepositories"], true);
}

#[tokio::test]
async fn a_minimal_repository_retains_its_content_when_deleted() {
    let Some(cluster) = TestCluster::start("apply-repo").await else {
        return;
    };
    let spec = json!({"namespace": "team-a", "name": "tools/builder"});
    let name = cluster.unique("repo");
    let spec = apply_minimal(
        &cluster,
        Api::<berth::api::Repository>::all(cluster.client()),
        &name,
        spec,
    )
    .await;
    assert_eq!(spec["deletionPolicy"], "Retain");
    assert_eq!(spec.get("visibility"), None, "inherits the namespace's");
}

#[tokio::test]
async fn a_minimal_push_sync_rule_is_enabled_and_replicates_on_push() {
    let Some(cluster) = TestCluster::start("apply-sync").await else {
        return;
    };
    let remote = crate::common::Berth::start();
    let selector = format!("{}={}", crate::cluster::TEST_LABEL, cluster.id());
    let operator = crate::operator::Operator::start(&cluster, &["--selector", &selector]);
    let team = cluster.unique("team");
    cluster
        .create(&berth("Namespace", &team, json!({})))
        .await
        .unwrap();
    crate::reconcile::wait_ready(&cluster, "Namespace", &team, None).await;
    let spec = json!({
        "direction": "Push",
        "namespace": team,
        "remote": {"url": remote.url()},
    });
    let name = cluster.unique("sync");
    let spec = apply_minimal(
        &cluster,
        Api::<berth::api::SyncRule>::all(cluster.client()),
        &name,
        spec,
    )
    .await;
    assert_eq!(spec["enabled"], true);
    assert!(
        spec.get("onPush").is_none(),
        "onPush is left out, meaning true for Push rules"
    );
    assert_eq!(spec["overwrite"], false);
    assert_eq!(spec["syncExisting"], false);
    assert_eq!(spec["remote"]["insecureSkipTlsVerify"], false);

    // Enabled, on push, to the same namespace name at the remote.
    crate::reconcile::wait_ready(&cluster, "SyncRule", &name, None).await;
    let digest =
        crate::reconcile::push_image(&operator.url(), &format!("{team}/app"), "v1", "minimal")
            .await
            .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let r = reqwest::Client::new()
            .get(format!("{}/v2/{team}/app/manifests/v1", remote.url()))
            .header("accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never replicated");
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// A Pull rule cannot replicate on push, so it should not have to say `onPush: false`.
#[tokio::test]
async fn a_minimal_pull_sync_rule_is_accepted() {
    let Some(cluster) = TestCluster::start("apply-sync-pull").await else {
        return;
    };
    let spec = json!({
        "direction": "Pull",
        "namespace": "team-a",
        "remote": {"url": "https://upstream.example.com"},
    });
    let name = cluster.unique("sync");
    apply_minimal(
        &cluster,
        Api::<berth::api::SyncRule>::all(cluster.client()),
        &name,
        spec,
    )
    .await;
}

#[tokio::test]
async fn a_minimal_aging_rule_gets_the_documented_defaults() {
    let Some(cluster) = TestCluster::start("apply-aging").await else {
        return;
    };
    let spec = json!({"namespace": "team-a", "keepCount": 5});
    let name = cluster.unique("aging");
    let spec = apply_minimal(
        &cluster,
        Api::<berth::api::AgingRule>::all(cluster.client()),
        &name,
        spec,
    )
    .await;
    assert_eq!(spec["dryRun"], false);
    assert_eq!(spec.get("schedule"), None, "daily at 03:00");
}

#[tokio::test]
async fn a_minimal_trigger_is_enabled_fires_on_every_tag_and_pins_the_digest() {
    let Some(cluster) = TestCluster::start("apply-trigger").await else {
        return;
    };
    let spec = json!({"repository": "team-a/web", "target": {"name": "web"}});
    let name = cluster.unique("trigger");
    let spec = apply_minimal(
        &cluster,
        Api::<berth::api::Trigger>::namespaced(cluster.client(), cluster.namespace()),
        &name,
        spec,
    )
    .await;
    assert_eq!(spec["enabled"], true);
    assert_eq!(spec["imageReference"], "Digest");
    assert_eq!(spec["tags"], json!({"mode": "All"}));
    assert_eq!(spec["target"]["kind"], "Deployment");
    assert_eq!(spec["historyLimit"], 10);
    assert_eq!(spec["rollback"], false);
}
