//! The Helm chart: lints clean, renders what the real apiserver accepts, and installs.

use std::process::Command;

use crate::cluster::TestCluster;
use crate::common::{require_tool, run};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/berth");
const S3_VALUES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/charts/berth/ci/s3-values.yaml"
);

#[test]
fn the_chart_lints_clean_with_default_and_s3_values() {
    let Some(helm) = require_tool("helm") else {
        return;
    };
    run(Command::new(&helm).args(["lint", "--strict", CHART]));
    run(Command::new(&helm).args(["lint", "--strict", CHART, "-f", S3_VALUES]));
}

/// Least privilege: berth reads Secrets only in its own namespace (a Role); across the
/// cluster it may only write them (pull Secrets, by server-side apply) and delete them.
#[test]
fn the_chart_grants_no_cluster_wide_secret_read() {
    let Some(helm) = require_tool("helm") else {
        return;
    };
    let rendered = run(Command::new(&helm).args(["template", "rel", CHART, "-n", "berth-system"]));
    let mut cluster_secret_verbs = Vec::new();
    let mut namespaced_secret_verbs = Vec::new();
    for document in serde_yaml::Deserializer::from_str(&rendered) {
        let doc: serde_yaml::Value = serde::Deserialize::deserialize(document).unwrap();
        let kind = doc["kind"].as_str().unwrap_or_default();
        let target = match kind {
            "ClusterRole" => &mut cluster_secret_verbs,
            "Role" => &mut namespaced_secret_verbs,
            _ => continue,
        };
        for rule in doc["rules"].as_sequence().into_iter().flatten() {
            let resources: Vec<&str> = rule["resources"]
                .as_sequence()
                .into_iter()
                .flatten()
                .filter_map(|r| r.as_str())
                .collect();
            if resources.iter().any(|r| *r == "secrets" || *r == "*") {
                target.extend(
                    rule["verbs"]
                        .as_sequence()
                        .into_iter()
                        .flatten()
                        .filter_map(|v| v.as_str().map(str::to_string)),
                );
            }
        }
    }
    for read in ["get", "list", "watch", "*"] {
        assert!(
            !cluster_secret_verbs.iter().any(|v| v == read),
            "a ClusterRole grants {read} on Secrets: {cluster_secret_verbs:?}"
        );
    }
    assert!(
        cluster_secret_verbs.iter().any(|v| v == "patch"),
        "pull Secrets are written"
    );
    assert!(
        namespaced_secret_verbs.iter().any(|v| v == "watch"),
        "users are watched in berth's namespace"
    );
}

#[test]
fn the_chart_crds_are_the_generated_ones() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/sync-chart-crds.sh");
    run(Command::new("bash").args([script, "--check"]));
}

#[tokio::test]
async fn the_rendered_chart_is_accepted_by_the_apiserver_and_installs() {
    let Some(cluster) = TestCluster::start("chart").await else {
        return;
    };
    let Some(helm) = require_tool("helm") else {
        return;
    };
    let namespace = cluster.namespace();
    let release = cluster.unique("berth");
    let kubeconfig = cluster.kubeconfig_path().to_str().unwrap().to_string();

    for values in [None, Some(S3_VALUES)] {
        let mut template = Command::new(&helm);
        template.args(["template", &release, CHART, "-n", namespace]);
        if let Some(v) = values {
            template.args(["-f", v]);
        }
        let manifests = run(&mut template);
        cluster
            .kubectl_stdin(
                &[
                    "apply",
                    "--server-side",
                    "--dry-run=server",
                    "-n",
                    namespace,
                    "-f",
                    "-",
                ],
                &manifests,
            )
            .ok();
    }

    // S3 storage: a Deployment with replicas; kwok makes its Pods Ready.
    let installed = run(Command::new(&helm).args([
        "install",
        &release,
        CHART,
        "-n",
        namespace,
        "-f",
        S3_VALUES,
        "--set",
        "replicas=2",
        "--set",
        "defaultNamespace.enabled=false",
        "--wait",
        "--timeout",
        "120s",
        "--kubeconfig",
        &kubeconfig,
    ]));
    assert!(installed.contains("STATUS: deployed"), "{installed}");
    let ready = cluster
        .kubectl(&[
            "get",
            "deployment",
            "-n",
            namespace,
            "-l",
            "app.kubernetes.io/instance",
            "-o",
            "jsonpath={.items[*].status.readyReplicas}",
        ])
        .ok();
    assert_eq!(
        ready.trim(),
        "2",
        "the chart's Deployment runs two ready replicas"
    );
    run(Command::new(&helm).args([
        "uninstall",
        &release,
        "-n",
        namespace,
        "--wait",
        "--kubeconfig",
        &kubeconfig,
    ]));
}
