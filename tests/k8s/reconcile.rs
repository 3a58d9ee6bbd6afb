//! `berth operator` against the real control plane: resources become registry state,
//! status tells the truth, deletion policies hold, restarts converge, one leader.

use std::time::{Duration, Instant};

use kube::api::{Api, DeleteParams, DynamicObject};
use serde_json::{Value, json};

use crate::cluster::{TEST_LABEL, TestCluster};
use crate::common::{require_tool, sha256};
use crate::images::skopeo_push;
use crate::operator::{Operator, admin_basic_auth};
use crate::resources::{berth, berth_resource};

/// An operator that manages only this test's resources, so parallel tests do not meet.
fn operator(cluster: &TestCluster) -> Operator {
    let selector = format!("{TEST_LABEL}={}", cluster.id());
    Operator::start(cluster, &["--selector", &selector])
}

async fn get(
    cluster: &TestCluster,
    kind: &str,
    name: &str,
    namespace: Option<&str>,
) -> Option<DynamicObject> {
    let (resource, _) = berth_resource(kind);
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(cluster.client(), ns, &resource),
        None => Api::all_with(cluster.client(), &resource),
    };
    api.get_opt(name).await.expect("get")
}

fn ready_condition(object: &DynamicObject) -> Option<(String, String)> {
    object.data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
        .map(|c| {
            (
                c["status"].as_str().unwrap_or("").into(),
                c["reason"].as_str().unwrap_or("").into(),
            )
        })
}

/// Waits until `check` holds for the object, returning it; panics with the last state.
async fn wait_for(
    cluster: &TestCluster,
    kind: &str,
    name: &str,
    namespace: Option<&str>,
    what: &str,
    check: impl Fn(&DynamicObject) -> bool,
) -> DynamicObject {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let object = get(cluster, kind, name, namespace).await;
        if let Some(o) = &object
            && check(o)
        {
            return o.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{kind}/{name} never became {what}: {object:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(crate) async fn wait_ready(
    cluster: &TestCluster,
    kind: &str,
    name: &str,
    namespace: Option<&str>,
) -> DynamicObject {
    wait_for(cluster, kind, name, namespace, "Ready", |o| {
        ready_condition(o).is_some_and(|(status, _)| status == "True")
            && o.data["status"]["observedGeneration"] == json!(o.metadata.generation)
    })
    .await
}

/// Pushes a one-layer image by tag over HTTP; returns the manifest digest.
pub(crate) async fn push_image(
    url: &str,
    repo: &str,
    tag: &str,
    seed: &str,
) -> Result<String, (u16, String)> {
    let client = reqwest::Client::new();
    let mut digests = Vec::new();
    for data in [b"{}".to_vec(), format!("layer {seed}").into_bytes()] {
        let digest = sha256(&data);
        let r = client
            .post(format!("{url}/v2/{repo}/blobs/uploads/?digest={digest}"))
            .header("authorization", admin_basic_auth())
            .body(data.clone())
            .send()
            .await
            .unwrap();
        if !r.status().is_success() {
            return Err((r.status().as_u16(), r.text().await.unwrap()));
        }
        digests.push((digest, data.len()));
    }
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digests[0].0, "size": digests[0].1},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digests[1].0, "size": digests[1].1}],
    })
    .to_string();
    let r = client
        .put(format!("{url}/v2/{repo}/manifests/{tag}"))
        .header("authorization", admin_basic_auth())
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    if !r.status().is_success() {
        return Err((r.status().as_u16(), r.text().await.unwrap()));
    }
    Ok(sha256(manifest.as_bytes()))
}

async fn tags(url: &str, repo: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .get(format!("{url}/v2/{repo}/tags/list"))
        .header("authorization", admin_basic_auth())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_namespace_applied_with_kubectl_takes_pushes_from_skopeo() {
    let Some(cluster) = TestCluster::start("ns-push").await else {
        return;
    };
    let Some(skopeo) = require_tool("skopeo") else {
        return;
    };
    let operator = operator(&cluster);
    let ns = cluster.unique("team");

    // Before the Namespace exists, a push is refused with a message saying what to do.
    let (status, body) = push_image(&operator.url(), &format!("{ns}/app"), "v0", "early")
        .await
        .unwrap_err();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("DENIED") && body.contains(&ns), "{body}");

    cluster
        .kubectl_apply(
            &berth("Namespace", &ns, json!({"visibility": "public"})),
            &["--server-side"],
        )
        .ok();
    wait_ready(&cluster, "Namespace", &ns, None).await;

    skopeo_push(&skopeo, &operator.addr, &format!("{ns}/app"), "v1", "app");
    assert_eq!(
        tags(&operator.url(), &format!("{ns}/app")).await.1["tags"],
        json!(["v1"])
    );

    // The push shows in the Namespace's status without waiting for a resync.
    let object = wait_for(
        &cluster,
        "Namespace",
        &ns,
        None,
        "counting the pushed tag",
        |o| o.data["status"]["repositories"] == json!(1) && o.data["status"]["tags"] == json!(1),
    )
    .await;
    assert!(object.data["status"]["bytesUsed"].as_i64().unwrap() > 0);
}

