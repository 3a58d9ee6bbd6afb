//! `berth operator` as its own process against the test cluster.

use std::ops::{Deref, DerefMut};

use crate::cluster::{TEST_LABEL, TestCluster};
use crate::common::Berth;

/// `berth operator --listen 127.0.0.1:0 --data-dir TMP EXTRA…`, configured like a Pod of
/// the test's namespace: KUBECONFIG, POD_NAMESPACE and a unique POD_NAME. Killed when
/// dropped; `kill` and `restart` (same data directory and port) come from `Berth`.
#[allow(dead_code, reason = "pod_* are for the operator tests")]
pub struct Operator {
    berth: Berth,
    pub pod_name: String,
    pub pod_namespace: String,
}

/// The administrator every test operator has, declared as a user Secret in its namespace.
pub const ADMIN_USER: &str = "test-admin";
pub const ADMIN_PASSWORD: &str = "test-admin-password";

/// `Authorization: Basic …` for the test administrator.
pub fn admin_basic_auth() -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{ADMIN_USER}:{ADMIN_PASSWORD}"))
    )
}

/// `skopeo --creds`/`--dest-creds` value for the test administrator.
pub fn admin_creds() -> String {
    format!("{ADMIN_USER}:{ADMIN_PASSWORD}")
}

impl Operator {
    pub fn start(cluster: &TestCluster, extra_args: &[&str]) -> Operator {
        Operator::start_with_env(cluster, extra_args, &[])
    }

    /// As [`Operator::start`], with more environment (e.g. the S3 settings).
    pub fn start_with_env(
        cluster: &TestCluster,
        extra_args: &[&str],
        extra_env: &[(&str, &str)],
    ) -> Operator {
        let admin = format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {ADMIN_USER}\n  namespace: {}\n  labels: {{berth.dev/user: \"true\"}}\nstringData:\n  password: {ADMIN_PASSWORD}\n  admin: \"true\"\n",
            cluster.namespace()
        );
        cluster.kubectl_stdin(&["apply", "-f", "-"], &admin).ok();
        // Every replica needs its own identity, or two would both believe they hold the Lease.
        static REPLICA: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let replica = REPLICA.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let pod_name = cluster.unique(&format!("berth-operator-{replica}"));
        let pod_namespace = cluster.namespace().to_string();
        let kubeconfig = cluster.kubeconfig_path().to_str().expect("UTF-8 path");
        // Its own Git cache, as each Pod has its own /tmp.
        let git_cache = cluster.dir().join(format!("git-cache-{pod_name}"));
        let mut env = vec![
            ("KUBECONFIG", kubeconfig),
            ("POD_NAMESPACE", &pod_namespace),
            ("POD_NAME", &pod_name),
            ("BERTH_GIT_CACHE", git_cache.to_str().expect("UTF-8 path")),
        ];
        env.extend_from_slice(extra_env);
        let berth = Berth::start_subcommand("operator", extra_args, &env);
        let operator = Operator {
            berth,
            pod_name,
            pod_namespace,
        };
        operator.wait_ready();
        operator
    }

    /// Waits for `/readyz`: the configuration and the users are loaded, as a Pod's
    /// readiness probe would wait before the Service sends it traffic.
    pub fn wait_ready(&self) {
        use std::io::{Read as _, Write as _};
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let ready = std::net::TcpStream::connect(&self.addr)
                .and_then(|mut s| {
                    write!(
                        s,
                        "GET /readyz HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                        self.addr
                    )?;
                    let mut reply = String::new();
                    s.read_to_string(&mut reply)?;
                    Ok(reply.starts_with("HTTP/1.1 200"))
                })
                .unwrap_or(false);
            if ready {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "berth operator {} never became ready",
                self.pod_name
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

impl Deref for Operator {
    type Target = Berth;
    fn deref(&self) -> &Berth {
        &self.berth
    }
}

impl DerefMut for Operator {
    fn deref_mut(&mut self) -> &mut Berth {
        &mut self.berth
    }
}

/// The operator serves the registry API on the address it reports. It manages only
/// this test's resources (`--selector`), as every operator in the shared cluster must.
#[tokio::test]
async fn the_operator_serves_the_registry_on_the_address_it_reports() {
    let Some(cluster) = TestCluster::start("operator-listens").await else {
        return;
    };
    let selector = format!("{TEST_LABEL}={}", cluster.id());
    let operator = Operator::start(&cluster, &["--selector", &selector]);
    let response = reqwest::get(format!("{}/v2/", operator.url()))
        .await
        .expect("the operator answers HTTP");
    assert_eq!(response.status(), 401, "anonymous callers are challenged");
    let response = reqwest::Client::new()
        .get(format!("{}/v2/", operator.url()))
        .header("authorization", admin_basic_auth())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "the administrator is let in");
}
