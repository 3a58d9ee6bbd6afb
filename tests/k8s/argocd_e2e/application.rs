//! Argo CD Applications as the tests write and read them: created in the `argocd`
//! namespace, labelled with the test's id, deleted when the handle drops; their sync
//! status, health and the health of each resource as Argo CD reports them in the
//! Application's status.

use std::path::Path;
use std::time::{Duration, Instant};

use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::discovery::ApiResource;
use serde_json::{Value, json};

use crate::cluster::{TEST_LABEL, TestCluster};
use crate::control_plane::ControlPlane;

use super::argo_cd::{ArgoCd, NAMESPACE};
use super::git_server::BRANCH;

/// The folder of the Git repository the Applications sync.
pub const PATH: &str = "berth";

fn resource() -> ApiResource {
    ApiResource {
        group: "argoproj.io".into(),
        version: "v1alpha1".into(),
        api_version: "argoproj.io/v1alpha1".into(),
        kind: "Application".into(),
        plural: "applications".into(),
    }
}

/// An Application that syncs `repo_url`'s folder [`PATH`] into the test's namespace,
/// automatically (prune and self-heal on), with no other setting.
pub fn plain(cluster: &TestCluster, repo_url: &str) -> Value {
    json!({
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Application",
        "metadata": {"name": "berth-resources"},
        "spec": {
            "project": "default",
            "source": {"repoURL": repo_url, "targetRevision": BRANCH, "path": PATH},
            "destination": {"server": "https://kubernetes.default.svc", "namespace": cluster.namespace()},
            "syncPolicy": {"automated": {"prune": true, "selfHeal": true}},
        },
    })
}

/// The Application berth documents for a folder of its resources,
/// `deploy/argocd/application-resources.yaml`, as shipped (ignoreDifferences, sync
/// options, automated sync with self-heal), pointed at `repo_url` and the test's
/// namespace.
pub fn documented(cluster: &TestCluster, repo_url: &str) -> Value {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/argocd/application-resources.yaml");
    let mut app: Value = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let source = &mut app["spec"]["source"];
    source["repoURL"] = json!(repo_url);
    source["targetRevision"] = json!(BRANCH);
    source["path"] = json!(PATH);
    app["spec"]["destination"]["namespace"] = json!(cluster.namespace());
    app
}

/// A live Application; deleted (not its resources: the test's namespace goes with the
/// test) when dropped.
pub struct App {
    pub name: String,
    api: Api<DynamicObject>,
    argo: &'static ArgoCd,
    plane: &'static ControlPlane,
}

impl App {
    /// Creates `app` under a name unique to the test, in the `argocd` namespace.
    pub async fn create(cluster: &TestCluster, argo: &'static ArgoCd, mut app: Value) -> App {
        let base = app["metadata"]["name"]
            .as_str()
            .unwrap_or("app")
            .to_string();
        let name = cluster.unique(&base);
        app["metadata"]["name"] = json!(name);
        app["metadata"]["namespace"] = json!(NAMESPACE);
        app["metadata"]["labels"][TEST_LABEL] = json!(cluster.id());
        let api = Api::namespaced_with(cluster.client(), NAMESPACE, &resource());
        let object: DynamicObject = serde_json::from_value(app).unwrap();
        api.create(&PostParams::default(), &object)
            .await
            .unwrap_or_else(|e| panic!("create Application {name}: {e}"));
        App {
            name,
            api,
            argo,
            plane: cluster.control_plane(),
        }
    }

    /// The Application's `status`.
    pub async fn status(&self) -> Value {
        let object = self.api.get(&self.name).await.unwrap();
        object.data["status"].clone()
    }

    /// Asks Argo CD to compare with Git now, as its webhook or `argocd app get --refresh`
    /// does, instead of at the next reconciliation.
    pub async fn refresh(&self) {
        let patch = json!({"metadata": {"annotations": {"argocd.argoproj.io/refresh": "normal"}}});
        self.api
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }

    /// Polls the status until `check` holds, within `limit`; panics with the status and
    /// the controller's log otherwise. Returns the status and how long it took.
    pub async fn wait(
        &self,
        what: &str,
        limit: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> (Value, Duration) {
        let start = Instant::now();
        loop {
            let status = self.status().await;
            if check(&status) {
                return (status, start.elapsed());
            }
            if let Err(crashed) = self.argo.check_running() {
                panic!(
                    "Argo CD stopped while waiting for Application {} to be {what}: {crashed}",
                    self.name
                );
            }
            assert!(
                start.elapsed() < limit,
                "Application {} not {what} within {limit:?}; its status:\n{:#}\n{}",
                self.name,
                status,
                self.argo.controller_log(30)
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.plane.kubectl(
            &[
                "delete",
                "application",
                "-n",
                NAMESPACE,
                &self.name,
                "--wait=false",
                "--ignore-not-found",
            ],
            None,
        );
    }
}

/// `status.sync.status`: Synced, OutOfSync or Unknown.
pub fn sync_status(status: &Value) -> &str {
    status["sync"]["status"].as_str().unwrap_or_default()
}

/// `status.health.status`: Healthy, Progressing, Degraded, Suspended, Missing, Unknown.
pub fn health(status: &Value) -> &str {
    status["health"]["status"].as_str().unwrap_or_default()
}

/// The revision the Application is synced to (the Git commit SHA).
pub fn revision(status: &Value) -> &str {
    status["sync"]["revision"].as_str().unwrap_or_default()
}

/// Synced to `sha` and Healthy: everything in Git is applied and healthy.
pub fn synced_and_healthy_at(sha: &str) -> impl Fn(&Value) -> bool + '_ {
    move |s| sync_status(s) == "Synced" && health(s) == "Healthy" && revision(s) == sha
}

/// The entry of `status.resources` for `kind`/`name`.
pub fn resource_entry<'a>(status: &'a Value, kind: &str, name: &str) -> Option<&'a Value> {
    status["resources"]
        .as_array()?
        .iter()
        .find(|r| r["kind"] == kind && r["name"] == name)
}

/// `(health status, health message)` Argo CD reports for `kind`/`name`.
pub fn resource_health(status: &Value, kind: &str, name: &str) -> Option<(String, String)> {
    let entry = resource_entry(status, kind, name)?;
    Some((
        entry["health"]["status"].as_str()?.to_string(),
        entry["health"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    ))
}

/// How many sync operations Argo CD has run for the Application (`status.history`).
pub fn syncs(status: &Value) -> usize {
    status["history"].as_array().map_or(0, Vec::len)
}
