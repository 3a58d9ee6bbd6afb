//! What the apiserver refuses, before berth ever sees it: each invalid resource is
//! rejected through the kube client (422) and through `kubectl apply`, with a message
//! that names the field and says what is wrong.

use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::cluster::TestCluster;
use crate::resources::{api_error, assert_contains_all, berth};

#[tokio::test]
async fn a_visibility_other_than_private_internal_or_public_is_rejected() {
    let Some(cluster) = TestCluster::start("invalid-visibility").await else {
        return;
    };
    let team = berth(
        "Namespace",
        &cluster.unique("team"),
        json!({"visibility": "secret"}),
    );
    let fragments = [
        "spec.visibility",
        r#"Unsupported value: "secret""#,
        r#"supported values: "private", "internal", "public""#,
    ];
    cluster.assert_rejected(&team, &fragments).await;
}

#[tokio::test]
async fn a_member_listed_twice_is_rejected() {
    let Some(cluster) = TestCluster::start("invalid-members").await else {
        return;
    };
    let members = json!([
        {"user": "alice", "permission": "read"},
        {"user": "alice", "permission": "manage"},
    ]);
    let team = berth(
        "Namespace",
        &cluster.unique("team"),
        json!({"members": members}),
    );
    let fragments = ["spec.members[1]", "Duplicate value", "alice"];
    cluster.assert_rejected(&team, &fragments).await;
    let repository = berth(
        "Repository",
        &cluster.unique("repo"),
        json!({"namespace": "team", "name": "web", "members": members}),
    );
    cluster.assert_rejected(&repository, &fragments).await;
}

/// Kubernetes refuses `_` and uppercase in any resource name; berth's own rule also
/// refuses what DNS names allow but registry paths do not: `--`, and over 63 characters.
#[tokio::test]
async fn a_namespace_name_must_be_a_registry_path_component() {
    let Some(cluster) = TestCluster::start("invalid-rns-name").await else {
        return;
    };
    for name in ["team_a", "Team-A"] {
        let team = berth("Namespace", name, json!({}));
        let fragments = ["metadata.name", "a lowercase RFC 1123 subdomain"];
        cluster.assert_rejected(&team, &fragments).await;
    }
    let message = "a registry namespace name is lowercase letters and digits separated by single '.' or '-', at most 63 characters";
    for name in ["team--a", "acme.team--a", &"a".repeat(64)] {
        let team = berth("Namespace", name, json!({}));
        cluster.assert_rejected(&team, &[message]).await;
    }
    // The typed API sends the same request and gets the same answer.
    let api = Api::<berth::api::Namespace>::all(cluster.client());
    let team = berth::api::Namespace::new("team--a", Default::default());
    let status = api_error(api.create(&PostParams::default(), &team).await);
    assert_contains_all(&status.message, &[message], "the typed API's error");
}

#[tokio::test]
async fn an_aging_rule_keeps_by_days_or_by_count_not_both_nor_neither() {
    let Some(cluster) = TestCluster::start("invalid-aging").await else {
        return;
    };
    let fragments = ["spec", "set exactly one of keepDays and keepCount"];
    for spec in [
        json!({"namespace": "team", "keepDays": 30, "keepCount": 10}),
        json!({"namespace": "team"}),
    ] {
        let rule = berth("AgingRule", &cluster.unique("aging"), spec);
        cluster.assert_rejected(&rule, &fragments).await;
    }
}

#[tokio::test]
async fn a_pull_sync_rule_cannot_replicate_on_push() {
    let Some(cluster) = TestCluster::start("invalid-sync").await else {
        return;
    };
    let rule = berth(
        "SyncRule",
        &cluster.unique("sync"),
        json!({
            "direction": "Pull",
            "onPush": true,
            "namespace": "team",
            "remote": {"url": "https://upstream.example.com"},
        }),
    );
    let fragments = ["spec", "onPush only applies to direction Push"];
    cluster.assert_rejected(&rule, &fragments).await;
}

#[tokio::test]
async fn a_trigger_matching_a_list_of_tags_needs_the_list() {
    let Some(cluster) = TestCluster::start("invalid-trigger").await else {
        return;
    };
    let spec = |tags| json!({"repository": "team/web", "tags": tags, "target": {"name": "web"}});
    let message = "mode List needs names, mode Regex needs regex, and only then";
    for tags in [
        json!({"mode": "List"}),
        json!({"mode": "Regex"}),
        json!({"mode": "All", "names": ["v1"]}),
    ] {
        let trigger = berth("Trigger", &cluster.unique("trigger"), spec(tags));
        cluster
            .assert_rejected(&trigger, &["spec.tags", message])
            .await;
    }
}

/// A Repository's `spec.namespace` and `spec.name` are its identity in the registry:
/// changing either is refused, by the kube client and by kubectl, and nothing changes.
#[tokio::test]
async fn a_repository_cannot_move_to_another_namespace_or_name() {
    let Some(cluster) = TestCluster::start("immutable-repo").await else {
        return;
    };
    let name = cluster.unique("repo");
    let repository = berth(
        "Repository",
        &name,
        json!({"namespace": "team-a", "name": "web"}),
    );
    cluster.create(&repository).await.unwrap();
    let api = Api::<berth::api::Repository>::all(cluster.client());

    for (field, value, message) in [
        (
            "namespace",
            "team-b",
            "namespace cannot change; create a new Repository",
        ),
        ("name", "api", "name cannot change; create a new Repository"),
    ] {
        let fragments = [format!("spec.{field}"), message.to_string()];
        let fragments: Vec<&str> = fragments.iter().map(String::as_str).collect();
        let patch = Patch::Merge(json!({"spec": {field: value}}));
        let status = api_error(api.patch(&name, &PatchParams::default(), &patch).await);
        assert_eq!(status.code, 422, "{status:?}");
        assert_contains_all(&status.message, &fragments, "the kube client's error");

        let mut moved = repository.clone();
        moved["spec"][field] = json!(value);
        let stderr = cluster.kubectl_apply(&moved, &[]).fails();
        assert_contains_all(&stderr, &fragments, "kubectl's error");
    }
    let stored = api.get(&name).await.unwrap();
    assert_eq!(
        (stored.spec.namespace.as_str(), stored.spec.name.as_str()),
        ("team-a", "web")
    );
}
