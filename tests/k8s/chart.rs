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

/// The documents `helm template` renders with `args` (values files and `--set`s).
fn rendered(helm: &std::path::Path, args: &[&str]) -> Vec<serde_yaml::Value> {
    let mut all = vec!["template", "rel", CHART, "-n", "berth-system"];
    all.extend(args);
    let text = run(Command::new(helm).args(&all));
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|d: &serde_yaml::Value| !d.is_null())
        .collect()
}

fn of_kind<'a>(docs: &'a [serde_yaml::Value], kind: &str) -> Vec<&'a serde_yaml::Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

/// `helm template` with `args` fails, and its message contains `expected`.
fn refused(helm: &std::path::Path, args: &[&str], expected: &str) {
    let mut all = vec!["template", "rel", CHART];
    all.extend(args);
    let out = Command::new(helm).args(&all).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} rendered");
    assert!(stderr.contains(expected), "{args:?}: {stderr}");
}

/// Scale-out mode (S3, several replicas): a PodDisruptionBudget, replicas preferring
/// distinct nodes, readiness on `/readyz` ("can serve") and liveness on `/healthz`.
#[test]
fn scale_out_renders_a_disruption_budget_anti_affinity_and_readiness_on_readyz() {
    let Some(helm) = require_tool("helm") else {
        return;
    };
    let docs = rendered(&helm, &["-f", S3_VALUES, "--set", "replicas=3"]);
    let deployment = of_kind(&docs, "Deployment")[0];
    assert_eq!(deployment["spec"]["replicas"], 3);
    let pod = &deployment["spec"]["template"]["spec"];
    let preferred = &pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        [0]["podAffinityTerm"];
    assert_eq!(preferred["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(
        preferred["labelSelector"]["matchLabels"], deployment["spec"]["selector"]["matchLabels"],
        "the replicas avoid each other"
    );
    let container = &pod["containers"][0];
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    let args: Vec<&str> = container["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    let after = |flag: &str| args.iter().position(|a| *a == flag).map(|i| args[i + 1]);
    assert_eq!(
        after("--push-log-poll"),
        Some("200ms"),
        "pushes to followers reach the leader through the bucket: {args:?}"
    );
    assert_eq!(after("--push-log-retention"), Some("10m"));
    let pdbs = of_kind(&docs, "PodDisruptionBudget");
    assert_eq!(pdbs.len(), 1);
    assert_eq!(pdbs[0]["spec"]["maxUnavailable"], 1);
    assert_eq!(
        pdbs[0]["spec"]["selector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );

    // Required anti-affinity and minAvailable, when asked for.
    let docs = rendered(
        &helm,
        &[
            "-f",
            S3_VALUES,
            "--set",
            "podAntiAffinity.type=hard",
            "--set",
            "podDisruptionBudget.minAvailable=2",
        ],
    );
    let pod = &of_kind(&docs, "Deployment")[0]["spec"]["template"]["spec"];
    let required =
        &pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"];
    assert_eq!(required[0]["topologyKey"], "kubernetes.io/hostname");
    let pdb = &of_kind(&docs, "PodDisruptionBudget")[0]["spec"];
    assert_eq!(pdb["minAvailable"], 2);
    assert!(pdb["maxUnavailable"].is_null(), "one of the two: {pdb:?}");

    // One replica: nothing to spread, no budget.
    let docs = rendered(&helm, &["-f", S3_VALUES, "--set", "replicas=1"]);
    assert!(of_kind(&docs, "PodDisruptionBudget").is_empty());
    let pod = &of_kind(&docs, "Deployment")[0]["spec"]["template"]["spec"];
    assert!(pod["affinity"].is_null(), "{:?}", pod["affinity"]);
}

/// The blob redirect values become berth's flags; the filesystem store refuses them and
/// refuses more than one replica, whatever its volume's access mode.
#[test]
fn the_chart_passes_blob_redirects_and_refuses_what_the_filesystem_store_cannot_do() {
    let Some(helm) = require_tool("helm") else {
        return;
    };
    let docs = rendered(
        &helm,
        &[
            "-f",
            S3_VALUES,
            "--set",
            "blobRedirect.minSize=16MiB",
            "--set",
            "blobRedirect.endpoint=https://s3.example.com",
        ],
    );
    let args: Vec<&str> = of_kind(&docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"]
        [0]["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let joined = args.join(" ");
    for expected in [
        "--blob-redirect-min-size 16MiB",
        "--blob-redirect-expiry 5m",
        "--blob-redirect-endpoint https://s3.example.com",
    ] {
        assert!(joined.contains(expected), "{expected} in {joined}");
    }
    let docs = rendered(&helm, &["-f", S3_VALUES]);
    let args = format!(
        "{:?}",
        of_kind(&docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    );
    assert!(!args.contains("blob-redirect"), "off by default: {args}");

    refused(&helm, &["--set", "replicas=2"], "needs storage.type=s3");
    refused(
        &helm,
        &[
            "--set",
            "replicas=2",
            "--set",
            "storage.filesystem.accessModes={ReadWriteMany}",
        ],
        "which a ReadWriteMany volume does not change",
    );
    refused(
        &helm,
        &["--set", "blobRedirect.minSize=16MiB"],
        "blobRedirect.minSize needs storage.type=s3",
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
    let budget = cluster
        .kubectl(&[
            "get",
            "poddisruptionbudget",
            "-n",
            namespace,
            "-l",
            &format!("app.kubernetes.io/instance={release}"),
            "-o",
            "jsonpath={.items[*].spec.maxUnavailable} {.items[*].status.expectedPods}",
        ])
        .ok();
    assert_eq!(
        budget.trim(),
        "1 2",
        "the budget covers both replicas, one may go at a time"
    );
    let spread = cluster
        .kubectl(&[
            "get",
            "pods",
            "-n",
            namespace,
            "-l",
            &format!("app.kubernetes.io/instance={release}"),
            "-o",
            "jsonpath={.items[*].spec.affinity.podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].podAffinityTerm.topologyKey}",
        ])
        .ok();
    assert_eq!(
        spread.trim(),
        "kubernetes.io/hostname kubernetes.io/hostname",
        "each running replica prefers a node of its own"
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
