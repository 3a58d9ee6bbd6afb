//! The real Argo CD v3.1.0 on the test control plane, one per test process, started by
//! the first test that asks for it: Argo CD's CRDs from its module's `manifests/crds/`,
//! its configuration in the `argocd` namespace (the module's own `argocd-cm` with berth's
//! health checks added exactly as `deploy/argocd/argocd-cm-values.yaml` ships them,
//! `argocd-secret`, `argocd-rbac-cm`, the `default` AppProject argocd-server would
//! create), Debian's `redis-server`, `argocd-repo-server` and
//! `argocd-application-controller` on loopback.
//!
//! The binaries come from `scripts/build-peers.sh argocd` (one multi-call binary, linked
//! under each role's name); the module source (CRDs, base configuration) from the Go
//! module cache that build fills. Without them the tests skip (fail under CI=true).
//!
//! Timings are shortened for tests, each the flag the Argo CD manifests set from a
//! configuration key: `--app-resync 5` (argocd-cm `timeout.reconciliation: 5s`, default
//! 120 s; also the Git polling interval), no resync jitter, and
//! `--persist-resource-health` (argocd-cmd-params-cm
//! `controller.resource.health.persist: "true"`) so each resource's health is in the
//! Application's status, where the tests read it (v3 keeps it only in redis by default,
//! for the API server).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cluster::TestCluster;
use crate::common::{missing_prerequisite, tools_bin_dir};
use crate::control_plane::ControlPlane;

use super::daemon::{Daemon, free_port};

/// Where Argo CD's configuration and Applications live.
pub const NAMESPACE: &str = "argocd";

/// The controller's reconciliation period in seconds (and so its Git polling period).
pub const RESYNC_SECONDS: u64 = 5;

/// The Argo CD processes shared by this test process's tests.
pub struct ArgoCd {
    daemons: Mutex<Vec<Daemon>>,
}

enum Unavailable {
    Missing { what: String, how: String },
    Failed(String),
}

static SHARED: OnceLock<Result<ArgoCd, Unavailable>> = OnceLock::new();

impl ArgoCd {
    /// The shared Argo CD, started on first use (the others wait). `None` when it is not
    /// built and this is not CI (the test is skipped, loudly).
    pub async fn shared(cluster: &TestCluster) -> Option<&'static ArgoCd> {
        let plane = cluster.control_plane();
        let shared = tokio::task::spawn_blocking(move || SHARED.get_or_init(|| start(plane)))
            .await
            .unwrap();
        match shared {
            Ok(argo) => Some(argo),
            Err(Unavailable::Missing { what, how }) => {
                missing_prerequisite(what, how);
                None
            }
            Err(Unavailable::Failed(why)) => panic!("Argo CD did not start: {why}"),
        }
    }

    /// Every Argo CD process is still running, or an error with the log of the one
    /// that is not: a test waiting for Argo CD fails with the cause, not a timeout.
    pub fn check_running(&self) -> Result<(), String> {
        let mut daemons = self.daemons.lock().unwrap();
        daemons.iter_mut().try_for_each(|d| d.check_running())
    }

    /// The controller's last log lines, for failure messages.
    pub fn controller_log(&self, lines: usize) -> String {
        let daemons = self.daemons.lock().unwrap();
        daemons
            .iter()
            .find(|d| d.name() == "argocd-application-controller")
            .map(|d| d.log_tail(lines))
            .unwrap_or_default()
    }
}

/// The version scripts/argocd-wrapper/go.mod pins.
fn pinned_version() -> String {
    let go_mod = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/argocd-wrapper/go.mod");
    let text = std::fs::read_to_string(&go_mod).expect("scripts/argocd-wrapper/go.mod");
    text.lines()
        .map(str::split_whitespace)
        .find_map(|mut words| {
            (words.next() == Some("github.com/argoproj/argo-cd/v3"))
                .then(|| words.next())
                .flatten()
        })
        .expect("the wrapper requires github.com/argoproj/argo-cd/v3")
        .to_string()
}

