//! What GitOps tools rely on, against the real control plane: every kind reports
//! `observedGeneration`, `Ready`, `Reconciling` and `Stalled` as kstatus reads them; a
//! folder applied in any order converges within seconds; condition changes, Trigger
//! firings and rollout outcomes are Kubernetes Events.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use serde_json::{Value, json};

use crate::cluster::{TEST_LABEL, TestCluster};
use crate::operator::Operator;
use crate::reconcile::push_image;
use crate::resources::{berth, berth_resource};

/// An operator that manages only this test's resources.
pub(crate) fn operator(cluster: &TestCluster) -> Operator {
    let selector = format!("{TEST_LABEL}={}", cluster.id());
    Operator::start(cluster, &["--selector", &selector])
}

/// The object of `kind` named `name` (in the test's namespace when namespaced).
pub(crate) async fn get(cluster: &TestCluster, kind: &str, name: &str) -> DynamicObject {
    let (resource, namespaced) = berth_resource(kind);
    let api: Api<DynamicObject> = if namespaced {
        Api::namespaced_with(cluster.client(), cluster.namespace(), &resource)
    } else {
        Api::all_with(cluster.client(), &resource)
    };
    api.get(name).await.unwrap()
}

/// `(status, reason)` of each condition type, for readable assertions.
pub(crate) fn condition(object: &DynamicObject, type_: &str) -> Option<(String, String)> {
    object.data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_string(),
                c["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
}

fn observed(object: &DynamicObject) -> bool {
    object.data["status"]["observedGeneration"] == json!(object.metadata.generation)
}

/// Polls until `check` holds for the object (and its status describes its generation),
/// within `limit`; returns it and how long it took.
pub(crate) async fn wait_until(
    cluster: &TestCluster,
    kind: &str,
    name: &str,
    limit: Duration,
    what: &str,
    check: impl Fn(&DynamicObject) -> bool,
) -> (DynamicObject, Duration) {
    let start = Instant::now();
    loop {
        let object = get(cluster, kind, name).await;
        if observed(&object) && check(&object) {
            return (object, start.elapsed());
        }
        assert!(
            start.elapsed() < limit,
            "{kind}/{name} not {what} within {limit:?}: {:#}",
            object.data["status"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn is(type_: &str, status: &str, reason: &str) -> impl Fn(&DynamicObject) -> bool {
    let want = Some((status.to_string(), reason.to_string()));
    let type_ = type_.to_string();
    move |o| condition(o, &type_) == want
}

/// A Deployment `name` whose one container runs `image`.
pub(crate) async fn deployment(cluster: &TestCluster, name: &str, image: &str) {
    deployment_with(cluster, name, image, 0).await
}

/// A Deployment whose new Pods count as available only after `min_ready_seconds`: a
/// rollout that stays in progress that long.
async fn deployment_with(cluster: &TestCluster, name: &str, image: &str, min_ready_seconds: i32) {
    let object: Deployment = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "minReadySeconds": min_ready_seconds,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": image}]},
            },
        },
    }))
    .unwrap();
    Api::<Deployment>::namespaced(cluster.client(), cluster.namespace())
        .create(&PostParams::default(), &object)
        .await
        .unwrap();
}

/// The Events (events.k8s.io) berth published about `kind`/`name`: `(type, reason, note)`.
pub(crate) async fn events_about(
    cluster: &TestCluster,
    kind: &str,
    name: &str,
) -> Vec<(String, String, String)> {
    // Events about cluster-scoped objects go to the `default` namespace.
    let namespace = if berth_resource(kind).1 {
        cluster.namespace()
    } else {
        "default"
    };
    let selector = format!("regarding.kind={kind},regarding.name={name}");
    Api::<Event>::namespaced(cluster.client(), namespace)
        .list(&ListParams::default().fields(&selector))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reporting_controller.as_deref() == Some("berth.dev/operator"))
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default(),
            )
        })
        .collect()
}

