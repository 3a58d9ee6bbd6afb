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

impl Operator {
    pub fn start(cluster: &TestCluster, extra_args: &[&str]) -> Operator {
        // Every replica needs its own identity, or two would both believe they hold the Lease.
        static REPLICA: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let replica = REPLICA.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let pod_name = cluster.unique(&format!("berth-operator-{replica}"));
        let pod_namespace = cluster.namespace().to_string();
        let kubeconfig = cluster.kubeconfig_path().to_str().expect("UTF-8 path");
        let berth = Berth::start_subcommand(
            "operator",
            extra_args,
            &[
                ("KUBECONFIG", kubeconfig),
                ("POD_NAMESPACE", &pod_namespace),
                ("POD_NAME", &pod_name),
            ],
        );
        Operator {
            berth,
            pod_name,
            pod_namespace,
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
    assert!(
        response.status() == 200 || response.status() == 401,
        "GET /v2/ answered {}",
        response.status()
    );
}