#[tokio::test]
async fn deleting_a_repository_removes_its_content_only_with_deletion_policy_delete() {
    let Some(cluster) = TestCluster::start("repo-delete").await else {
        return;
    };
    let operator = operator(&cluster);
    let ns = cluster.unique("shop");
    cluster
        .create(&berth("Namespace", &ns, json!({})))
        .await
        .unwrap();
    for (name, policy) in [("doomed", "Delete"), ("kept", "Retain")] {
        let spec = json!({"namespace": ns, "name": name, "deletionPolicy": policy});
        cluster
            .create(&berth("Repository", &format!("{ns}.{name}"), spec))
            .await
            .unwrap();
    }
    for name in ["doomed", "kept"] {
        let repo = format!("{ns}/{name}");
        push_image(&operator.url(), &repo, "v1", name)
            .await
            .unwrap();
        let object = wait_for(
            &cluster,
            "Repository",
            &format!("{ns}.{name}"),
            None,
            "Ready with its tag",
            |o| {
                ready_condition(o).is_some_and(|(s, _)| s == "True")
                    && o.data["status"]["tags"] == json!(1)
            },
        )
        .await;
        let has_finalizer = object
            .metadata
            .finalizers
            .as_ref()
            .is_some_and(|f| f.iter().any(|f| f == "berth.dev/delete-content"));
        assert_eq!(
            has_finalizer,
            name == "doomed",
            "finalizer only where content must be cleaned up"
        );
    }

    let (resource, _) = berth_resource("Repository");
    let api: Api<DynamicObject> = Api::all_with(cluster.client(), &resource);
    for name in ["doomed", "kept"] {
        api.delete(&format!("{ns}.{name}"), &DeleteParams::default())
            .await
            .unwrap();
    }
    for name in ["doomed", "kept"] {
        let deadline = Instant::now() + Duration::from_secs(30);
        while get(&cluster, "Repository", &format!("{ns}.{name}"), None)
            .await
            .is_some()
        {
            assert!(
                Instant::now() < deadline,
                "Repository {name} was never deleted"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let (_, doomed) = tags(&operator.url(), &format!("{ns}/doomed")).await;
    assert!(
        doomed["tags"].as_array().is_none_or(|t| t.is_empty()),
        "Delete left tags: {doomed}"
    );
    let (status, kept) = tags(&operator.url(), &format!("{ns}/kept")).await;
    assert_eq!(
        (status, kept["tags"].clone()),
        (200, json!(["v1"])),
        "Retain must keep content"
    );
}

#[tokio::test]
async fn a_repository_in_a_missing_namespace_says_so_until_the_namespace_appears() {
    let Some(cluster) = TestCluster::start("repo-orphan").await else {
        return;
    };
    let _operator = operator(&cluster);
    let ns = cluster.unique("later");
    let repo = format!("{ns}.app");
    cluster
        .create(&berth(
            "Repository",
            &repo,
            json!({"namespace": ns, "name": "app"}),
        ))
        .await
        .unwrap();
    wait_for(
        &cluster,
        "Repository",
        &repo,
        None,
        "NamespaceNotFound",
        |o| ready_condition(o) == Some(("False".into(), "NamespaceNotFound".into())),
    )
    .await;
    cluster
        .create(&berth("Namespace", &ns, json!({})))
        .await
        .unwrap();
    wait_ready(&cluster, "Repository", &repo, None).await;
}

#[tokio::test]
async fn applying_the_examples_makes_every_resource_ready() {
    let Some(cluster) = TestCluster::start("examples").await else {
        return;
    };
    let _operator = operator(&cluster);
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
    let mut applied = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let mut object: Value = serde::Deserialize::deserialize(doc).unwrap();
            // Namespaced examples go into this test's namespace; berth's are labelled for its operator.
            if object["metadata"]["namespace"].is_string() {
                object["metadata"]["namespace"] = json!(cluster.namespace());
            }
            if object["apiVersion"]
                .as_str()
                .unwrap()
                .starts_with("berth.dev/")
            {
                object["metadata"]["labels"][TEST_LABEL] = json!(cluster.id());
                applied.push(object.clone());
            }
            cluster
                .kubectl_stdin(&["apply", "--server-side", "-f", "-"], &object.to_string())
                .ok();
        }
    }
    assert_eq!(applied.len(), 7, "every example resource is applied");
    for object in applied {
        let kind = object["kind"].as_str().unwrap();
        let name = object["metadata"]["name"].as_str().unwrap();
        let namespace = object["metadata"]["namespace"].as_str();
        if kind == "SyncRule" {
            // The example's remote (a DR registry) does not exist here: the rule is in
            // effect, and says its remote is unreachable.
            wait_for(&cluster, kind, name, namespace, "trying its remote", |o| {
                ready_condition(o).is_some_and(|(_, reason)| reason == "RemoteUnreachable")
            })
            .await;
            continue;
        }
        wait_ready(&cluster, kind, name, namespace).await;
    }
    let listing = cluster.kubectl(&["get", "berth", "-A"]).ok();
    for name in [
        "library",
        "team-a",
        "team-a.web",
        "team-a-keep-20",
        "team-a-to-dr",
        "web-releases",
    ] {
        assert!(
            listing.contains(name),
            "kubectl get berth -A misses {name}:\n{listing}"
        );
    }
    // Clean up the fixed example names for the next run on this control plane.
    for (kind, name) in [
        ("Namespace", "library"),
        ("Namespace", "team-a"),
        ("Repository", "team-a.web"),
        ("Repository", "team-a.tools.builder"),
        ("AgingRule", "team-a-keep-20"),
        ("SyncRule", "team-a-to-dr"),
    ] {
        let (resource, _) = berth_resource(kind);
        let _ = Api::<DynamicObject>::all_with(cluster.client(), &resource)
            .delete(name, &DeleteParams::default())
            .await;
    }
}

#[tokio::test]
async fn an_operator_killed_mid_reconcile_converges_after_restart() {
    let Some(cluster) = TestCluster::start("restart").await else {
        return;
    };
    let mut operator = operator(&cluster);
    let names: Vec<String> = (0..6).map(|i| cluster.unique(&format!("ns{i}"))).collect();
    for name in &names {
        cluster
            .create(&berth("Namespace", name, json!({})))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    operator.kill();
    for name in &names {
        let spec = json!({"namespace": name, "name": "svc"});
        cluster
            .create(&berth("Repository", &format!("{name}.svc"), spec))
            .await
            .unwrap();
    }
    operator.restart();
    for name in &names {
        wait_ready(&cluster, "Namespace", name, None).await;
        wait_ready(&cluster, "Repository", &format!("{name}.svc"), None).await;
    }
}

/// `berth_reconciles_total` summed over kinds, from an operator's /metrics.
async fn reconciles(operator: &Operator) -> u64 {
    let text = reqwest::get(format!("{}/metrics", operator.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("berth_reconciles_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test]
async fn of_two_replicas_only_the_leader_reconciles_and_the_other_takes_over() {
    let Some(cluster) = TestCluster::start("leader").await else {
        return;
    };
    let selector = format!("{TEST_LABEL}={}", cluster.id());
    let mut first = Operator::start(&cluster, &["--selector", &selector]);
    let second = Operator::start(&cluster, &["--selector", &selector]);
    let ns = cluster.unique("ha");
    cluster
        .create(&berth("Namespace", &ns, json!({})))
        .await
        .unwrap();
    wait_ready(&cluster, "Namespace", &ns, None).await;

    let lease: k8s_openapi::api::coordination::v1::Lease =
        Api::namespaced(cluster.client(), cluster.namespace())
            .get("berth-operator")
            .await
            .unwrap();
    let holder = lease.spec.unwrap().holder_identity.unwrap();
    let (leader_is_first, follower) = if holder == first.pod_name {
        (true, &second)
    } else {
        assert_eq!(holder, second.pod_name);
        (false, &first)
    };
    assert_eq!(
        reconciles(follower).await,
        0,
        "the follower must not reconcile"
    );
    // Both replicas serve the registry.
    for op in [&first, &second] {
        assert_eq!(
            reqwest::Client::new()
                .get(format!("{}/v2/", op.url()))
                .header("authorization", admin_basic_auth())
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }

    // The leader goes away; the other replica takes over and reconciles new resources.
    if leader_is_first {
        first.kill();
    } else {
        drop(second);
    }
    let late = cluster.unique("late");
    cluster
        .create(&berth("Namespace", &late, json!({})))
        .await
        .unwrap();
    let started = Instant::now();
    wait_ready(&cluster, "Namespace", &late, None).await;
    eprintln!(
        "failover reconciled a new Namespace after {:?}",
        started.elapsed()
    );
}
