//! Triggers against the real control plane: a push rolls a workload out, the rollout
//! is followed and recorded, failures are recorded (and rolled back when asked), pushes
//! that should change nothing change nothing, a push berth did not see is caught up,
//! two replicas patch once, and standalone `berth serve` reaches a cluster through a
//! kubeconfig (or says it has none).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use berth::api::{Trigger, TriggerFiring};

use crate::cluster::{TEST_LABEL, TestCluster};
use crate::common::{Berth, require_tool};
use crate::images::skopeo_push;
use crate::operator::Operator;
use crate::resources::berth;

/// How long a "nothing happens" check waits: far beyond the push-to-patch time (well
/// under a second) and the rollout of a kwok Deployment (a few seconds).
pub(crate) const QUIET: Duration = Duration::from_secs(4);

/// An operator that manages only this test's resources.
pub(crate) fn operator(cluster: &TestCluster, extra: &[&str]) -> Operator {
    let selector = format!("{TEST_LABEL}={}", cluster.id());
    let mut args = vec!["--selector", selector.as_str()];
    args.extend_from_slice(extra);
    Operator::start(cluster, &args)
}

/// Waits until `check` returns `Some`, polling; panics with `what` and the last value.
pub(crate) async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if Instant::now() > deadline => {
                panic!("{what} did not happen within {timeout:?}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A berth Namespace for pushes, Ready.
pub(crate) async fn registry_namespace(cluster: &TestCluster) -> String {
    let name = cluster.unique("team");
    cluster
        .create(&berth("Namespace", &name, json!({})))
        .await
        .unwrap();
    let api = Api::<berth::api::Namespace>::all(cluster.client());
    wait_for(
        "the berth Namespace to be Ready",
        Duration::from_secs(60),
        || {
            let api = api.clone();
            let name = name.clone();
            async move {
                let ns = api.get(&name).await.map_err(|e| e.to_string())?;
                let ready = ns
                    .status
                    .as_ref()
                    .is_some_and(|s| berth::api::conditions::is_ready(&s.conditions));
                ready
                    .then_some(())
                    .ok_or_else(|| format!("{:?}", ns.status))
            }
        },
    )
    .await;
    name
}

/// A workload of `kind` named `name` with one container `app` running `image`.
fn workload(kind: &str, name: &str, image: &str, extra_spec: Value) -> Value {
    let mut spec = json!({
        "selector": {"matchLabels": {"app": name}},
        "template": {
            "metadata": {"labels": {"app": name}},
            "spec": {"containers": [{"name": "app", "image": image}]},
        },
    });
    for (k, v) in extra_spec.as_object().unwrap() {
        spec[k] = v.clone();
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
    })
}

async fn create<K>(cluster: &TestCluster, object: Value) -> K
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let object: K = serde_json::from_value(object).unwrap();
    Api::<K>::namespaced(cluster.client(), cluster.namespace())
        .create(&PostParams::default(), &object)
        .await
        .unwrap()
}

pub(crate) async fn deployment(
    cluster: &TestCluster,
    name: &str,
    image: &str,
    extra: Value,
) -> Deployment {
    create(cluster, workload("Deployment", name, image, extra)).await
}

fn deployments(cluster: &TestCluster) -> Api<Deployment> {
    Api::namespaced(cluster.client(), cluster.namespace())
}

pub(crate) fn triggers(cluster: &TestCluster) -> Api<Trigger> {
    Api::namespaced(cluster.client(), cluster.namespace())
}

/// The image of the first container of a Pod template.
fn template_image(template: &k8s_openapi::api::core::v1::PodTemplateSpec) -> String {
    template.spec.as_ref().unwrap().containers[0]
        .image
        .clone()
        .unwrap()
}

pub(crate) async fn image_of(cluster: &TestCluster, name: &str) -> (String, i64) {
    let d = deployments(cluster).get(name).await.unwrap();
    (
        template_image(&d.spec.unwrap().template),
        d.metadata.generation.unwrap(),
    )
}

