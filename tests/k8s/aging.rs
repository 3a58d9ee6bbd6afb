//! AgingRules against the real control plane: tags pushed with skopeo, push times set
//! on the tag pointers (their modification time is the push time), Pods that use some
//! tags, and runs started with `kubectl annotate`.

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use berth::api::AgingRule;

use crate::cluster::TestCluster;
use crate::common::{Berth, require_tool, run};
use crate::images::skopeo_push;
use crate::resources::berth;
use crate::triggers::{operator, registry_namespace, wait_for};

/// Sets the push time of `repo:tag` in berth's data directory to `days` days ago.
fn pushed_days_ago(berth: &Berth, repo: &str, tag: &str, days: u64) {
    let file = berth
        .data_dir
        .join("repositories")
        .join(repo.replace('/', "+"))
        .join("tags")
        .join(tag);
    assert!(file.exists(), "no tag pointer at {}", file.display());
    let at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - days * 86_400;
    run(Command::new("touch")
        .args(["-m", "-d", &format!("@{at}")])
        .arg(&file));
}

/// The tags berth lists for `repo`, sorted.
fn tags(berth: &Berth, repo: &str) -> Vec<String> {
    let out = run(Command::new("curl").args([
        "-sf",
        "-u",
        &crate::operator::admin_creds(),
        &format!("{}/v2/{repo}/tags/list", berth.url()),
    ]));
    let body: Value = serde_json::from_str(&out).unwrap();
    let mut tags: Vec<String> = body["tags"]
        .as_array()
        .map(|a| a.iter().map(|t| t.as_str().unwrap().to_string()).collect())
        .unwrap_or_default();
    tags.sort();
    tags
}

/// Annotates the rule to run now and waits for the run's status.
async fn run_now(cluster: &TestCluster, name: &str, value: &str) -> berth::api::AgingRuleStatus {
    cluster
        .kubectl(&[
            "annotate",
            "agingrule",
            name,
            &format!("berth.dev/run-now={value}"),
            "--overwrite",
        ])
        .ok();
    let api = Api::<AgingRule>::all(cluster.client());
    wait_for(
        "the aging run requested by annotation",
        Duration::from_secs(60),
        || {
            let api = api.clone();
            async move {
                let rule = api.get(name).await.map_err(|e| e.to_string())?;
                let status = rule.status.unwrap_or_default();
                (status.last_run_request.as_deref() == Some(value))
                    .then_some(status.clone())
                    .ok_or_else(|| format!("{status:?}"))
            }
        },
    )
    .await
}

fn deleted_tags(status: &berth::api::AgingRuleStatus) -> Vec<String> {
    let mut d: Vec<String> = status.deleted.iter().map(|t| t.tag.clone()).collect();
    d.sort();
    d
}

fn kept_reason<'a>(status: &'a berth::api::AgingRuleStatus, tag: &str) -> Option<&'a str> {
    status
        .kept
        .iter()
        .find(|k| k.tag == tag)
        .map(|k| k.reason.as_str())
}