/// The module's source in the Go module cache (scripts/lib.sh: $BERTH_CACHE/go/mod).
fn module_dir(version: &str) -> PathBuf {
    let cache = tools_bin_dir()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    cache
        .join("go/mod/github.com/argoproj/argo-cd")
        .join(format!("v3@{version}"))
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn start(plane: &'static ControlPlane) -> Result<ArgoCd, Unavailable> {
    let how = "Run scripts/build-peers.sh argocd (several minutes the first time) and \
               scripts/install-system-packages.sh (redis-server, git)."
        .to_string();
    let bin = tools_bin_dir();
    let missing = |what: String| Unavailable::Missing {
        what,
        how: how.clone(),
    };
    for role in ["argocd-application-controller", "argocd-repo-server"] {
        if !bin.join(role).is_file() {
            return Err(missing(bin.join(role).display().to_string()));
        }
    }
    let redis = find_on_path("redis-server").ok_or_else(|| missing("redis-server".into()))?;
    let version = pinned_version();
    let module = module_dir(&version);
    if !module.join("manifests/crds").is_dir() {
        return Err(missing(format!(
            "Argo CD {version}'s module source ({})",
            module.display()
        )));
    }

    let dir = plane.dir.join("argocd");
    std::fs::create_dir_all(dir.join("tmp")).map_err(|e| Unavailable::Failed(e.to_string()))?;
    let started = Instant::now();
    install(plane, &module).map_err(Unavailable::Failed)?;
    let installed = started.elapsed();

    let mut daemons = Vec::new();
    let redis_port = free_port();
    let mut redis = Daemon::spawn(
        "redis-server",
        &redis,
        &[
            "--bind".into(),
            "127.0.0.1".into(),
            "--port".into(),
            redis_port.to_string(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
            "--dir".into(),
            dir.display().to_string(),
        ],
        &[],
        &dir.join("redis.log"),
    );
    redis.wait_for_port(redis_port, Duration::from_secs(20));
    daemons.push(redis);
    let redis_addr = format!("127.0.0.1:{redis_port}");

    // Both find `argocd` (git's askpass helper) and each other's names on PATH; git
    // runs without the machine's configuration; scratch files stay in this directory.
    let path = std::env::join_paths(std::iter::once(bin.clone()).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .unwrap()
    .into_string()
    .unwrap();
    let kubeconfig = plane.kubeconfig.display().to_string();
    let common_env = vec![
        ("PATH", path),
        ("TMPDIR", dir.join("tmp").display().to_string()),
        ("HOME", dir.display().to_string()),
        ("GIT_CONFIG_NOSYSTEM", "1".to_string()),
        ("ARGOCD_GPG_ENABLED", "false".to_string()),
        (
            "ARGOCD_ASK_PASS_SOCK",
            dir.join("askpass.sock").display().to_string(),
        ),
        ("KUBECONFIG", kubeconfig.clone()),
    ];

    let repo_port = free_port();
    let repo_metrics = free_port();
    let mut repo_server = Daemon::spawn(
        "argocd-repo-server",
        &bin.join("argocd-repo-server"),
        &[
            "--address=127.0.0.1".into(),
            format!("--port={repo_port}"),
            "--metrics-address=127.0.0.1".into(),
            format!("--metrics-port={repo_metrics}"),
            "--disable-tls".into(),
            format!("--redis={redis_addr}"),
            "--logformat=text".into(),
        ],
        &common_env,
        &dir.join("argocd-repo-server.log"),
    );
    repo_server.wait_for_port(repo_port, Duration::from_secs(60));
    daemons.push(repo_server);

    let controller_metrics = free_port();
    let mut env = common_env.clone();
    // The in-cluster destination (https://kubernetes.default.svc) is the cluster of
    // $KUBECONFIG rather than a Pod's service account.
    env.push(("ARGOCD_FAKE_IN_CLUSTER", "true".to_string()));
    let mut controller = Daemon::spawn(
        "argocd-application-controller",
        &bin.join("argocd-application-controller"),
        &[
            format!("--kubeconfig={kubeconfig}"),
            format!("--namespace={NAMESPACE}"),
            format!("--redis={redis_addr}"),
            format!("--repo-server=127.0.0.1:{repo_port}"),
            "--repo-server-plaintext".into(),
            // Listens on 0.0.0.0 (not configurable); only loopback is used.
            format!("--metrics-port={controller_metrics}"),
            format!("--app-resync={RESYNC_SECONDS}"),
            "--app-resync-jitter=0".into(),
            "--persist-resource-health".into(),
            "--status-processors=4".into(),
            "--operation-processors=4".into(),
            "--logformat=text".into(),
        ],
        &env,
        &dir.join("argocd-application-controller.log"),
    );
    controller.wait_for_healthz(controller_metrics, Duration::from_secs(120));
    daemons.push(controller);

    eprintln!(
        "Argo CD {version} in {}: configured in {:.1}s, running {:.1}s later",
        dir.display(),
        installed.as_secs_f64(),
        (started.elapsed() - installed).as_secs_f64()
    );
    Ok(ArgoCd {
        daemons: Mutex::new(daemons),
    })
}

/// The `data` of the module's base ConfigMap `manifests/base/config/NAME.yaml`.
fn base_config_map(module: &Path, name: &str) -> Result<Value, String> {
    let path = module.join(format!("manifests/base/config/{name}.yaml"));
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let object: Value =
        serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(object.get("data").cloned().unwrap_or_else(|| json!({})))
}

/// berth's health checks as the argo-cd chart's `configs.cm` (argocd-cm) values.
pub fn berth_argocd_cm_values() -> serde_json::Map<String, Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/argocd/argocd-cm-values.yaml");
    let values: Value = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    values["configs"]["cm"]
        .as_object()
        .expect("configs.cm in deploy/argocd/argocd-cm-values.yaml")
        .clone()
}

/// Argo CD's CRDs and configuration, applied server-side (the Application CRD is too
/// large for client-side apply's annotation).
fn install(plane: &ControlPlane, module: &Path) -> Result<(), String> {
    let kubectl = |args: &[&str], input: Option<&str>| {
        let out = plane.kubectl(args, input);
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(format!("installing Argo CD: {out}"))
        }
    };
    let apply = ["apply", "--server-side", "--field-manager=berth-tests"];
    for crd in ["application", "appproject", "applicationset"] {
        let file = module.join(format!("manifests/crds/{crd}-crd.yaml"));
        let file = file.display().to_string();
        kubectl(&[&apply[..], &["-f", &file]].concat(), None)?;
    }
    // `kubectl wait` fails at once ("accessor error") on a CRD that has no status yet,
    // so it is asked again until the deadline.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let established = kubectl(
            &[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "crd/applications.argoproj.io",
                "crd/appprojects.argoproj.io",
                "crd/applicationsets.argoproj.io",
            ],
            None,
        );
        match established {
            Ok(_) => break,
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }

    let mut cm = base_config_map(module, "argocd-cm")?;
    let data = cm.as_object_mut().ok_or("argocd-cm data is not a map")?;
    data.extend(berth_argocd_cm_values());
    data.insert(
        "timeout.reconciliation".into(),
        json!(format!("{RESYNC_SECONDS}s")),
    );
    // Argo CD reads only objects labelled as its own.
    let labels =
        |name: &str| json!({"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "argocd"});
    let objects = json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
            {"apiVersion": "v1", "kind": "ConfigMap",
             "metadata": {"name": "argocd-cm", "namespace": NAMESPACE, "labels": labels("argocd-cm")},
             "data": cm},
            {"apiVersion": "v1", "kind": "ConfigMap",
             "metadata": {"name": "argocd-rbac-cm", "namespace": NAMESPACE, "labels": labels("argocd-rbac-cm")}},
            {"apiVersion": "v1", "kind": "ConfigMap",
             "metadata": {"name": "argocd-cmd-params-cm", "namespace": NAMESPACE, "labels": labels("argocd-cmd-params-cm")},
             "data": {"controller.resource.health.persist": "true"}},
            // The key argocd-server generates at its first start; the controller needs
            // it to read cluster settings, even the in-cluster one's.
            {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
             "metadata": {"name": "argocd-secret", "namespace": NAMESPACE, "labels": labels("argocd-secret")},
             "stringData": {"server.secretkey": uuid::Uuid::new_v4().simple().to_string()}},
            // What argocd-server creates at start when it is missing.
            {"apiVersion": "argoproj.io/v1alpha1", "kind": "AppProject",
             "metadata": {"name": "default", "namespace": NAMESPACE},
             "spec": {
                 "sourceRepos": ["*"],
                 "destinations": [{"server": "*", "namespace": "*"}],
                 "clusterResourceWhitelist": [{"group": "*", "kind": "*"}],
             }},
        ],
    });
    kubectl(
        &[&apply[..], &["-f", "-"]].concat(),
        Some(&objects.to_string()),
    )?;
    Ok(())
}