/// Creates a Trigger (labelled for this test's operator) and waits until its Ready
/// condition has the given reason.
pub(crate) async fn trigger(
    cluster: &TestCluster,
    name: &str,
    spec: Value,
    reason: &str,
) -> Trigger {
    cluster.create(&berth("Trigger", name, spec)).await.unwrap();
    wait_condition(cluster, name, reason).await
}

pub(crate) async fn wait_condition(cluster: &TestCluster, name: &str, reason: &str) -> Trigger {
    let api = triggers(cluster);
    wait_for(
        &format!("Trigger {name} Ready with reason {reason}"),
        Duration::from_secs(60),
        || {
            let api = api.clone();
            async move {
                let t = api.get(name).await.map_err(|e| e.to_string())?;
                let status = t.status.clone().unwrap_or_default();
                let current = status
                    .conditions
                    .iter()
                    .find(|c| c.type_ == "Ready")
                    .map(|c| c.reason.clone());
                let observed = status.observed_generation == t.metadata.generation;
                (current.as_deref() == Some(reason) && observed)
                    .then_some(t)
                    .ok_or_else(|| format!("{:?}", status.conditions))
            }
        },
    )
    .await
}

pub(crate) async fn history(cluster: &TestCluster, name: &str) -> Vec<TriggerFiring> {
    let t = triggers(cluster).get(name).await.unwrap();
    t.status.map(|s| s.history).unwrap_or_default()
}

/// Waits until the newest firing of the trigger is for `tag` and has `result`;
/// returns the history.
pub(crate) async fn wait_result(
    cluster: &TestCluster,
    name: &str,
    tag: &str,
    result: &str,
) -> Vec<TriggerFiring> {
    let timeout = Duration::from_secs(90);
    wait_for(
        &format!("a {result} firing of Trigger {name} for {tag}"),
        timeout,
        || async move {
            let h = history(cluster, name).await;
            match h.first() {
                Some(f) if f.tag == tag && f.result == result => Ok(h),
                _ => Err(format!("{h:#?}")),
            }
        },
    )
    .await
}

pub(crate) async fn wait_image(cluster: &TestCluster, name: &str, image: &str) -> i64 {
    wait_for(
        &format!("Deployment {name} running {image}"),
        Duration::from_secs(30),
        || async move {
            let (now, generation) = image_of(cluster, name).await;
            (now == image).then_some(generation).ok_or(now)
        },
    )
    .await
}