#[tokio::test]
async fn a_count_rule_keeps_the_newest_and_what_pods_use_immutable_and_excluded_tags_and_frees_the_rest()
 {
    let Some(cluster) = TestCluster::start("aging-count").await else {
        return;
    };
    let Some(skopeo) = require_tool("skopeo") else {
        return;
    };
    // No grace period: the layers of the deleted tags go in the same run.
    let operator = operator(&cluster, &["--gc-grace", "0s"]);
    let team = registry_namespace(&cluster).await;
    let repo = format!("{team}/app");
    cluster
        .create(&berth(
            "Repository",
            &format!("{team}.app"),
            json!({"namespace": team, "name": "app", "immutableTags": ["frozen-*"]}),
        ))
        .await
        .unwrap();
    cluster
        .kubectl(&[
            "wait",
            "--for=condition=Ready",
            &format!("repository.berth.dev/{team}.app"),
            "--timeout=60s",
        ])
        .ok();

    let mut digests = std::collections::HashMap::new();
    for (tag, days) in [
        ("new", 0),
        ("c4", 7),
        ("c3", 8),
        ("c2", 9),
        ("c1", 10),
        ("frozen-1", 20),
        ("latest", 30),
    ] {
        digests.insert(tag, skopeo_push(&skopeo, &operator.addr, &repo, tag, tag));
        pushed_days_ago(&operator, &repo, tag, days);
    }

    // c4 is named by a Pod's spec; c3 runs (by digest) in a Pod whose spec names another image.
    let pods = Api::<Pod>::namespaced(cluster.client(), cluster.namespace());
    let by_tag: Pod = serde_json::from_value(json!({
        "metadata": {"name": "uses-c4"},
        "spec": {"containers": [{"name": "app", "image": format!("{}/{repo}:c4", operator.addr)}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &by_tag).await.unwrap();
    let by_digest: Pod = serde_json::from_value(json!({
        "metadata": {"name": "runs-c3"},
        // Never scheduled: its status is what this test says it is.
        "spec": {"schedulerName": "nobody", "containers": [{"name": "app", "image": "mirror.example.com/app:stable"}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &by_digest)
        .await
        .unwrap();
    let status = json!({"status": {"containerStatuses": [{
        "name": "app", "image": "mirror.example.com/app:stable",
        "imageID": format!("mirror.example.com/app@{}", digests["c3"]),
        "ready": true, "restartCount": 0, "state": {"running": {}},
    }]}});
    pods.patch_status("runs-c3", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();

    let name = cluster.unique("aging");
    cluster
        .create(&berth(
            "AgingRule",
            &name,
            json!({
                "namespace": team,
                "keepCount": 1,
                "tags": {"exclude": ["latest"]},
                "dryRun": true,
            }),
        ))
        .await
        .unwrap();
    cluster
        .kubectl(&[
            "wait",
            "--for=condition=Ready",
            &format!("agingrule/{name}"),
            "--timeout=60s",
        ])
        .ok();

    // A dry run reports and changes nothing.
    let before = tags(&operator, &repo);
    let dry = run_now(&cluster, &name, "1").await;
    assert!(dry.last_run_dry);
    assert_eq!(deleted_tags(&dry), ["c1", "c2"], "{dry:?}");
    assert_eq!(tags(&operator, &repo), before, "a dry run deletes nothing");

    // The real run.
    cluster
        .kubectl(&[
            "patch",
            "agingrule",
            &name,
            "--type=merge",
            "-p",
            r#"{"spec":{"dryRun":false}}"#,
        ])
        .ok();
    let done = run_now(&cluster, &name, "2").await;
    assert_eq!(deleted_tags(&done), ["c1", "c2"], "{done:?}");
    assert_eq!(done.deleted_count, 2);
    assert_eq!(kept_reason(&done, "c4"), Some("InUse"), "{done:?}");
    assert_eq!(kept_reason(&done, "c3"), Some("InUse"), "{done:?}");
    assert_eq!(
        kept_reason(&done, "frozen-1"),
        Some("Immutable"),
        "{done:?}"
    );
    assert_eq!(kept_reason(&done, "latest"), Some("Excluded"), "{done:?}");
    let in_use = done.kept.iter().find(|k| k.tag == "c4").unwrap();
    assert!(in_use.message.contains("uses-c4"), "{in_use:?}");
    assert!(
        done.bytes_freed > 0,
        "the deleted images' blobs were freed: {done:?}"
    );
    assert_eq!(
        tags(&operator, &repo),
        ["c3", "c4", "frozen-1", "latest", "new"]
    );
    let ready = done.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "Succeeded")
    );
    assert!(
        ready.message.contains("deleted 2 tags"),
        "{}",
        ready.message
    );

    // Every kept tag still pulls whole (skopeo verifies every digest).
    for tag in ["c3", "c4", "frozen-1", "latest", "new"] {
        let out = tempfile::tempdir().unwrap();
        run(Command::new(&skopeo).args([
            "copy",
            "--insecure-policy",
            "--src-tls-verify=false",
            "--src-creds",
            &crate::operator::admin_creds(),
            &format!("docker://{}/{repo}:{tag}", operator.addr),
            &format!("oci:{}:image", out.path().display()),
        ]));
    }

    // kubectl shows the last run, what it deleted and freed, and the next run.
    let listing = cluster.kubectl(&["get", "raging", &name]).ok();
    let header: Vec<&str> = listing.lines().next().unwrap().split_whitespace().collect();
    assert!(
        header.contains(&"DELETED") && header.contains(&"FREED"),
        "{listing}"
    );
    let row: Vec<&str> = listing.lines().nth(1).unwrap().split_whitespace().collect();
    assert!(row.contains(&"2"), "{listing}");
    assert!(done.next_run.is_some(), "{done:?}");
}

#[tokio::test]
async fn an_age_rule_deletes_only_included_tags_older_than_its_days() {
    let Some(cluster) = TestCluster::start("aging-days").await else {
        return;
    };
    let Some(skopeo) = require_tool("skopeo") else {
        return;
    };
    let operator = operator(&cluster, &[]);
    let team = registry_namespace(&cluster).await;
    let repo = format!("{team}/svc");
    for (tag, days) in [("pr-1", 40), ("pr-2", 1), ("main", 40)] {
        skopeo_push(&skopeo, &operator.addr, &repo, tag, tag);
        pushed_days_ago(&operator, &repo, tag, days);
    }
    let name = cluster.unique("aging");
    cluster
        .create(&berth(
            "AgingRule",
            &name,
            json!({"namespace": team, "keepDays": 30, "tags": {"include": ["pr-*"]}}),
        ))
        .await
        .unwrap();
    let done = run_now(&cluster, &name, "go").await;
    assert_eq!(deleted_tags(&done), ["pr-1"], "{done:?}");
    assert_eq!(tags(&operator, &repo), ["main", "pr-2"]);
    // Within the default grace period nothing is freed yet, and that is reported.
    assert_eq!(done.bytes_freed, 0);
}

#[tokio::test]
async fn an_aging_rule_with_a_bad_schedule_is_stalled() {
    let Some(cluster) = TestCluster::start("aging-bad").await else {
        return;
    };
    let _operator = operator(&cluster, &[]);
    let team = registry_namespace(&cluster).await;
    let name = cluster.unique("aging");
    cluster
        .create(&berth(
            "AgingRule",
            &name,
            json!({"namespace": team, "keepCount": 3, "schedule": "61 * * * *"}),
        ))
        .await
        .unwrap();
    cluster
        .kubectl(&[
            "wait",
            "--for=condition=Stalled",
            &format!("agingrule/{name}"),
            "--timeout=60s",
        ])
        .ok();
    let rule = Api::<AgingRule>::all(cluster.client())
        .get(&name)
        .await
        .unwrap();
    let status = rule.status.unwrap();
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "InvalidSchedule")
    );
}

#[tokio::test]
async fn a_minimal_aging_rule_really_deletes() {
    let Some(cluster) = TestCluster::start("aging-minimal").await else {
        return;
    };
    let Some(skopeo) = require_tool("skopeo") else {
        return;
    };
    let operator = operator(&cluster, &[]);
    let team = registry_namespace(&cluster).await;
    let repo = format!("{team}/web");
    for (tag, days) in [("old", 2), ("new", 1)] {
        skopeo_push(&skopeo, &operator.addr, &repo, tag, tag);
        pushed_days_ago(&operator, &repo, tag, days);
    }
    let name = cluster.unique("aging");
    cluster
        .create(&berth(
            "AgingRule",
            &name,
            json!({"namespace": team, "keepCount": 1}),
        ))
        .await
        .unwrap();
    let done = run_now(&cluster, &name, "now").await;
    assert_eq!(deleted_tags(&done), ["old"], "{done:?}");
    assert_eq!(tags(&operator, &repo), ["new"]);
}