/// Waits until an Event of `type_` and `reason` about the object exists; returns its note.
pub(crate) async fn wait_event(
    cluster: &TestCluster,
    kind: &str,
    name: &str,
    type_: &str,
    reason: &str,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let events = events_about(cluster, kind, name).await;
        if let Some((_, _, note)) = events.iter().find(|(t, r, _)| t == type_ && r == reason) {
            return note.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no {type_} Event {reason} about {kind}/{name}; there are: {events:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// GitOps tools apply a folder at once, in any order: a Trigger, Repository, SyncRule
/// and AgingRule applied before their berth Namespace wait (`Ready=False`,
/// `Reconciling=True`, reason `NamespaceNotFound`, not stalled) and are Ready within 5
/// seconds of the Namespace, not at the next one-minute resync.
#[tokio::test]
async fn resources_applied_before_their_namespace_are_ready_within_seconds_of_it() {
    let Some(cluster) = TestCluster::start("gitops-order").await else {
        return;
    };
    let operator = operator(&cluster);
    let team = cluster.unique("team");
    let repo = format!("{team}/web");
    deployment(&cluster, "web", &format!("{}/{repo}:v0", operator.addr)).await;
    let dependents = [
        (
            "Trigger",
            json!({"repository": repo, "target": {"name": "web"}}),
        ),
        ("Repository", json!({"namespace": team, "name": "web"})),
        (
            "SyncRule",
            json!({"namespace": team, "direction": "Pull", "remote": {"url": "https://registry.example.com"}, "repositories": ["web"]}),
        ),
        ("AgingRule", json!({"namespace": team, "keepCount": 3})),
    ];
    for (kind, spec) in &dependents {
        let name = cluster.unique("web");
        cluster
            .create(&berth(kind, &name, spec.clone()))
            .await
            .unwrap();
        let (object, _) = wait_until(
            &cluster,
            kind,
            &name,
            Duration::from_secs(30),
            "waiting for its Namespace",
            is("Ready", "False", "NamespaceNotFound"),
        )
        .await;
        assert_eq!(
            condition(&object, "Reconciling"),
            Some(("True".into(), "NamespaceNotFound".into())),
            "{kind} waits, so kstatus says InProgress"
        );
        assert_eq!(condition(&object, "Stalled"), None, "{kind} is not stalled");
    }

    cluster
        .create(&berth("Namespace", &team, json!({})))
        .await
        .unwrap();
    let created = Instant::now();
    for (kind, _) in &dependents {
        let name = cluster.unique("web");
        // The SyncRule's remote does not exist: once its Namespace is there it is in
        // effect and trying its remote, which keeps it from being Ready.
        let in_effect = |o: &DynamicObject| match *kind {
            "SyncRule" => condition(o, "Ready")
                .is_some_and(|(_, reason)| reason == "RemoteUnreachable" || reason == "Connecting"),
            _ => condition(o, "Ready").is_some_and(|(status, _)| status == "True"),
        };
        let (object, _) = wait_until(
            &cluster,
            kind,
            &name,
            Duration::from_secs(5),
            "in effect",
            in_effect,
        )
        .await;
        if *kind != "SyncRule" {
            assert_eq!(condition(&object, "Reconciling"), None, "{kind}");
        }
        assert_eq!(condition(&object, "Stalled"), None, "{kind}");
        let took = created.elapsed();
        assert!(took < Duration::from_secs(5), "{kind} Ready after {took:?}");
        eprintln!("{kind} Ready {took:?} after its Namespace was created");
    }

    // Each transition is an Event on the resource.
    let trigger = cluster.unique("web");
    wait_event(
        &cluster,
        "Trigger",
        &trigger,
        "Warning",
        "NamespaceNotFound",
    )
    .await;
    let note = wait_event(&cluster, "Trigger", &trigger, "Normal", "Watching").await;
    assert!(
        note.starts_with("Ready=True: rolls out Deployment"),
        "{note}"
    );
    wait_event(&cluster, "Namespace", &team, "Normal", "Reconciled").await;
}

/// An error only a change of the spec can fix is `Stalled=True` with its reason (kstatus
/// `Failed`), announced by a Warning Event; fixing the spec clears it.
#[tokio::test]
async fn a_trigger_with_an_invalid_regex_is_stalled_until_fixed() {
    let Some(cluster) = TestCluster::start("gitops-stalled").await else {
        return;
    };
    let operator = operator(&cluster);
    let team = cluster.unique("team");
    cluster
        .create(&berth("Namespace", &team, json!({})))
        .await
        .unwrap();
    let repo = format!("{team}/web");
    deployment(&cluster, "web", &format!("{}/{repo}:v0", operator.addr)).await;
    let spec = json!({"repository": repo, "target": {"name": "web"}, "tags": {"mode": "Regex", "regex": "v(1"}});
    cluster
        .create(&berth("Trigger", "web", spec))
        .await
        .unwrap();
    let (object, _) = wait_until(
        &cluster,
        "Trigger",
        "web",
        Duration::from_secs(30),
        "stalled",
        is("Stalled", "True", "InvalidRegex"),
    )
    .await;
    assert_eq!(
        condition(&object, "Ready"),
        Some(("False".into(), "InvalidRegex".into()))
    );
    assert_eq!(condition(&object, "Reconciling"), None);
    let note = wait_event(&cluster, "Trigger", "web", "Warning", "InvalidRegex").await;
    assert!(note.contains("does not compile"), "{note}");

    let fixed = json!({"spec": {"tags": {"mode": "Regex", "regex": "v1.*"}}});
    cluster
        .kubectl(&[
            "-n",
            cluster.namespace(),
            "patch",
            "rtrigger",
            "web",
            "--type=merge",
            "-p",
            &fixed.to_string(),
        ])
        .ok();
    let (object, _) = wait_until(
        &cluster,
        "Trigger",
        "web",
        Duration::from_secs(10),
        "Ready",
        is("Ready", "True", "Watching"),
    )
    .await;
    assert_eq!(condition(&object, "Stalled"), None);
}

/// Every firing and every rollout outcome is an Event on the Trigger, which is
/// `Reconciling=True` (`RollingOut`) while it follows the rollout.
#[tokio::test]
async fn a_firing_and_its_rollout_are_events_on_the_trigger() {
    let Some(cluster) = TestCluster::start("gitops-events").await else {
        return;
    };
    let operator = operator(&cluster);
    let team = cluster.unique("team");
    cluster
        .create(&berth("Namespace", &team, json!({})))
        .await
        .unwrap();
    let repo = format!("{team}/web");
    deployment(&cluster, "web", &format!("{}/{repo}:v0", operator.addr)).await;
    let spec = json!({"repository": repo, "target": {"name": "web"}});
    cluster
        .create(&berth("Trigger", "web", spec))
        .await
        .unwrap();
    wait_until(
        &cluster,
        "Trigger",
        "web",
        Duration::from_secs(30),
        "Ready",
        is("Ready", "True", "Watching"),
    )
    .await;
    let url = operator.url();
    let digest = push_image(&url, &repo, "v1", "v1").await.unwrap();

    let fired = wait_event(&cluster, "Trigger", "web", "Normal", "Fired").await;
    assert!(fired.contains(&format!("v1@{digest}")), "{fired}");
    let done = wait_event(&cluster, "Trigger", "web", "Normal", "RolloutSucceeded").await;
    assert!(done.contains(&format!("v1@{digest}")), "{done}");
    let (object, _) = wait_until(
        &cluster,
        "Trigger",
        "web",
        Duration::from_secs(10),
        "settled",
        |o| condition(o, "Reconciling").is_none(),
    )
    .await;
    assert_eq!(
        condition(&object, "Ready"),
        Some(("True".into(), "Watching".into()))
    );
}

#[allow(dead_code, reason = "used by the kstatus and Argo CD tests")]
pub(crate) fn status_of(object: &DynamicObject) -> &Value {
    &object.data["status"]
}

/// One berth resource in one state, and how each GitOps tool must judge it.
struct Case {
    kind: &'static str,
    name: String,
    /// The testdata file name in `deploy/argocd/resource_customizations/berth.dev/KIND/testdata/`.
    file: &'static str,
    kstatus: &'static str,
    argocd: &'static str,
}

/// `berth-gitops-check SUBCOMMAND ARGS` with `objects` (a JSON array) on stdin; its output.
fn gitops_check(tool: &std::path::Path, args: &[&str], objects: &Value) -> Vec<Value> {
    use std::io::Write as _;
    let mut child = std::process::Command::new(tool)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(objects.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "berth-gitops-check {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The object as `kubectl get -o yaml` shows it, without what differs on every run
/// (uid, resourceVersion, managedFields), for Argo CD's testdata.
fn exported(object: &DynamicObject) -> Value {
    let mut value = serde_json::to_value(object).unwrap();
    let metadata = value["metadata"].as_object_mut().unwrap();
    for field in ["managedFields", "uid", "resourceVersion"] {
        metadata.remove(field);
    }
    value
}

/// kstatus (cli-utils `status.Compute`, what Flux and kpt use) and Argo CD (berth's
/// health scripts under gopher-lua) judge every kind in each of its states, as read
/// from the apiserver: new, waiting for its Namespace, Ready, stalled, disabled,
/// rolling out. With `BERTH_UPDATE_TESTDATA=1` the objects are written to the health
/// scripts' `testdata/` and `health_test.yaml`.
#[tokio::test]
async fn kstatus_and_argo_cd_judge_every_kind_in_every_state() {
    let Some(cluster) = TestCluster::start("gitops-health").await else {
        return;
    };
    let Some(tool) = crate::common::require_tool("berth-gitops-check") else {
        return;
    };
    let team = cluster.unique("team");
    let missing = cluster.unique("missing");
    let mut cases = Vec::new();
    let mut new_objects = Vec::new();
    // New: created, not seen by berth yet (no operator runs).
    for (kind, spec) in [
        ("Namespace", json!({})),
        ("Repository", json!({"namespace": team, "name": "new"})),
        (
            "Trigger",
            json!({"repository": format!("{team}/web"), "target": {"name": "web"}}),
        ),
    ] {
        let name = cluster.unique("new");
        let created = cluster.create(&berth(kind, &name, spec)).await.unwrap();
        new_objects.push((kind, name.clone(), created));
        cases.push(Case {
            kind,
            name,
            file: "new.yaml",
            kstatus: "InProgress",
            argocd: "Progressing",
        });
    }
    let operator = operator(&cluster);
    let mut create = |kind: &'static str,
                      base: &str,
                      spec: Value,
                      file: &'static str,
                      kstatus: &'static str,
                      argocd: &'static str| {
        let name = cluster.unique(base);
        cases.push(Case {
            kind,
            name: name.clone(),
            file,
            kstatus,
            argocd,
        });
        (kind, name, spec)
    };
    let web = format!("{team}/web");
    let elsewhere = format!("{missing}/web");
    let objects = vec![
        create(
            "Namespace",
            &team,
            json!({}),
            "ready.yaml",
            "Current",
            "Healthy",
        ),
        create(
            "Repository",
            "web",
            json!({"namespace": team, "name": "web"}),
            "ready.yaml",
            "Current",
            "Healthy",
        ),
        create(
            "Repository",
            "waiting",
            json!({"namespace": missing, "name": "web"}),
            "namespace-not-found.yaml",
            "InProgress",
            "Progressing",
        ),
        create(
            "Repository",
            "invalid",
            json!({"namespace": team, "name": "invalid", "immutableTags": ["v[0-9]+"]}),
            "invalid-spec.yaml",
            "Failed",
            "Degraded",
        ),
        // Its remote does not exist: the rule retries, so it is in progress, not failed.
        create(
            "SyncRule",
            "sync",
            json!({"namespace": team, "direction": "Pull", "remote": {"url": "https://registry.example.com"}}),
            "remote-unreachable.yaml",
            "InProgress",
            "Progressing",
        ),
        create(
            "SyncRule",
            "waiting",
            json!({"namespace": missing, "direction": "Pull", "remote": {"url": "https://registry.example.com"}}),
            "namespace-not-found.yaml",
            "InProgress",
            "Progressing",
        ),
        create(
            "AgingRule",
            "aging",
            json!({"namespace": team, "keepCount": 3}),
            "ready.yaml",
            "Current",
            "Healthy",
        ),
        create(
            "AgingRule",
            "waiting",
            json!({"namespace": missing, "keepCount": 3}),
            "namespace-not-found.yaml",
            "InProgress",
            "Progressing",
        ),
        create(
            "Trigger",
            "web",
            json!({"repository": web, "target": {"name": "web"}}),
            "ready.yaml",
            "Current",
            "Healthy",
        ),
        create(
            "Trigger",
            "waiting",
            json!({"repository": elsewhere, "target": {"name": "web"}}),
            "namespace-not-found.yaml",
            "InProgress",
            "Progressing",
        ),
        create(
            "Trigger",
            "no-target",
            json!({"repository": web, "target": {"name": "absent"}}),
            "target-not-found.yaml",
            "InProgress",
            "Progressing",
        ),
        create(
            "Trigger",
            "regex",
            json!({"repository": web, "target": {"name": "web"}, "tags": {"mode": "Regex", "regex": "v(1"}}),
            "invalid-regex.yaml",
            "Failed",
            "Degraded",
        ),
        create(
            "Trigger",
            "off",
            json!({"repository": web, "target": {"name": "web"}, "enabled": false}),
            "disabled.yaml",
            "InProgress",
            "Suspended",
        ),
    ];
    deployment(&cluster, "web", &format!("{}/{web}:v0", operator.addr)).await;
    // A rollout that stays in progress for a minute (minReadySeconds).
    let slow = format!("{team}/slow");
    deployment_with(
        &cluster,
        "slow",
        &format!("{}/{slow}:v0", operator.addr),
        60,
    )
    .await;
    let rolling = cluster.unique("rolling");
    let rolling_spec = json!({"repository": slow, "target": {"name": "slow"}});
    cases.push(Case {
        kind: "Trigger",
        name: rolling.clone(),
        file: "rolling-out.yaml",
        kstatus: "InProgress",
        argocd: "Progressing",
    });
    for (kind, name, spec) in objects {
        let object = if kind == "Namespace" {
            berth(kind, &team, spec)
        } else {
            berth(kind, &name, spec)
        };
        cluster.create(&object).await.unwrap();
    }
    cluster
        .create(&berth("Trigger", &rolling, rolling_spec))
        .await
        .unwrap();
    wait_until(
        &cluster,
        "Trigger",
        &rolling,
        Duration::from_secs(30),
        "Ready",
        is("Ready", "True", "Watching"),
    )
    .await;
    push_image(&operator.url(), &slow, "v1", "slow v1")
        .await
        .unwrap();
    // The Namespace's name is the registry namespace's: fix the case's name up.
    for case in &mut cases {
        if case.kind == "Namespace" && case.file == "ready.yaml" {
            case.name = team.clone();
        }
    }

    // Wait until berth has reported on each (new ones are the objects as created).
    let mut judged = Vec::new();
    for case in &cases {
        let object = match new_objects.iter().find(|(_, n, _)| *n == case.name) {
            Some((_, _, created)) => created.clone(),
            None if case.file == "rolling-out.yaml" => {
                wait_until(
                    &cluster,
                    case.kind,
                    &case.name,
                    Duration::from_secs(30),
                    "rolling out",
                    is("Reconciling", "True", "RollingOut"),
                )
                .await
                .0
            }
            None => {
                wait_until(
                    &cluster,
                    case.kind,
                    &case.name,
                    Duration::from_secs(30),
                    "reported",
                    |o| condition(o, "Ready").is_some(),
                )
                .await
                .0
            }
        };
        judged.push(exported(&object));
    }
    let objects = Value::Array(judged.clone());
    let kstatus = gitops_check(&tool, &["kstatus"], &objects);
    let scripts = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/argocd/resource_customizations/berth.dev");
    let mut failures = Vec::new();
    let mut argocd = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let script = scripts.join(case.kind).join("health.lua");
        let one = Value::Array(vec![judged[i].clone()]);
        let health = gitops_check(&tool, &["health", script.to_str().unwrap()], &one);
        let health = health[0].clone();
        if kstatus[i]["status"] != case.kstatus {
            failures.push(format!(
                "kstatus {} {} ({}): {} (want {})",
                case.kind, case.name, case.file, kstatus[i], case.kstatus
            ));
        }
        if health["status"] != case.argocd {
            failures.push(format!(
                "Argo CD {} {} ({}): {} (want {})",
                case.kind, case.name, case.file, health, case.argocd
            ));
        }
        argocd.push(health);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    if std::env::var("BERTH_UPDATE_TESTDATA").is_ok_and(|v| v == "1") {
        write_testdata(&scripts, &cases, &judged, &argocd);
    }

    // kubectl wait reads the same conditions.
    let trigger = format!("rtrigger/{}", cluster.unique("web"));
    cluster
        .kubectl(&[
            "-n",
            cluster.namespace(),
            "wait",
            "--for=condition=Ready",
            &trigger,
            "--timeout=10s",
        ])
        .ok();
    cluster
        .kubectl(&[
            "-n",
            cluster.namespace(),
            "wait",
            "--for=jsonpath={.status.observedGeneration}=1",
            &trigger,
            "--timeout=10s",
        ])
        .ok();
    let stalled = format!("rtrigger/{}", cluster.unique("regex"));
    cluster
        .kubectl(&[
            "-n",
            cluster.namespace(),
            "wait",
            "--for=condition=Stalled",
            &stalled,
            "--timeout=10s",
        ])
        .ok();
    let stderr = cluster
        .kubectl(&[
            "-n",
            cluster.namespace(),
            "wait",
            "--for=condition=Ready",
            &stalled,
            "--timeout=2s",
        ])
        .fails();
    assert!(stderr.contains("timed out"), "{stderr}");
}

/// Writes each case's object to `KIND/testdata/FILE` and the expected health to
/// `KIND/health_test.yaml`, in Argo CD's resource_customizations layout.
fn write_testdata(scripts: &std::path::Path, cases: &[Case], objects: &[Value], health: &[Value]) {
    let mut tests: std::collections::BTreeMap<&str, Vec<Value>> = Default::default();
    for (i, case) in cases.iter().enumerate() {
        let dir = scripts.join(case.kind).join("testdata");
        std::fs::create_dir_all(&dir).unwrap();
        let yaml = serde_yaml::to_string(&objects[i]).unwrap();
        std::fs::write(dir.join(case.file), yaml).unwrap();
        tests.entry(case.kind).or_default().push(json!({
            "healthStatus": {"status": health[i]["status"], "message": health[i]["message"]},
            "inputPath": format!("testdata/{}", case.file),
        }));
    }
    for (kind, cases) in tests {
        let yaml = serde_yaml::to_string(&json!({"tests": cases})).unwrap();
        std::fs::write(scripts.join(kind).join("health_test.yaml"), yaml).unwrap();
    }
}

/// `kubectl apply --server-side --field-manager MANAGER` of the Deployment `web` with
/// one container `app`, with `image` or (None) without an image field.
fn apply_web_as(cluster: &TestCluster, manager: &str, image: Option<&str>, force: bool) {
    let mut container = json!({"name": "app"});
    if let Some(image) = image {
        container["image"] = json!(image);
    }
    let manifest = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": cluster.namespace()},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [container]},
            },
        },
    });
    let manager = format!("--field-manager={manager}");
    let mut args = vec!["apply", "--server-side", manager.as_str()];
    if force {
        args.push("--force-conflicts");
    }
    args.extend(["-f", "-"]);
    cluster.kubectl_stdin(&args, &manifest.to_string()).ok();
}

