//! The real Argo CD (v3.1.0, built from its Go module) syncing berth's resources from a
//! Git repository on loopback into the test control plane, with berth running as the
//! operator:
//! - Argo CD judges every berth kind through berth's health checks (as argocd-cm ships
//!   them): Healthy when Ready, Degraded for a stalled Trigger, and the Application's
//!   health follows;
//! - in `cluster` mode, with the settings berth documents
//!   (`deploy/argocd/application-resources.yaml`) and self-heal on, Argo CD neither
//!   reverts the image a push set nor shows the Application OutOfSync, also across its
//!   own syncs; without them it puts Git's image back, and the Trigger reports the
//!   conflict instead of fighting;
//! - in `git` mode, a push becomes a commit of the new image in the Deployment's file,
//!   and Argo CD rolls the Deployment out from that commit.

mod application;
mod argo_cd;
mod daemon;
mod git_server;

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use serde_json::{Value, json};

use crate::cluster::{TEST_LABEL, TestCluster};
use crate::common::require_tool;
use crate::gitops::{condition, get, operator};
use crate::reconcile::push_image;

use application::{
    App, health, resource_entry, resource_health, revision, sync_status, synced_and_healthy_at,
    syncs,
};
use argo_cd::{ArgoCd, RESYNC_SECONDS};
use git_server::GitServer;

/// How long Argo CD may take to sync a commit and see it healthy: a Git fetch, a
/// comparison, up to three sync waves, and kwok's Pods becoming ready.
const SYNC: Duration = Duration::from_secs(120);

/// Everything a test needs: the cluster, Argo CD, a Git server. `None` when a tool is
/// missing outside CI (the test is skipped, loudly).
async fn setup(prefix: &str) -> Option<(TestCluster, &'static ArgoCd, GitServer)> {
    let cluster = TestCluster::start(prefix).await?;
    let git = require_tool("git")?;
    let argo = ArgoCd::shared(&cluster).await?;
    Some((cluster, argo, GitServer::start(git)))
}

/// A berth object as a file in Git: labelled for the test's operator, with the sync
/// options and wave berth's examples carry (no dry run before the CRDs exist;
/// Namespaces, then what lives in them, then Triggers).
fn berth_file(cluster: &TestCluster, kind: &str, name: &str, spec: Value, wave: u8) -> String {
    let object = json!({
        "apiVersion": "berth.dev/v1alpha1",
        "kind": kind,
        "metadata": {
            "name": name,
            "labels": {TEST_LABEL: cluster.id()},
            "annotations": {
                "argocd.argoproj.io/sync-options": "SkipDryRunOnMissingResource=true",
                "argocd.argoproj.io/sync-wave": wave.to_string(),
            },
        },
        "spec": spec,
    });
    serde_yaml::to_string(&object).unwrap()
}

/// A Trigger rolling the Deployment `web` out on `v<N>` tags of `repository`.
fn trigger_file(cluster: &TestCluster, name: &str, repository: &str, regex: &str) -> String {
    berth_file(
        cluster,
        "Trigger",
        name,
        json!({
            "repository": repository,
            "tags": {"mode": "Regex", "regex": regex},
            "target": {"kind": "Deployment", "name": "web", "container": "web"},
        }),
        2,
    )
}

/// The Deployment `web` as Git has it: `replicas` Pods of `image`.
fn deployment_file(image: &str, replicas: u32) -> String {
    let object = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": image}]},
            },
        },
    });
    serde_yaml::to_string(&object).unwrap()
}

/// The Deployment `web`'s image and replicas as the apiserver has them.
async fn live_web(cluster: &TestCluster) -> (String, i32) {
    let deployment = Api::<Deployment>::namespaced(cluster.client(), cluster.namespace())
        .get("web")
        .await
        .unwrap();
    let spec = deployment.spec.unwrap();
    let image = spec.template.spec.unwrap().containers[0]
        .image
        .clone()
        .unwrap_or_default();
    (image, spec.replicas.unwrap_or(1))
}