pub(crate) async fn metric(url: &str, prefix: &str) -> f64 {
    let text = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_pushed_tag_rolls_out_the_deployment_pinned_by_digest_and_is_recorded() {
    let Some(cluster) = TestCluster::start("trigger-push").await else {
        return;
    };
    let Some(skopeo) = require_tool("skopeo") else {
        return;
    };
    let operator = operator(&cluster, &[]);
    let team = registry_namespace(&cluster).await;
    let repo = format!("{team}/web");
    // The image names this registry by its listen address: the default --registry-host.
    let old_image = format!("{}/{repo}:v0", operator.addr);
    deployment(&cluster, "web", &old_image, json!({"replicas": 2})).await;
    let ready = trigger(
        &cluster,
        "web",
        json!({"repository": repo, "target": {"name": "web"}}),
        "Watching",
    )
    .await;
    let message = &ready.status.unwrap().conditions[0].message;
    assert!(message.contains("every container using it"), "{message}");

    let digest = skopeo_push(&skopeo, &operator.addr, &repo, "v1", "v1");
    let pinned = format!("{}/{repo}:v1@{digest}", operator.addr);
    let generation = wait_image(&cluster, "web", &pinned).await;

    let h = wait_result(&cluster, "web", "v1", "Succeeded").await;
    assert_eq!(h.len(), 1, "{h:#?}");
    let firing = &h[0];
    assert_eq!(
        (firing.tag.as_str(), firing.digest.as_str()),
        ("v1", digest.as_str())
    );
    assert_eq!(firing.revision, Some(generation));
    assert_eq!(firing.previous_images[0].image, old_image);
    let latency = firing.latency_ms.expect("latency recorded");
    assert!(
        (0..5_000).contains(&latency),
        "push to patch took {latency} ms"
    );
    assert!(firing.patched_at.as_ref().unwrap().0 >= firing.pushed_at.0);
    assert!(firing.finished_at.as_ref().unwrap().0 >= firing.patched_at.as_ref().unwrap().0);

    // The rollout really completed, and berth owns the image field it set.
    let d = deployments(&cluster).get("web").await.unwrap();
    let status = d.status.unwrap();
    assert_eq!(
        (status.updated_replicas, status.available_replicas),
        (Some(2), Some(2))
    );
    let managers: Vec<String> = d
        .metadata
        .managed_fields
        .unwrap()
        .iter()
        .filter(|m| {
            let containers =
                &m.fields_v1.as_ref().unwrap().0["f:spec"]["f:template"]["f:spec"]["f:containers"];
            containers["k:{\"name\":\"app\"}"].get("f:image").is_some()
        })
        .filter_map(|m| m.manager.clone())
        .collect();
    assert_eq!(managers, ["berth"], "berth took the image field over");

    assert_eq!(
        metric(
            &operator.url(),
            "berth_trigger_firings_total{result=\"Patched\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(&operator.url(), "berth_trigger_patch_latency_seconds_count").await,
        1.0
    );
}

#[tokio::test]
async fn a_tag_the_regex_does_not_match_changes_nothing() {
    let Some(cluster) = TestCluster::start("trigger-regex").await else {
        return;
    };
    let Some(skopeo) = require_tool("skopeo") else {
        return;
    };
    let operator = operator(&cluster, &[]);
    let team = registry_namespace(&cluster).await;
    let repo = format!("{team}/web");
    let old_image = format!("{}/{repo}:v0.0.0", operator.addr);
    deployment(&cluster, "web", &old_image, json!({"replicas": 1})).await;
    let spec = json!({
        "repository": repo,
        "tags": {"mode": "Regex", "regex": r"v[0-9]+\.[0-9]+\.[0-9]+"},
        "target": {"name": "web", "container": "app"},
    });
    trigger(&cluster, "releases", spec, "Watching").await;
    let (_, generation) = image_of(&cluster, "web").await;

    // Not whole-tag matches: a development tag, and a release candidate.
    skopeo_push(&skopeo, &operator.addr, &repo, "dev-1234", "dev");
    skopeo_push(&skopeo, &operator.addr, &repo, "v1.0.0-rc1", "rc");
    tokio::time::sleep(QUIET).await;
    assert_eq!(image_of(&cluster, "web").await, (old_image, generation));
    assert_eq!(history(&cluster, "releases").await, vec![]);

    // The same trigger is alive: a release fires it, and only the release is recorded.
    let digest = skopeo_push(&skopeo, &operator.addr, &repo, "v1.0.0", "release");
    wait_image(
        &cluster,
        "web",
        &format!("{}/{repo}:v1.0.0@{digest}", operator.addr),
    )
    .await;
    let h = wait_result(&cluster, "releases", "v1.0.0", "Succeeded").await;
    let tags: Vec<&str> = h.iter().map(|f| f.tag.as_str()).collect();
    assert_eq!(tags, ["v1.0.0"]);
}

#[tokio::test]
async fn a_disabled_trigger_changes_nothing_and_once_enabled_catches_up_with_the_newest_tag() {
    let Some(cluster) = TestCluster::start("trigger-disabled").await else {
        return;
    };
    let Some(skopeo) = require_tool("skopeo") else {
        return;
    };
    let operator = operator(&cluster, &[]);
    let team = registry_namespace(&cluster).await;
    let repo = format!("{team}/web");
    let old_image = format!("{}/{repo}:v0", operator.addr);
    deployment(&cluster, "web", &old_image, json!({"replicas": 1})).await;
    let spec = json!({"repository": repo, "target": {"name": "web"}, "enabled": false});
    let disabled = trigger(&cluster, "web", spec, "Disabled").await;
    assert!(!berth::api::conditions::is_ready(
        &disabled.status.unwrap().conditions
    ));
    let (_, generation) = image_of(&cluster, "web").await;

    skopeo_push(&skopeo, &operator.addr, &repo, "v1", "v1");
    let newest = skopeo_push(&skopeo, &operator.addr, &repo, "v2", "v2");
    tokio::time::sleep(QUIET).await;
    assert_eq!(image_of(&cluster, "web").await, (old_image, generation));
    assert_eq!(history(&cluster, "web").await, vec![]);

    // Enabled, it applies the most recently pushed tag (not every tag it missed).
    triggers(&cluster)
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"enabled": true}})),
        )
        .await
        .unwrap();
    wait_image(
        &cluster,
        "web",
        &format!("{}/{repo}:v2@{newest}", operator.addr),
    )
    .await;
    let h = wait_result(&cluster, "web", "v2", "Succeeded").await;
    assert_eq!(h.len(), 1, "{h:#?}");
    assert_eq!(h[0].tag, "v2");
    assert!(
        h[0].message.as_deref().unwrap().contains("caught up"),
        "{h:#?}"
    );
    wait_condition(&cluster, "web", "Watching").await;
}