async fn web_image(cluster: &TestCluster) -> String {
    let d = Api::<Deployment>::namespaced(cluster.client(), cluster.namespace())
        .get("web")
        .await
        .unwrap();
    d.spec.unwrap().template.spec.unwrap().containers[0]
        .image
        .clone()
        .unwrap()
}

/// Server-side apply ownership with a GitOps tool (here a field manager named like
/// Argo CD's): applying the Deployment without the image field leaves berth's image;
/// applying it with an image and `--force-conflicts` takes the field, and berth reports
/// the conflict (`Stalled=True`, `ImageConflict`, a Warning Event) instead of taking it
/// back; the next push applies again.
#[tokio::test]
async fn a_field_manager_taking_the_image_back_is_reported_not_fought() {
    let Some(cluster) = TestCluster::start("gitops-ssa").await else {
        return;
    };
    let operator = operator(&cluster);
    let team = cluster.unique("team");
    cluster
        .create(&berth("Namespace", &team, json!({})))
        .await
        .unwrap();
    let repo = format!("{team}/web");
    let git_image = format!("{}/{repo}:v0", operator.addr);
    apply_web_as(&cluster, "argocd-controller", Some(&git_image), false);
    let spec = json!({"repository": repo, "target": {"name": "web"}});
    cluster
        .create(&berth("Trigger", "web", spec))
        .await
        .unwrap();
    let ready = is("Ready", "True", "Watching");
    wait_until(
        &cluster,
        "Trigger",
        "web",
        Duration::from_secs(30),
        "Ready",
        &ready,
    )
    .await;

    let url = operator.url();
    let v1 = push_image(&url, &repo, "v1", "v1").await.unwrap();
    let pinned = format!("{}/{repo}:v1@{v1}", operator.addr);
    let deadline = Instant::now() + Duration::from_secs(30);
    while web_image(&cluster).await != pinned {
        assert!(Instant::now() < deadline, "v1 never rolled out");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Git's manifest without the image: berth's image stays.
    apply_web_as(&cluster, "argocd-controller", None, false);
    assert_eq!(web_image(&cluster).await, pinned);

    // With the image and --force-conflicts: the image is Git's, and berth says so.
    apply_web_as(&cluster, "argocd-controller", Some(&git_image), true);
    let (object, _) = wait_until(
        &cluster,
        "Trigger",
        "web",
        Duration::from_secs(30),
        "reporting the conflict",
        is("Stalled", "True", "ImageConflict"),
    )
    .await;
    let message = object.data["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Stalled")
        .unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains("argocd-controller"), "{message}");
    let note = wait_event(&cluster, "Trigger", "web", "Warning", "ImageConflict").await;
    assert!(note.contains("argocd-controller"), "{note}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(web_image(&cluster).await, git_image, "berth did not fight");

    // A new push is applied (a fresh push wins), and the conflict is over.
    let v2 = push_image(&url, &repo, "v2", "v2").await.unwrap();
    let pinned = format!("{}/{repo}:v2@{v2}", operator.addr);
    let deadline = Instant::now() + Duration::from_secs(30);
    while web_image(&cluster).await != pinned {
        assert!(Instant::now() < deadline, "v2 never rolled out");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Ready again, and once the rollout of v2 is over, settled.
    wait_until(
        &cluster,
        "Trigger",
        "web",
        Duration::from_secs(30),
        "Ready again, rolled out",
        |o| condition(o, "Stalled").is_none() && condition(o, "Reconciling").is_none() && ready(o),
    )
    .await;
}
