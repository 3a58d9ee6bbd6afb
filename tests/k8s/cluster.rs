//! Each test's handle on the shared control plane: a kube client, kubectl, and a fresh
//! Kubernetes namespace; what the test created is deleted when the handle drops.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace as KubeNamespace, ServiceAccount};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::ApiResource;

use crate::common::missing_prerequisite;
use crate::control_plane::{self, ControlPlane, Kubectl, Unavailable};

/// Label on everything a test creates, valued with the test's id, for cleanup.
pub const TEST_LABEL: &str = "test.berth.dev/id";

/// One test's view of the shared control plane.
pub struct TestCluster {
    shared: &'static ControlPlane,
    client: kube::Client,
    id: String,
    namespaces: Mutex<Vec<String>>,
    started: Instant,
}

impl TestCluster {
    /// The shared control plane (started on first use) and a fresh Kubernetes namespace
    /// named after `prefix`. `None` when the control plane is not built and this is not CI.
    pub async fn start(prefix: &str) -> Option<TestCluster> {
        let shared = match tokio::task::spawn_blocking(control_plane::shared)
            .await
            .unwrap()
        {
            Ok(shared) => shared,
            Err(Unavailable::Missing { what, how }) => {
                missing_prerequisite(what, how);
                return None;
            }
            Err(Unavailable::Failed(why)) => panic!("no test control plane: {why}"),
        };
        let cluster = TestCluster {
            shared,
            client: client_for(&shared.kubeconfig).await,
            id: unique_name(prefix),
            namespaces: Mutex::new(Vec::new()),
            started: Instant::now(),
        };
        cluster.namespaces.lock().unwrap().push(cluster.id.clone());
        cluster.create_namespace(&cluster.id).await;
        Some(cluster)
    }

    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    pub fn kubeconfig_path(&self) -> &Path {
        &self.shared.kubeconfig
    }

    /// The shared control plane itself, for fixtures that outlive this test (Argo CD).
    pub fn control_plane(&self) -> &'static ControlPlane {
        self.shared
    }

    /// The directory of the shared control plane (logs are `NAME.log` there).
    #[allow(dead_code, reason = "for tests that read the control plane's logs")]
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// This test's id: also the name of its own Kubernetes namespace.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// This test's own Kubernetes namespace, created for it.
    pub fn namespace(&self) -> &str {
        &self.id
    }

    /// A name no other test uses: `base-<id suffix>`.
    pub fn unique(&self, base: &str) -> String {
        let suffix = self.id.rsplit('-').next().unwrap();
        format!("{base}-{suffix}")
    }

    /// Another fresh Kubernetes namespace, deleted with this handle.
    #[allow(dead_code, reason = "for the operator tests")]
    pub async fn fresh_namespace(&self, prefix: &str) -> String {
        let name = unique_name(prefix);
        self.namespaces.lock().unwrap().push(name.clone());
        self.create_namespace(&name).await;
        name
    }

    async fn create_namespace(&self, name: &str) {
        let ns: KubeNamespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {TEST_LABEL: self.id}}
        }))
        .unwrap();
        Api::<KubeNamespace>::all(self.client())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
        // Pods need the default ServiceAccount, which the controller-manager adds.
        let accounts = Api::<ServiceAccount>::namespaced(self.client(), name);
        let deadline = Instant::now() + Duration::from_secs(30);
        while accounts.get_opt("default").await.ok().flatten().is_none() {
            assert!(
                Instant::now() < deadline,
                "no default ServiceAccount in {name}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs kubectl against the cluster.
    pub fn kubectl(&self, args: &[&str]) -> Kubectl {
        self.shared.kubectl(args, None)
    }

    /// Runs kubectl with `input` on its stdin (for `apply -f -`).
    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> Kubectl {
        self.shared.kubectl(args, Some(input))
    }
}

impl Drop for TestCluster {
    /// Deletes, best-effort, this test's namespaces and the cluster-scoped berth resources
    /// labelled with its id.
    fn drop(&mut self) {
        let kubeconfig = self.shared.kubeconfig.clone();
        let namespaces = std::mem::take(&mut *self.namespaces.lock().unwrap());
        let selector = format!("{TEST_LABEL}={}", self.id);
        // Drop cannot await; a thread with its own runtime can. It needs its own client:
        // a client serves requests on the runtime that made it, the test's, which is
        // blocked here.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let deletes = async move {
                let client = client_for(&kubeconfig).await;
                let background = DeleteParams::background();
                let api = Api::<KubeNamespace>::all(client.clone());
                for ns in namespaces {
                    let _ = api.delete(&ns, &background).await;
                }
                // By label, so whatever the test created goes, whatever its name.
                let selected = ListParams::default().labels(&selector);
                for resource in [
                    ApiResource::erase::<berth::api::Namespace>(&()),
                    ApiResource::erase::<berth::api::Repository>(&()),
                    ApiResource::erase::<berth::api::SyncRule>(&()),
                    ApiResource::erase::<berth::api::AgingRule>(&()),
                ] {
                    let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
                    let _ = api.delete_collection(&background, &selected).await;
                }
            };
            let limit = Duration::from_secs(30);
            runtime.block_on(async { tokio::time::timeout(limit, deletes).await })
        });
        let _ = cleanup.join();
        eprintln!("{}: {:.1}s", self.id, self.started.elapsed().as_secs_f64());
    }
}

/// A kube client for `kubeconfig`, serving requests on the current runtime.
async fn client_for(kubeconfig: &Path) -> kube::Client {
    // Both of rustls' providers are linked in, so it cannot pick one by itself.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = Kubeconfig::read_from(kubeconfig).expect("read kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(config, &KubeConfigOptions::default())
        .await
        .expect("kube config");
    kube::Client::try_from(config).expect("kube client")
}

/// `prefix-xxxxxxxx`, a valid DNS label unique to this call.
fn unique_name(prefix: &str) -> String {
    let mut base: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    base = base.trim_matches('-').to_string();
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{base}-{}", &random[..8])
}
