//! berth's CRDs as a cluster sees them: installed and Established, documented by
//! `kubectl explain`, listed by `kubectl get` with their printer columns. What the
//! apiserver rejects is in crds/validation.rs, server-side apply and defaults in
//! crds/apply.rs.

mod apply;
mod validation;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::cluster::{TEST_LABEL, TestCluster};
use crate::kubectl_output::{find_row, section, squash};
use crate::resources::{api_error, berth};

/// Every CRD is installed, its names accepted and Established, and the installed CRDs
/// are exactly what the Rust types generate: applying those again changes nothing.
#[tokio::test]
async fn every_crd_is_established_and_is_what_the_rust_types_generate() {
    let Some(cluster) = TestCluster::start("crds-established").await else {
        return;
    };
    let api = Api::<CustomResourceDefinition>::all(cluster.client());
    for crd in berth::api::crds() {
        let name = crd.metadata.name.clone().unwrap();
        let installed = api.get(&name).await.unwrap();
        let status = installed.status.clone().expect("status");
        for wanted in ["NamesAccepted", "Established"] {
            let condition = status
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == wanted);
            assert_eq!(
                condition.map(|c| c.status.as_str()),
                Some("True"),
                "{name}: {wanted} in {:?}",
                status.conditions
            );
        }
        let accepted = status.accepted_names.expect("acceptedNames");
        assert_eq!(accepted.plural, crd.spec.names.plural, "{name}");
        assert_eq!(accepted.short_names, crd.spec.names.short_names, "{name}");
        assert_eq!(
            accepted.categories,
            Some(vec!["berth".to_string()]),
            "{name}"
        );

        let reapplied = api
            .patch(
                &name,
                &PatchParams::apply("berth-tests"),
                &Patch::Apply(&crd),
            )
            .await
            .unwrap();
        assert_eq!(
            reapplied.metadata.generation, installed.metadata.generation,
            "{name}: the installed CRD differs from berth::api::crds()"
        );
    }
}

/// `kubectl explain` shows the Rust doc comments for every kind and for nested fields,
/// including those inside lists, and lists enum values.
#[tokio::test]
async fn kubectl_explain_shows_the_doc_comments_of_kinds_and_nested_fields() {
    let Some(cluster) = TestCluster::start("crds-explain").await else {
        return;
    };
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "rns",
            "A registry namespace (organisation, project or workspace)",
            &[],
        ),
        ("repository", "A repository of a registry namespace", &[]),
        (
            "syncrule",
            "Replicates repositories of a namespace to another registry",
            &[],
        ),
        (
            "agingrule",
            "Deletes old tags of a namespace's repositories",
            &[],
        ),
        (
            "trigger",
            "Updates a workload's image when a matching tag is pushed",
            &[],
        ),
        (
            "rns.spec.visibility",
            "Who may pull without being a member: `private` (members only)",
            &["private", "internal", "public"],
        ),
        (
            "rns.spec.members.permission",
            "read (pull), write (pull and push) or manage",
            &["read", "write", "manage"],
        ),
        (
            "repository.spec.deletionPolicy",
            "`Retain` (the default) keeps it, `Delete` removes every tag and manifest.",
            &["Retain", "Delete"],
        ),
        ("rrepo.spec.namespace", "Cannot change.", &[]),
        (
            "syncrule.spec.remote.credentialsSecret",
            "`username` and `password` keys",
            &[],
        ),
        (
            "agingrule.spec.keepCount",
            "Keep only this many most recently pushed tags",
            &[],
        ),
        (
            "trigger.spec.tags.mode",
            "`All`, `List` or `Regex`.",
            &["All", "List", "Regex"],
        ),
        (
            "trigger.status.history.latencyMs",
            "Milliseconds from push to patch.",
            &[],
        ),
    ];
    for &(path, phrase, values) in cases {
        let out = cluster.kubectl(&["explain", path]).ok();
        let shown = squash(section(&out, "DESCRIPTION:"));
        assert_eq!(
            shown,
            squash(&schema_description(path)),
            "kubectl explain {path}"
        );
        assert!(shown.contains(phrase), "kubectl explain {path}: {shown}");
        let listed: Vec<&str> = section(&out, "ENUM:").split_whitespace().collect();
        assert_eq!(listed, values, "kubectl explain {path}: enum values");
    }
}

