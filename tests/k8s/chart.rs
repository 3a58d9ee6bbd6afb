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
                    "--force-conflicts",
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
        // The shared test cluster has berth's CRDs already, installed without Helm.
        "--set",
        "crds.enabled=false",
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

/// `text` without the YAML block that starts at the line `key:` indented by `indent`
/// spaces (the line, and every deeper-indented line or list item after it).
fn without_block(text: &str, indent: usize, key: &str) -> String {
    let start = format!("{}{key}:", " ".repeat(indent));
    let mut out = Vec::new();
    let mut skipping = false;
    for line in text.lines() {
        let depth = line.len() - line.trim_start().len();
        if line == start {
            skipping = true;
            continue;
        }
        let list_item = depth == indent && line.trim_start().starts_with("- ");
        if skipping && (depth > indent || list_item) {
            continue;
        }
        skipping = false;
        out.push(line);
    }
    assert!(out.len() < text.lines().count(), "no {start:?} in the text");
    out.join("\n") + "\n"
}

/// A chart holding only the Trigger CRD template of charts/berth, under an API group of
/// its own and without the category `berth` and short names (the shared test cluster's
/// berth.dev CRDs, and `kubectl get berth` in other tests, stay untouched); `old` leaves
/// `spec.historyLimit` out of the schema, as an older chart would.
fn crd_only_chart(dir: &std::path::Path, group: &str, old: bool) {
    let templates = dir.join("templates");
    std::fs::create_dir_all(&templates).unwrap();
    for file in ["Chart.yaml", "values.yaml", "values.schema.json"] {
        std::fs::copy(format!("{CHART}/{file}"), dir.join(file)).unwrap();
    }
    std::fs::copy(
        format!("{CHART}/templates/_helpers.tpl"),
        templates.join("_helpers.tpl"),
    )
    .unwrap();
    let crd = std::fs::read_to_string(format!("{CHART}/templates/crds/triggers.berth.dev.yaml"))
        .unwrap()
        .replace("triggers.berth.dev", &format!("triggers.{group}"))
        .replace("group: berth.dev", &format!("group: {group}"));
    let crd = without_block(&without_block(&crd, 4, "categories"), 4, "shortNames");
    let crd = if old {
        without_block(&crd, 14, "historyLimit")
    } else {
        crd
    };
    std::fs::write(templates.join("crd.yaml"), crd).unwrap();
}

/// Helm never upgrades a chart's crds/ folder; berth's chart renders its CRDs from
/// templates, so `helm upgrade` to a chart whose CRD has a new field adds the field on
/// the apiserver (before, kubectl's strict validation refuses it), and with
/// `crds.keep` `helm uninstall` leaves the CRD in place.
#[tokio::test]
async fn helm_upgrade_upgrades_the_crds_and_uninstall_keeps_them() {
    let Some(cluster) = TestCluster::start("chart-crds").await else {
        return;
    };
    let Some(helm) = require_tool("helm") else {
        return;
    };
    let namespace = cluster.namespace();
    let release = cluster.unique("crds");
    let group = format!("{}.test.berth.dev", cluster.id());
    let crd_name = format!("triggers.{group}");
    let kubeconfig = cluster.kubeconfig_path().to_str().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (dir.path().join("old"), dir.path().join("new"));
    crd_only_chart(&old, &group, true);
    crd_only_chart(&new, &group, false);
    let helm_run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["-n", namespace, "--kubeconfig", &kubeconfig]);
        run(Command::new(&helm).args(&all))
    };
    let trigger = serde_json::json!({
        "apiVersion": format!("{group}/v1alpha1"),
        "kind": "Trigger",
        "metadata": {"name": "web", "namespace": namespace},
        "spec": {"repository": "team/web", "target": {"name": "web"}, "historyLimit": 3},
    })
    .to_string();
    let history_limit = || {
        cluster
            .kubectl(&[
                "get",
                &format!("triggers.{group}"),
                "web",
                "-n",
                namespace,
                "-o",
                "jsonpath={.spec.historyLimit}",
            ])
            .ok()
    };
    let wait_established = || {
        cluster
            .kubectl(&[
                "wait",
                "--for=condition=Established",
                &format!("crd/{crd_name}"),
                "--timeout=30s",
            ])
            .ok()
    };

    helm_run(&["install", &release, old.to_str().unwrap(), "--wait"]);
    wait_established();
    let refused = cluster
        .kubectl_stdin(&["apply", "-f", "-"], &trigger)
        .fails();
    assert!(
        refused.contains(r#"unknown field "spec.historyLimit""#),
        "the old CRD has no historyLimit: {refused}"
    );

    helm_run(&["upgrade", &release, new.to_str().unwrap(), "--wait"]);
    wait_established();
    let schema = cluster
        .kubectl(&[
            "get",
            "crd",
            &crd_name,
            "-o",
            "jsonpath={.spec.versions[0].schema.openAPIV3Schema.properties.spec.properties.historyLimit.maximum}",
        ])
        .ok();
    assert_eq!(schema, "100", "helm upgrade added the field to the CRD");
    cluster.kubectl_stdin(&["apply", "-f", "-"], &trigger).ok();
    assert_eq!(history_limit(), "3", "the upgraded CRD keeps the new field");

    let keep = cluster
        .kubectl(&[
            "get",
            "crd",
            &crd_name,
            "-o",
            "jsonpath={.metadata.annotations.helm\\.sh/resource-policy}",
        ])
        .ok();
    assert_eq!(keep, "keep");
    helm_run(&["uninstall", &release, "--wait"]);
    assert_eq!(
        history_limit(),
        "3",
        "helm uninstall kept the CRD and the resources"
    );
    cluster
        .kubectl(&["delete", "crd", &crd_name, "--wait=false"])
        .ok();
}