/// A Deployment whose new Pods never become ready (kwok's `never-ready` stage matches
/// the image name) and that gives up after 5 s.
async fn stuck_rollout(
    cluster: &TestCluster,
    rollback: bool,
) -> (Operator, String, String, Vec<TriggerFiring>) {
    let skopeo = require_tool("skopeo").expect("checked by the caller");
    let operator = operator(cluster, &[]);
    let team = registry_namespace(cluster).await;
    let repo = format!("{team}/web");
    let old_image = format!("{}/{repo}:v1", operator.addr);
    let extra = json!({"replicas": 1, "progressDeadlineSeconds": 5});
    deployment(cluster, "web", &old_image, extra).await;
    wait_for(
        "the first rollout",
        Duration::from_secs(60),
        || async move {
            let d = deployments(cluster).get("web").await.unwrap();
            let available = d.status.and_then(|s| s.available_replicas);
            (available == Some(1))
                .then_some(())
                .ok_or(format!("{available:?}"))
        },
    )
    .await;
    let spec = json!({"repository": repo, "target": {"name": "web"}, "rollback": rollback});
    trigger(cluster, "web", spec, "Watching").await;

    let digest = skopeo_push(&skopeo, &operator.addr, &repo, "v2-never-ready", "broken");
    let broken = format!("{}/{repo}:v2-never-ready@{digest}", operator.addr);
    wait_image(cluster, "web", &broken).await;
    let result = if rollback { "RolledBack" } else { "Failed" };
    let h = wait_result(cluster, "web", "v2-never-ready", result).await;
    (operator, old_image, broken, h)
}