/// `kubectl get berth -A` (the category) lists every kind, each table with the printer
/// columns of its Rust type, filled from the resources; `-o wide` adds the priority-1 ones.
#[tokio::test]
async fn kubectl_get_berth_lists_every_kind_with_its_printer_columns() {
    let Some(cluster) = TestCluster::start("crds-get-berth").await else {
        return;
    };
    let team = cluster.unique("team");
    let name = cluster.unique("list");
    for object in [
        berth("Namespace", &team, json!({"visibility": "public"})),
        berth(
            "Repository",
            &name,
            json!({"namespace": team, "name": "web"}),
        ),
        berth(
            "SyncRule",
            &name,
            json!({"direction": "Push", "namespace": team, "remote": {"url": "https://mirror.example.com"}}),
        ),
        berth(
            "AgingRule",
            &name,
            json!({"namespace": team, "keepDays": 30, "dryRun": true}),
        ),
        berth(
            "Trigger",
            &name,
            json!({"repository": format!("{team}/web"), "target": {"name": "web"}}),
        ),
    ] {
        cluster.create(&object).await.unwrap();
    }

    let out = cluster.kubectl(&["get", "berth", "-A"]).ok();
    let row = |id: &str| find_row(&out, id);
    let (header, cells) = row(&format!("namespace.berth.dev/{team}"));
    assert_eq!(
        header,
        [
            "NAME",
            "VISIBILITY",
            "REPOSITORIES",
            "BYTES",
            "READY",
            "AGE"
        ]
    );
    assert_eq!(cells[1], "public");
    let (header, cells) = row(&format!("repository.berth.dev/{name}"));
    assert_eq!(
        header,
        ["NAME", "NAMESPACE", "PATH", "TAGS", "SIZE", "READY", "AGE"]
    );
    assert_eq!(cells[1..3], [team.as_str(), "web"]);
    let (header, cells) = row(&format!("syncrule.berth.dev/{name}"));
    let columns = [
        "NAME",
        "DIRECTION",
        "NAMESPACE",
        "REMOTE",
        "LAST RESULT",
        "LAST SUCCESS",
        "READY",
        "REASON",
        "AGE",
    ];
    assert_eq!(header, columns);
    assert_eq!(cells[1..4], ["Push", &team, "https://mirror.example.com"]);
    let (header, cells) = row(&format!("agingrule.berth.dev/{name}"));
    let columns = [
        "NAME",
        "NAMESPACE",
        "KEEP DAYS",
        "KEEP COUNT",
        "DRY RUN",
        "LAST RUN",
    ];
    assert_eq!(header[..6], columns);
    assert_eq!(
        header[6..],
        ["DELETED", "FREED", "NEXT RUN", "READY", "AGE"]
    );
    assert_eq!(cells[1..5], [team.as_str(), "30", "", "true"]);
    let (header, cells) = row(&format!("trigger.berth.dev/{name}"));
    let columns = [
        "NAMESPACE",
        "NAME",
        "REPOSITORY",
        "TARGET",
        "ENABLED",
        "READY",
        "AGE",
    ];
    assert_eq!(header, columns);
    assert_eq!(cells[0], cluster.namespace());
    assert_eq!(
        cells[2..5],
        [format!("{team}/web"), "web".into(), "true".into()]
    );

    let wide = cluster.kubectl(&["get", "berth", "-A", "-o", "wide"]).ok();
    let (header, _) = find_row(&wide, &format!("namespace.berth.dev/{team}"));
    assert!(header.contains(&"TAGS".to_string()), "{header:?}");
    let (header, _) = find_row(&wide, &format!("repository.berth.dev/{name}"));
    assert!(header.contains(&"PULLS".to_string()), "{header:?}");
}

/// `kubectl get rns` (the short name) lists registry namespaces with their visibility.
#[tokio::test]
async fn kubectl_get_rns_lists_registry_namespaces() {
    let Some(cluster) = TestCluster::start("crds-get-rns").await else {
        return;
    };
    let team = cluster.unique("team");
    let spec = json!({"visibility": "internal"});
    cluster
        .create(&berth("Namespace", &team, spec))
        .await
        .unwrap();
    let selector = format!("{TEST_LABEL}={}", cluster.id());
    let out = cluster.kubectl(&["get", "rns", "-l", &selector]).ok();
    let (header, cells) = find_row(&out, &team);
    assert_eq!(header[..2], ["NAME", "VISIBILITY"]);
    assert_eq!(cells[..2], [team.as_str(), "internal"]);
}

/// A berth Namespace can be read, changed and deleted by name, like any resource.
///
/// With the plural `namespaces` it could not: the apiserver reads
/// `/apis/berth.dev/v1alpha1/namespaces/NAME` as the Kubernetes namespace NAME and
/// answers 404 for a cluster-scoped resource (kubernetes/kubernetes#97397); create and
/// list worked, get, patch, status and delete by name did not.
#[tokio::test]
async fn a_berth_namespace_can_be_read_changed_and_deleted_by_name() {
    let Some(cluster) = TestCluster::start("crds-rns-by-name").await else {
        return;
    };
    let team = cluster.unique("team");
    cluster
        .create(&berth("Namespace", &team, json!({})))
        .await
        .unwrap();
    let api = Api::<berth::api::Namespace>::all(cluster.client());
    let hint = "is the plural `namespaces`? (kubernetes#97397)";

    let got = api.get(&team).await;
    assert!(got.is_ok(), "GET {team}: {hint}: {:?}", got.err());
    let patch = Patch::Merge(json!({"spec": {"visibility": "public"}}));
    let patched = api.patch(&team, &PatchParams::default(), &patch).await;
    assert!(patched.is_ok(), "PATCH {team}: {hint}: {:?}", patched.err());
    let out = cluster.kubectl(&["get", "rns", &team, "-o", "jsonpath={.spec.visibility}"]);
    assert_eq!(out.ok(), "public");
    cluster.kubectl(&["delete", "rns", &team]).ok();
    assert_eq!(api_error(api.get(&team).await).code, 404);
}

/// The description, in the CRD berth generates, of `kind.field.field…`, where kind is
/// any of its names and lists are stepped through as kubectl explain does.
fn schema_description(path: &str) -> String {
    let mut parts = path.split('.');
    let kind = parts.next().unwrap();
    let crd = berth::api::crds()
        .into_iter()
        .find(|crd| {
            let names = &crd.spec.names;
            [Some(&names.plural), names.singular.as_ref()].contains(&Some(&kind.to_string()))
                || names.short_names.iter().flatten().any(|s| s == kind)
        })
        .unwrap_or_else(|| panic!("no berth kind is called {kind}"));
    let crd = serde_json::to_value(crd).unwrap();
    let mut schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    for field in parts {
        while schema["type"] == "array" {
            schema = &schema["items"];
        }
        schema = &schema["properties"][field];
        assert!(schema.is_object(), "{path}: no field {field}");
    }
    while schema["type"] == "array" {
        schema = &schema["items"];
    }
    schema["description"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}
