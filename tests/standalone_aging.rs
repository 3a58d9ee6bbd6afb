//! AgingRules in standalone `berth serve --config-dir`: a rule in the folder runs when
//! its `berth.dev/run-now` annotation changes in the file, deletes the old tags, and the
//! garbage collection after it frees their blobs.

mod common;

use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Berth, run, sha256};
use reqwest::{Client, StatusCode};

const USER: &str = "root";
const PASSWORD: &str = "aging-test-password";

fn rule(run_now: &str) -> String {
    format!(
        "apiVersion: berth.dev/v1alpha1\nkind: AgingRule\nmetadata:\n  name: keep-newest\n  annotations:\n    berth.dev/run-now: \"{run_now}\"\nspec:\n  namespace: team\n  keepCount: 1\n"
    )
}

async fn push(client: &Client, url: &str, tag: &str, layer: &[u8]) -> String {
    let mut blobs = Vec::new();
    for data in [b"{}".as_slice(), layer] {
        let digest = sha256(data);
        client
            .post(format!("{url}/v2/team/app/blobs/uploads/?digest={digest}"))
            .basic_auth(USER, Some(PASSWORD))
            .body(data.to_vec())
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
        blobs.push(digest);
    }
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":{}}}]}}"#,
        blobs[0],
        blobs[1],
        layer.len()
    );
    client
        .put(format!("{url}/v2/team/app/manifests/{tag}"))
        .basic_auth(USER, Some(PASSWORD))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    blobs.remove(1)
}

#[tokio::test]
async fn a_folder_aging_rule_runs_on_request_deletes_old_tags_and_frees_their_blobs() {
    let config = tempfile::tempdir().unwrap();
    std::fs::write(
        config.path().join("users.yaml"),
        format!("apiVersion: v1\nkind: Secret\nmetadata:\n  name: root\n  labels: {{berth.dev/user: \"true\"}}\nstringData:\n  username: {USER}\n  password: {PASSWORD}\n  admin: \"true\"\n"),
    )
    .unwrap();
    std::fs::write(
        config.path().join("team.yaml"),
        "apiVersion: berth.dev/v1alpha1\nkind: Namespace\nmetadata:\n  name: team\nspec:\n  visibility: public\n",
    )
    .unwrap();
    std::fs::write(config.path().join("aging.yaml"), rule("0")).unwrap();
    let berth = Berth::start_with(
        &[
            "--config-dir",
            config.path().to_str().unwrap(),
            "--gc-grace",
            "0s",
        ],
        &[],
    );
    let client = Client::new();
    let url = berth.url();
    // Ready once the folder (and its users) is loaded: pushes before that are refused.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !client
        .get(format!("{url}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status() == StatusCode::OK)
    {
        assert!(Instant::now() < deadline, "berth never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let old_layer = push(&client, &url, "old", b"the old layer").await;
    push(&client, &url, "new", b"the new layer").await;
    let tag_file = |tag: &str| berth.data_dir.join("repositories/team+app/tags").join(tag);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for (tag, days) in [("old", 2), ("new", 1)] {
        let at = format!("@{}", now - days * 86_400);
        run(Command::new("touch")
            .args(["-m", "-d", &at])
            .arg(tag_file(tag)));
    }

    // Nothing runs until asked (the schedule is daily at 03:00).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(tag_file("old").exists());

    std::fs::write(config.path().join("aging.yaml"), rule("1")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = client
            .get(format!("{url}/v2/team/app/blobs/{old_layer}"))
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::NOT_FOUND && !tag_file("old").exists() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rule did not run: old is still there"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let hex = old_layer.trim_start_matches("sha256:");
    assert!(
        !berth.data_dir.join("blobs/sha256").join(hex).exists(),
        "the old layer's bytes were freed"
    );
    let tags: serde_json::Value = client
        .get(format!("{url}/v2/team/app/tags/list"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tags["tags"], serde_json::json!(["new"]));
}