/// Waits until the Deployment `web` runs `image`.
async fn wait_for_image(cluster: &TestCluster, image: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let (live, _) = live_web(cluster).await;
        if live == image {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "Deployment web runs {live}, not {image}, after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The field managers that own the Deployment `web`'s image, sorted.
async fn image_owners(cluster: &TestCluster) -> Vec<String> {
    let deployment = Api::<Deployment>::namespaced(cluster.client(), cluster.namespace())
        .get("web")
        .await
        .unwrap();
    let mut owners: Vec<String> = deployment
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter(|m| {
            m.fields_v1.as_ref().is_some_and(|f| {
                f.0["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"web\"}"]
                    .get("f:image")
                    .is_some()
            })
        })
        .filter_map(|m| m.manager)
        .collect();
    owners.sort();
    owners
}

fn reconciled_at(status: &Value) -> String {
    status["reconciledAt"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Argo CD syncs a folder of berth resources from Git (a Namespace, a Repository in
/// it, a Trigger and its Deployment, in sync waves that wait for each wave's health)
/// and reports each berth resource Healthy through berth's health checks, and the
/// Application Synced and Healthy. A Trigger with an invalid regex committed next is
/// Degraded with berth's reason, and so is the Application; fixing it in Git makes
/// both Healthy again.
#[tokio::test]
async fn argo_cd_syncs_berth_resources_from_git_and_judges_them_with_berths_health_checks() {
    let Some((cluster, argo, git)) = setup("argocd-health").await else {
        return;
    };
    let operator = operator(&cluster);
    let team = cluster.unique("team");
    let repository = format!("{team}.web");
    let image = format!("{}/{team}/web:v1", operator.addr);
    let first = git.commit(
        &[
            (
                "berth/namespace.yaml",
                Some(berth_file(&cluster, "Namespace", &team, json!({}), 0)),
            ),
            (
                "berth/repository.yaml",
                Some(berth_file(
                    &cluster,
                    "Repository",
                    &repository,
                    json!({"namespace": team, "name": "web"}),
                    1,
                )),
            ),
            (
                "berth/trigger.yaml",
                Some(trigger_file(
                    &cluster,
                    "web-releases",
                    &format!("{team}/web"),
                    "^v[0-9]+$",
                )),
            ),
            ("berth/deployment.yaml", Some(deployment_file(&image, 1))),
        ],
        "berth resources for the web service",
    );
    let app = App::create(&cluster, argo, application::plain(&cluster, &git.url())).await;
    let (status, took) = app
        .wait("Synced and Healthy", SYNC, synced_and_healthy_at(&first))
        .await;
    eprintln!(
        "Application Synced and Healthy {:.1}s after its creation",
        took.as_secs_f64()
    );
    for (kind, name) in [
        ("Namespace", team.as_str()),
        ("Repository", repository.as_str()),
        ("Trigger", "web-releases"),
    ] {
        let entry = resource_entry(&status, kind, name)
            .unwrap_or_else(|| panic!("Argo CD does not list {kind}/{name}: {status:#}"));
        assert_eq!(entry["group"], "berth.dev", "{entry:#}");
        assert_eq!(entry["status"], "Synced", "{entry:#}");
        let (state, _) = resource_health(&status, kind, name).unwrap();
        assert_eq!(state, "Healthy", "{kind}/{name}: {entry:#}");
        // What Argo CD saw is what berth wrote.
        let live = get(&cluster, kind, name).await;
        assert_eq!(
            condition(&live, "Ready").map(|(s, _)| s).as_deref(),
            Some("True"),
            "{kind}/{name}"
        );
    }

    let broken = git.commit(
        &[(
            "berth/broken-trigger.yaml",
            Some(trigger_file(
                &cluster,
                "broken",
                &format!("{team}/web"),
                "v[",
            )),
        )],
        "a Trigger with an invalid regex",
    );
    app.refresh().await;
    let (status, took) = app
        .wait("Degraded by the broken Trigger", SYNC, |s| {
            revision(s) == broken && health(s) == "Degraded"
        })
        .await;
    eprintln!(
        "Application Degraded {:.1}s after the commit",
        took.as_secs_f64()
    );
    let (state, message) = resource_health(&status, "Trigger", "broken").unwrap();
    assert_eq!(state, "Degraded", "{status:#}");
    assert!(
        message.starts_with("InvalidRegex: "),
        "Argo CD shows berth's Stalled reason and message: {message:?}"
    );
    assert_eq!(
        resource_health(&status, "Trigger", "web-releases")
            .unwrap()
            .0,
        "Healthy",
        "only the broken Trigger is Degraded: {status:#}"
    );

    let fixed = git.commit(
        &[(
            "berth/broken-trigger.yaml",
            Some(trigger_file(
                &cluster,
                "broken",
                &format!("{team}/web"),
                "^v[0-9]+$",
            )),
        )],
        "fix the regex",
    );
    app.refresh().await;
    app.wait(
        "Healthy again after the fix",
        SYNC,
        synced_and_healthy_at(&fixed),
    )
    .await;
}

/// The Git repository of the `cluster`-mode tests: a berth Namespace, a Trigger and the
/// Deployment it rolls out, at `image:v1` with `replicas` Pods.
fn cluster_mode_files(
    cluster: &TestCluster,
    team: &str,
    image: &str,
    replicas: u32,
) -> Vec<(&'static str, Option<String>)> {
    vec![
        (
            "berth/namespace.yaml",
            Some(berth_file(cluster, "Namespace", team, json!({}), 0)),
        ),
        (
            "berth/trigger.yaml",
            Some(trigger_file(
                cluster,
                "web-releases",
                &format!("{team}/web"),
                "^v[0-9]+$",
            )),
        ),
        (
            "berth/deployment.yaml",
            Some(deployment_file(image, replicas)),
        ),
    ]
}

/// `cluster` mode with the settings berth documents (deploy/argocd/application-
/// resources.yaml as shipped: ignoreDifferences with `managedFieldsManagers: [berth]`,
/// `RespectIgnoreDifferences=true`, `ServerSideApply=true`, self-heal on): a push sets
/// the Deployment's image; over several of Argo CD's reconciliations the image stays,
/// the Application stays Synced and Argo CD runs no sync. A later commit that changes
/// another field of the Deployment is synced (server-side apply) without taking the
/// image back, and the next push still applies.
#[tokio::test]
async fn in_cluster_mode_with_the_documented_settings_argo_cd_keeps_the_image_berth_set() {
    let Some((cluster, argo, git)) = setup("argocd-cluster-mode").await else {
        return;
    };
    let operator = operator(&cluster);
    let team = cluster.unique("team");
    let in_git = format!("{}/{team}/web:v1", operator.addr);
    let first = git.commit(
        &cluster_mode_files(&cluster, &team, &in_git, 1),
        "web and its Trigger",
    );
    let app = App::create(
        &cluster,
        argo,
        application::documented(&cluster, &git.url()),
    )
    .await;
    let (status, _) = app
        .wait("Synced and Healthy", SYNC, synced_and_healthy_at(&first))
        .await;
    let syncs_before = syncs(&status);

    let digest = push_image(&operator.url(), &format!("{team}/web"), "v2", "v2")
        .await
        .expect("push v2");
    let pushed = format!("{}/{team}/web:v2@{digest}", operator.addr);
    wait_for_image(&cluster, &pushed, Duration::from_secs(30)).await;

    // Several reconciliations of Argo CD (each compares with Git and would self-heal).
    let start = Instant::now();
    let mut reconciliations = std::collections::BTreeSet::new();
    while start.elapsed() < Duration::from_secs(4 * RESYNC_SECONDS) || reconciliations.len() < 3 {
        let status = app.status().await;
        reconciliations.insert(reconciled_at(&status));
        assert_eq!(
            sync_status(&status),
            "Synced",
            "berth's image makes the Application OutOfSync: {status:#}"
        );
        assert_eq!(
            live_web(&cluster).await.0,
            pushed,
            "Argo CD reverted berth's image"
        );
        assert!(
            start.elapsed() < Duration::from_secs(10 * RESYNC_SECONDS),
            "Argo CD reconciled only {} times in {:?}",
            reconciliations.len(),
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let status = app.status().await;
    assert_eq!(
        syncs(&status),
        syncs_before,
        "self-heal ran a sync: {status:#}"
    );
    // berth's push took the field over from Argo CD's first apply: the field
    // `managedFieldsManagers: [berth]` makes Argo CD ignore.
    assert_eq!(image_owners(&cluster).await, ["berth"]);
    let trigger = get(&cluster, "Trigger", "web-releases").await;
    assert_eq!(
        condition(&trigger, "Ready").map(|(s, _)| s).as_deref(),
        Some("True"),
        "{:#}",
        trigger.data["status"]
    );
    assert_eq!(
        condition(&trigger, "Stalled"),
        None,
        "{:#}",
        trigger.data["status"]
    );

    // Argo CD syncs a change of another field (server-side apply, with berth's image
    // as the live value of an ignored field) and leaves the image alone.
    let scaled = git.commit(
        &[("berth/deployment.yaml", Some(deployment_file(&in_git, 2)))],
        "two replicas",
    );
    app.refresh().await;
    let (status, _) = app
        .wait("synced to the new commit", SYNC, |s| {
            synced_and_healthy_at(&scaled)(s)
                && s["operationState"]["phase"] == "Succeeded"
                && s["operationState"]["syncResult"]["revision"] == scaled
        })
        .await;
    assert_eq!(syncs(&status), syncs_before + 1, "{status:#}");
    assert_eq!(live_web(&cluster).await, (pushed.clone(), 2));
    // How: RespectIgnoreDifferences put the live value of the ignored image into what
    // Argo CD applied, so it applied berth's image, and berth and Argo CD now both own
    // the field with the same value (no conflict for either).
    let applied = status["operationState"]["syncResult"]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "Deployment")
        .unwrap();
    assert_eq!(applied["images"], json!([pushed]), "{applied:#}");
    assert_eq!(
        image_owners(&cluster).await,
        ["argocd-controller", "berth"],
        "the image's field managers"
    );

    // berth still owns the image: the next push applies.
    let digest = push_image(&operator.url(), &format!("{team}/web"), "v3", "v3")
        .await
        .expect("push v3");
    let pushed = format!("{}/{team}/web:v3@{digest}", operator.addr);
    wait_for_image(&cluster, &pushed, Duration::from_secs(30)).await;
    let (status, _) = app
        .wait(
            "Synced after the push",
            Duration::from_secs(3 * RESYNC_SECONDS),
            |s| sync_status(s) == "Synced",
        )
        .await;
    assert_eq!(syncs(&status), syncs_before + 1, "{status:#}");
}

/// The control for the test above: the same Application without the `ignoreDifferences`
/// and `RespectIgnoreDifferences` berth documents. Self-heal puts Git's image back after
/// the push, and berth does not fight it: the Trigger is Stalled (`ImageConflict`,
/// naming Argo CD's field manager), which Argo CD shows as a Degraded Trigger.
#[tokio::test]
async fn without_the_documented_settings_self_heal_puts_gits_image_back() {
    let Some((cluster, argo, git)) = setup("argocd-no-ignore").await else {
        return;
    };
    let operator = operator(&cluster);
    let team = cluster.unique("team");
    let in_git = format!("{}/{team}/web:v1", operator.addr);
    let first = git.commit(
        &cluster_mode_files(&cluster, &team, &in_git, 1),
        "web and its Trigger",
    );
    let mut spec = application::documented(&cluster, &git.url());
    spec["spec"]
        .as_object_mut()
        .unwrap()
        .remove("ignoreDifferences");
    spec["spec"]["syncPolicy"]["syncOptions"] = json!(["ServerSideApply=true"]);
    let app = App::create(&cluster, argo, spec).await;
    app.wait("Synced and Healthy", SYNC, synced_and_healthy_at(&first))
        .await;

    let digest = push_image(&operator.url(), &format!("{team}/web"), "v2", "v2")
        .await
        .expect("push v2");
    let pushed = format!("{}/{team}/web:v2@{digest}", operator.addr);
    // Self-heal may undo berth's patch within a few hundred ms, faster than a poll of
    // the Deployment sees it on a loaded machine: berth's record of the firing (or the
    // image itself) is what shows the push was applied.
    let start = Instant::now();
    loop {
        let trigger = get(&cluster, "Trigger", "web-releases").await;
        let recorded = trigger.data["status"]["history"]
            .as_array()
            .is_some_and(|h| {
                h.iter()
                    .any(|e| e["digest"].as_str() == Some(digest.as_str()))
            });
        if recorded || live_web(&cluster).await.0 == pushed {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "berth did not apply the push of {digest} within 30 s: {:#}",
            trigger.data["status"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = wait_for_image(&cluster, &in_git, SYNC).await;
    eprintln!(
        "self-heal put Git's image back {:.1}s after berth set it",
        took.as_secs_f64()
    );

    let (status, _) = app
        .wait("Degraded by the Trigger's conflict", SYNC, |s| {
            resource_health(s, "Trigger", "web-releases").is_some_and(|(h, _)| h == "Degraded")
        })
        .await;
    let (_, message) = resource_health(&status, "Trigger", "web-releases").unwrap();
    assert!(
        message.starts_with("ImageConflict: ") && message.contains("argocd-controller"),
        "{message:?}"
    );
    assert_eq!(
        live_web(&cluster).await.0,
        in_git,
        "berth did not take the image back"
    );
    assert_eq!(image_owners(&cluster).await, ["argocd-controller"]);
}

/// For the `git` write-back mode (another branch): after a push, berth commits the new
/// image reference to `git`; this waits for that commit (a head other than `before`),
/// has Argo CD compare at once (as Git's webhook would), and waits until the
/// Application is synced to it and Healthy and the Deployment `web` runs `image`.
/// Returns the commit. A test "in git mode a push commits the new digest and Argo CD
/// rolls the Deployment out" is then: commit a Trigger in `git` mode pointing at
/// `git.url()` and the Deployment's file, create the Application
/// (`application::plain`), push, call this, and check `git.file(..)` holds the digest.
async fn argo_cd_rolls_out_the_commit_berth_pushed(
    cluster: &TestCluster,
    app: &App,
    git: &GitServer,
    before: &str,
    image: &str,
) -> String {
    let commit = git
        .wait_for_push_after(before, Duration::from_secs(30))
        .await;
    app.refresh().await;
    app.wait(
        "synced to berth's commit",
        SYNC,
        synced_and_healthy_at(&commit),
    )
    .await;
    wait_for_image(cluster, image, SYNC).await;
    commit
}

/// In `Git` write-back mode Git stays the source of truth: a push of a matching tag
/// becomes one commit that sets the digest-pinned image on the marked line of the
/// Deployment's file in the repository Argo CD syncs, Argo CD syncs that commit and the
/// Deployment runs the pushed digest, and the Trigger's history names the commit.
#[tokio::test]
async fn in_git_mode_a_push_commits_the_digest_and_argo_cd_rolls_the_deployment_out() {
    let Some((cluster, argo, git)) = setup("argocd-gitmode").await else {
        return;
    };
    let operator = operator(&cluster);
    let team = cluster.unique("team");
    let v1 = format!("{}/{team}/web:v1", operator.addr);
    // Written by hand: the marker comment must sit on the image's line.
    let deployment = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 1\n  \
         selector:\n    matchLabels:\n      app: web\n  template:\n    metadata:\n      labels:\n        \
         app: web\n    spec:\n      containers:\n      - name: web\n        image: {v1} # {{\"$berth\": \"web\"}}\n"
    );
    let first = git.commit(
        &[
            (
                "berth/namespace.yaml",
                Some(berth_file(&cluster, "Namespace", &team, json!({}), 0)),
            ),
            (
                "berth/trigger.yaml",
                Some(berth_file(
                    &cluster,
                    "Trigger",
                    "web-git",
                    json!({
                        "repository": format!("{team}/web"),
                        "tags": {"mode": "Regex", "regex": "^v[0-9]+$"},
                        "writeBack": {
                            "mode": "Git",
                            "git": {
                                "url": git.url(),
                                "path": "berth/deployment.yaml",
                                "marker": {"name": "web"},
                            },
                        },
                    }),
                    2,
                )),
            ),
            ("berth/deployment.yaml", Some(deployment)),
        ],
        "the web service, its image set by berth's commits",
    );
    let app = App::create(&cluster, argo, application::plain(&cluster, &git.url())).await;
    app.wait("Synced and Healthy", SYNC, synced_and_healthy_at(&first))
        .await;
    assert_eq!(live_web(&cluster).await.0, v1);

    let digest = push_image(&operator.url(), &format!("{team}/web"), "v2", "v2")
        .await
        .expect("push v2");
    let file = || git.file("berth/deployment.yaml");
    // The image berth commits: its registry host, the repository, the tag and the digest.
    let started = Instant::now();
    let commit = loop {
        let head = git.head();
        if head != first {
            break head;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "berth committed nothing within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let committed = file();
    let image = committed
        .lines()
        .find_map(|l| l.trim().strip_prefix("image: "))
        .and_then(|l| l.split(" #").next())
        .unwrap_or_else(|| panic!("no image line in the committed file:\n{committed}"))
        .to_string();
    assert!(
        image.ends_with(&format!("/{team}/web:v2@{digest}")),
        "the committed image {image:?} is not v2 pinned to {digest}"
    );
    assert!(
        committed.contains("# {\"$berth\": \"web\"}"),
        "the marker was lost:\n{committed}"
    );
    let rolled =
        argo_cd_rolls_out_the_commit_berth_pushed(&cluster, &app, &git, &first, &image).await;
    assert_eq!(rolled, commit, "one commit for the push");
    eprintln!(
        "push → Deployment running the committed digest: {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let trigger = get(&cluster, "Trigger", "web-git").await;
    let history = trigger.data["status"]["history"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        history
            .iter()
            .any(|h| h["commit"].as_str() == Some(commit.as_str())),
        "status.history does not name commit {commit}: {history:#?}"
    );
}