#[tokio::test]
async fn a_rollout_that_never_becomes_available_is_recorded_as_failed() {
    let Some(cluster) = TestCluster::start("trigger-fails").await else {
        return;
    };
    if require_tool("skopeo").is_none() {
        return;
    }
    let (operator, _, broken, h) = stuck_rollout(&cluster, false).await;
    let message = h[0].message.as_deref().unwrap();
    assert!(message.contains("ProgressDeadlineExceeded"), "{message}");
    assert!(h[0].finished_at.is_some());
    // Without rollback the failed image stays, and berth does not touch it again.
    tokio::time::sleep(QUIET).await;
    assert_eq!(image_of(&cluster, "web").await.0, broken);
    assert_eq!(history(&cluster, "web").await.len(), 1);
    assert_eq!(
        metric(
            &operator.url(),
            "berth_trigger_rollouts_total{result=\"Failed\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn with_rollback_a_failed_rollout_restores_the_previous_image() {
    let Some(cluster) = TestCluster::start("trigger-rollback").await else {
        return;
    };
    if require_tool("skopeo").is_none() {
        return;
    }
    let (_operator, old_image, _, h) = stuck_rollout(&cluster, true).await;
    let message = h[0].message.as_deref().unwrap();
    assert!(
        message.contains("ProgressDeadlineExceeded") && message.contains(&old_image),
        "{message}"
    );
    assert_eq!(image_of(&cluster, "web").await.0, old_image);
    // The old Pods come back, and the catch-up does not re-apply the failed push.
    wait_for(
        "the rolled back Deployment to be available",
        Duration::from_secs(60),
        || async {
            let d = deployments(&cluster).get("web").await.unwrap();
            let s = d.status.unwrap_or_default();
            let done = s.updated_replicas == Some(1)
                && s.available_replicas == Some(1)
                && s.replicas == Some(1);
            done.then_some(()).ok_or(format!("{s:?}"))
        },
    )
    .await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(image_of(&cluster, "web").await.0, old_image);
    assert_eq!(history(&cluster, "web").await.len(), 1);
}

#[tokio::test]
async fn a_push_made_while_the_operator_was_down_is_caught_up_when_it_starts() {
    let Some(cluster) = TestCluster::start("trigger-catch-up").await else {
        return;
    };
    let Some(skopeo) = require_tool("skopeo") else {
        return;
    };
    let storage = tempfile::tempdir().unwrap();
    let storage_arg = storage.path().to_str().unwrap();
    let host = "registry.berth.test";
    let mut operator = operator(
        &cluster,
        &["--storage", storage_arg, "--registry-host", host],
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
    trigger(
        &cluster,
        "web",
        json!({"repository": repo, "target": {"name": "web"}}),
        "Watching",
    )
    .await;
    let (_, generation) = image_of(&cluster, "web").await;

    // The operator is down; another registry process on the same storage takes the push.
    operator.kill();
    let digest = {
        let other = Berth::start_with(&["--storage", storage_arg], &[]);
        skopeo_push(&skopeo, &other.addr, &repo, "v1", "v1")
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        image_of(&cluster, "web").await.1,
        generation,
        "nobody acted yet"
    );

    operator.restart();
    wait_image(&cluster, "web", &format!("{host}/{repo}:v1@{digest}")).await;
    let h = wait_result(&cluster, "web", "v1", "Succeeded").await;
    assert_eq!(h.len(), 1, "{h:#?}");
    assert!(
        h[0].message.as_deref().unwrap().contains("caught up"),
        "{h:#?}"
    );
}

#[tokio::test]
async fn two_replicas_roll_a_push_out_once_and_a_follower_acts_at_once() {
    let Some(cluster) = TestCluster::start("trigger-replicas").await else {
        return;
    };
    let Some(skopeo) = require_tool("skopeo") else {
        return;
    };
    // Two replicas on shared storage, known to workloads under one host name.
    let storage = tempfile::tempdir().unwrap();
    let storage_arg = storage.path().to_str().unwrap();
    let host = "registry.berth.test";
    let args = ["--storage", storage_arg, "--registry-host", host];
    let first = operator(&cluster, &args);
    let second = operator(&cluster, &args);
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
        "tags": {"mode": "List", "names": ["v1", "v2", "v3"]},
        "target": {"name": "web"},
    });
    trigger(&cluster, "web", spec, "Watching").await;
    let (_, generation) = image_of(&cluster, "web").await;

    // One image, its manifest PUT to both replicas at the same instant (two CI jobs
    // behind a load balancer): both replicas fire for it, one patches. Twice, since
    // whether the two firings overlap is up to the scheduler.
    for (round, tag) in ["v1", "v2"].into_iter().enumerate() {
        let built = format!("build-{tag}");
        let digest = skopeo_push(&skopeo, &first.addr, &repo, &built, tag);
        let manifest = reqwest::Client::new()
            .get(format!("{}/v2/{repo}/manifests/{built}", first.url()))
            .header("authorization", crate::operator::admin_basic_auth())
            .header("accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .await
            .unwrap();
        let media_type = manifest.headers()["content-type"].clone();
        let body = manifest.bytes().await.unwrap();
        let put = |url: String| {
            reqwest::Client::new()
                .put(format!("{url}/v2/{repo}/manifests/{tag}"))
                .header("authorization", crate::operator::admin_basic_auth())
                .header("content-type", media_type.clone())
                .body(body.clone())
                .send()
        };
        let (one, two) = tokio::join!(put(first.url()), put(second.url()));
        let statuses = (
            one.unwrap().status().as_u16(),
            two.unwrap().status().as_u16(),
        );
        assert_eq!(statuses, (201, 201));
        wait_image(&cluster, "web", &format!("{host}/{repo}:{tag}@{digest}")).await;
        let h = wait_result(&cluster, "web", tag, "Succeeded").await;
        tokio::time::sleep(QUIET).await;
        let rounds = round as i64 + 1;
        assert_eq!(
            image_of(&cluster, "web").await.1,
            generation + rounds,
            "patched once per push"
        );
        assert_eq!(h.len() as i64, rounds, "recorded once per push: {h:#?}");
        assert_eq!(history(&cluster, "web").await, h, "and nothing since");
        let replica_sets = Api::<ReplicaSet>::namespaced(cluster.client(), cluster.namespace())
            .list(&ListParams::default().labels("app=web"))
            .await
            .unwrap();
        assert_eq!(
            replica_sets.items.len() as i64,
            rounds + 1,
            "one rollout per push"
        );
        // Both replicas fired each time; one wrote, the other found the image in place.
        let mut outcomes = std::collections::BTreeMap::new();
        for replica in [&first, &second] {
            for result in ["Patched", "AlreadyCurrent"] {
                let name = format!("berth_trigger_firings_total{{result=\"{result}\"}}");
                *outcomes.entry(result).or_insert(0.0) += metric(&replica.url(), &name).await;
            }
        }
        assert_eq!(outcomes["Patched"], rounds as f64, "{outcomes:?}");
        assert!(outcomes["AlreadyCurrent"] >= rounds as f64, "{outcomes:?}");
    }

    // A push to the replica that does not hold the Lease rolls out without the leader.
    let lease: k8s_openapi::api::coordination::v1::Lease =
        Api::namespaced(cluster.client(), cluster.namespace())
            .get("berth-operator")
            .await
            .unwrap();
    let holder = lease.spec.unwrap().holder_identity.unwrap();
    let follower = if holder == first.pod_name {
        &second
    } else {
        &first
    };
    let patched = "berth_trigger_firings_total{result=\"Patched\"}";
    let before = metric(&follower.url(), patched).await;
    let pushed = Instant::now();
    let digest = skopeo_push(&skopeo, &follower.addr, &repo, "v3", "v3");
    wait_image(&cluster, "web", &format!("{host}/{repo}:v3@{digest}")).await;
    let waited = pushed.elapsed();
    // The leader resyncs every 60 s and saw no event: only the follower can be this quick.
    assert!(waited < Duration::from_secs(10), "took {waited:?}");
    assert_eq!(metric(&follower.url(), patched).await, before + 1.0);
    let h = wait_result(&cluster, "web", "v3", "Succeeded").await;
    let tags: Vec<&str> = h.iter().map(|f| f.tag.as_str()).collect();
    assert_eq!(tags, ["v3", "v2", "v1"]);
}

#[tokio::test]
async fn statefulsets_and_daemonsets_are_rolled_out_too() {
    let Some(cluster) = TestCluster::start("trigger-kinds").await else {
        return;
    };
    let Some(skopeo) = require_tool("skopeo") else {
        return;
    };
    let operator = operator(&cluster, &[]);
    let team = registry_namespace(&cluster).await;
    let repo = format!("{team}/agent");
    let old_image = format!("{}/{repo}:v0", operator.addr);
    let sts = workload(
        "StatefulSet",
        "db",
        &old_image,
        json!({"replicas": 2, "serviceName": "db"}),
    );
    let _: StatefulSet = create(&cluster, sts).await;
    let _: DaemonSet = create(
        &cluster,
        workload("DaemonSet", "agent", &old_image, json!({})),
    )
    .await;
    for (name, kind) in [("db", "StatefulSet"), ("agent", "DaemonSet")] {
        let spec =
            json!({"repository": repo, "target": {"kind": kind, "name": name, "container": "app"}});
        trigger(&cluster, name, spec, "Watching").await;
    }

    let digest = skopeo_push(&skopeo, &operator.addr, &repo, "v1", "v1");
    let pinned = format!("{}/{repo}:v1@{digest}", operator.addr);
    for name in ["db", "agent"] {
        let h = wait_result(&cluster, name, "v1", "Succeeded").await;
        assert_eq!(h.len(), 1, "{h:#?}");
    }
    let sts = Api::<StatefulSet>::namespaced(cluster.client(), cluster.namespace())
        .get("db")
        .await
        .unwrap();
    assert_eq!(template_image(&sts.spec.unwrap().template), pinned);
    let status = sts.status.unwrap();
    assert_eq!(status.updated_replicas, Some(2));
    assert_eq!(status.current_revision, status.update_revision);
    let ds = Api::<DaemonSet>::namespaced(cluster.client(), cluster.namespace())
        .get("agent")
        .await
        .unwrap();
    assert_eq!(template_image(&ds.spec.unwrap().template), pinned);
}

/// Waits for `/readyz`: the folder's configuration and users are loaded.
pub(crate) async fn wait_until_ready(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while reqwest::get(format!("{url}/readyz"))
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(
            Instant::now() < deadline,
            "berth at {url} never became ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A config folder with a berth Namespace and a Trigger for `repo` targeting the
/// Deployment `web` in `namespace`.
fn config_folder(team: &str, repo: &str, namespace: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "apiVersion: berth.dev/v1alpha1\nkind: Namespace\nmetadata: {{name: {team}}}\nspec: {{}}\n\
         ---\n\
         apiVersion: berth.dev/v1alpha1\nkind: Trigger\nmetadata: {{name: web-releases, namespace: {namespace}}}\n\
         spec: {{repository: {repo}, target: {{name: web}}}}\n\
         ---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {{name: admin, labels: {{berth.dev/user: \"true\"}}}}\n\
         stringData: {{username: {user}, password: {password}, admin: \"true\"}}\n",
        user = crate::operator::ADMIN_USER,
        password = crate::operator::ADMIN_PASSWORD,
    );
    std::fs::write(dir.path().join("berth.yaml"), yaml).unwrap();
    dir
}

#[tokio::test]
async fn standalone_serve_with_a_kubeconfig_rolls_out_the_clusters_deployment() {
    let Some(cluster) = TestCluster::start("trigger-standalone").await else {
        return;
    };
    let Some(skopeo) = require_tool("skopeo") else {
        return;
    };
    let team = cluster.unique("team");
    let repo = format!("{team}/web");
    let folder = config_folder(&team, &repo, cluster.namespace());
    let host = "registry.berth.test";
    let serve = Berth::start_with(
        &[
            "--config-dir",
            folder.path().to_str().unwrap(),
            "--kubeconfig",
            cluster.kubeconfig_path().to_str().unwrap(),
            "--registry-host",
            host,
        ],
        &[],
    );
    wait_until_ready(&serve.url()).await;
    deployment(
        &cluster,
        "web",
        &format!("{host}/{repo}:v0"),
        json!({"replicas": 1}),
    )
    .await;
    let (_, generation) = image_of(&cluster, "web").await;

    let digest = skopeo_push(&skopeo, &serve.addr, &repo, "v1", "v1");
    let generation_after = wait_image(&cluster, "web", &format!("{host}/{repo}:v1@{digest}")).await;
    assert_eq!(generation_after, generation + 1);
    let url = serve.url();
    wait_for(
        "the standalone rollout to be followed",
        Duration::from_secs(60),
        || {
            let url = url.clone();
            async move {
                let done = metric(&url, "berth_trigger_rollouts_total{result=\"Succeeded\"}").await;
                (done == 1.0).then_some(()).ok_or(done.to_string())
            }
        },
    )
    .await;
    assert_eq!(
        metric(&url, "berth_trigger_firings_total{result=\"Patched\"}").await,
        1.0
    );
}

/// `berth serve` with its stderr in a file, killed when dropped.
struct LoggedServe {
    child: Child,
    addr: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl LoggedServe {
    fn start(args: &[&str]) -> LoggedServe {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("stderr.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut banner = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut banner,
        )
        .unwrap();
        let addr = banner
            .split("http://")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("no address in {banner:?}"))
            .to_string();
        LoggedServe {
            child,
            addr,
            log,
            _dir: dir,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }
}

impl Drop for LoggedServe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn standalone_serve_without_a_kubeconfig_says_its_triggers_have_no_cluster() {
    let Some(skopeo) = require_tool("skopeo") else {
        return;
    };
    let folder = config_folder("team-x", "team-x/web", "shop");
    let serve = LoggedServe::start(&["--config-dir", folder.path().to_str().unwrap()]);
    wait_until_ready(&format!("http://{}", serve.addr)).await;
    let warned_at_load = wait_for("the warning at load", Duration::from_secs(10), || async {
        let log = serve.stderr();
        log.contains("Trigger shop/web-releases has no cluster")
            .then_some(log.clone())
            .ok_or(log)
    })
    .await;
    assert!(warned_at_load.contains("--kubeconfig"), "{warned_at_load}");

    skopeo_push(&skopeo, &serve.addr, "team-x/web", "v1", "v1");
    let url = format!("http://{}", serve.addr);
    wait_for("a NoCluster firing", Duration::from_secs(10), || {
        let url = url.clone();
        async move {
            let n = metric(&url, "berth_trigger_firings_total{result=\"NoCluster\"}").await;
            (n == 1.0).then_some(()).ok_or(n.to_string())
        }
    })
    .await;
    let log = serve.stderr();
    assert!(
        log.contains("push of team-x/web:v1 matches Trigger shop/web-releases"),
        "{log}"
    );
}

/// The web UI's tag page answers "where does this run": the Deployment whose Pods run
/// the pushed digest (kwok's Pods, pinned by digest), and the Trigger that rolled it
/// out, with its history entry.
#[tokio::test]
async fn the_tag_page_lists_the_workloads_running_a_digest_and_the_trigger_that_rolled_it_out() {
    let Some(cluster) = TestCluster::start("ui-runs").await else {
        return;
    };
    let Some(skopeo) = require_tool("skopeo") else {
        return;
    };
    let operator = operator(&cluster, &[]);
    let team = registry_namespace(&cluster).await;
    let repo = format!("{team}/app");
    deployment(
        &cluster,
        "app",
        &format!("{}/{repo}:v0", operator.addr),
        json!({"replicas": 2}),
    )
    .await;
    trigger(
        &cluster,
        "app",
        json!({"repository": repo, "target": {"name": "app"}}),
        "Watching",
    )
    .await;
    // An image of its own: the page lists every workload in the cluster running the
    // digest, and tests running beside this one push images too.
    let digest = skopeo_push(&skopeo, &operator.addr, &repo, "v1", "tag-page-v1");
    wait_result(&cluster, "app", "v1", "Succeeded").await;

    let url = format!("http://{}/api/repositories/{repo}/-/tags/v1", operator.addr);
    let client = reqwest::Client::new();
    let runs = wait_for(
        "the tag page to list both Pods",
        Duration::from_secs(60),
        || {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let page: Value = client
                    .get(&url)
                    .header("authorization", crate::operator::admin_basic_auth())
                    .send()
                    .await
                    .map_err(|e| e.to_string())?
                    .json()
                    .await
                    .map_err(|e| e.to_string())?;
                let runs = page["runs"].clone();
                let pods = runs["workloads"][0]["pods"].as_array().map_or(0, Vec::len);
                (pods == 2)
                    .then_some(runs.clone())
                    .ok_or_else(|| page.to_string())
            }
        },
    )
    .await;
    assert_eq!(runs["workloads"].as_array().unwrap().len(), 1, "{runs}");
    let workload = &runs["workloads"][0];
    assert_eq!(workload["kind"], "Deployment", "{runs}");
    assert_eq!(workload["name"], "app");
    assert_eq!(workload["namespace"], cluster.namespace());
    let rolled = &runs["triggers"][0];
    assert_eq!(rolled["name"], "app", "{runs}");
    assert_eq!(rolled["history"][0]["digest"], digest.as_str());
    assert_eq!(rolled["history"][0]["result"], "Succeeded");
    // An anonymous visitor sees nothing of a private namespace, this page included.
    let anonymous = client.get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), 404);
}
