//! The same access rules through the real clients: each signs in the way its users do
//! (skopeo and podman with --creds or login, ctr -u, crane auth login), and a denied
//! push shows the registry's own message.

use std::process::Command;

use crate::common::Berth;
use crate::image::TestImage;
use crate::tools::{Containerd, Isolated, Podman, Skopeo, tools};

const CONFIG: &str = r#"
apiVersion: berth.dev/v1alpha1
kind: Namespace
metadata: {name: team}
spec:
  visibility: private
  members:
    - {user: writer, permission: write}
    - {user: reader, permission: read}
---
apiVersion: v1
kind: Secret
metadata:
  name: writer
  labels: {berth.dev/user: "true"}
stringData: {password: writer-pw}
---
apiVersion: v1
kind: Secret
metadata:
  name: reader
  labels: {berth.dev/user: "true"}
stringData: {password: reader-pw}
"#;

/// A managed berth (config folder with the users above), ready for traffic.
fn managed_berth() -> (Berth, tempfile::TempDir) {
    let config = tempfile::tempdir().unwrap();
    std::fs::write(config.path().join("config.yaml"), CONFIG).unwrap();
    let berth = Berth::start_with(&["--config-dir", config.path().to_str().unwrap()], &[]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while crate::http::get(&format!("{}/readyz", berth.url()), None).status != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "berth never became ready"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    (berth, config)
}

fn failing(cmd: &mut Command) -> String {
    let out = cmd.output().expect("client runs");
    assert!(
        !out.status.success(),
        "expected a refusal, but it succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn oci_ref(img: &TestImage) -> String {
    format!("oci:{}:{}", img.layout.dir.display(), TestImage::TAG)
}

#[test]
fn skopeo_pushes_and_pulls_with_creds_and_shows_why_a_push_is_denied() {
    let Some([umoci, skopeo]) = tools(["umoci", "skopeo"]) else {
        return;
    };
    let (berth, _config) = managed_berth();
    let scratch = tempfile::tempdir().unwrap();
    let img = TestImage::build(&umoci, scratch.path());
    let skopeo = Skopeo::new(&skopeo);
    let remote = format!("docker://{}/team/app:v1", berth.addr);

    skopeo.copy(
        &oci_ref(&img),
        &remote,
        &["--dest-creds", "writer:writer-pw"],
    );
    let out = scratch.path().join("out");
    skopeo.copy(
        &remote,
        &format!("oci:{}:pulled", out.display()),
        &["--src-creds", "reader:reader-pw"],
    );

    let denied = failing(skopeo.cmd().args([
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        "reader:reader-pw",
        &oci_ref(&img),
        &format!("docker://{}/team/other:v1", berth.addr),
    ]));
    assert!(
        denied.contains("may not push team/other") && denied.contains("write"),
        "skopeo shows berth's reason: {denied}"
    );
    let anonymous = failing(skopeo.cmd().args([
        "copy",
        "--src-tls-verify=false",
        &remote,
        &format!("oci:{}:anon", out.display()),
    ]));
    assert!(
        anonymous.contains("unauthorized") || anonymous.contains("authentication required"),
        "{anonymous}"
    );
}

#[test]
fn podman_logs_in_then_pushes_and_pulls() {
    let Some([umoci, podman]) = tools(["umoci", "podman"]) else {
        return;
    };
    let (berth, _config) = managed_berth();
    let scratch = tempfile::tempdir().unwrap();
    let img = TestImage::build(&umoci, scratch.path());
    let archive = img.tar(&scratch.path().join("image.tar"));
    let podman = Podman::new(&podman, &berth.addr);
    let reference = format!("{}/team/podman:v1", berth.addr);
    podman.run(&["load", "--quiet", "--input", archive.to_str().unwrap()]);
    podman.run(&["tag", "localhost/t:latest", &reference]);

    let denied = failing(
        podman
            .cmd()
            .args(["push", "--tls-verify=false", &reference]),
    );
    assert!(
        denied.contains("unauthorized") || denied.contains("authentication required"),
        "{denied}"
    );
    let wrong = failing(podman.cmd().args([
        "login",
        "--tls-verify=false",
        "-u",
        "writer",
        "-p",
        "nope",
        &berth.addr,
    ]));
    assert!(wrong.contains("invalid username/password"), "{wrong}");

    podman.run(&[
        "login",
        "--tls-verify=false",
        "-u",
        "writer",
        "-p",
        "writer-pw",
        &berth.addr,
    ]);
    podman.run(&["push", "--quiet", "--tls-verify=false", &reference]);
    podman.run(&["rmi", "--all", "--force"]);
    podman.run(&["pull", "--quiet", "--tls-verify=false", &reference]);
}

#[test]
fn ctr_pushes_and_pulls_with_user_and_password() {
    let Some([umoci, containerd, ctr]) = tools(["umoci", "containerd", "ctr"]) else {
        return;
    };
    let (berth, _config) = managed_berth();
    let scratch = tempfile::tempdir().unwrap();
    let img = TestImage::build(&umoci, scratch.path());
    let archive = img.tar(&scratch.path().join("image.tar"));
    let daemon = Containerd::start(&containerd, &ctr);
    let base = format!("{}/team/ctr", berth.addr);
    let reference = format!("{base}:{}", TestImage::TAG);
    daemon.ctr(&[
        "images",
        "import",
        "--snapshotter",
        "native",
        "--base-name",
        &base,
        archive.to_str().unwrap(),
    ]);
    let denied = failing(daemon.cmd().args([
        "images",
        "push",
        "--plain-http",
        "-u",
        "reader:reader-pw",
        &reference,
    ]));
    assert!(
        denied.contains("may not push") || denied.contains("403"),
        "{denied}"
    );
    daemon.ctr(&[
        "images",
        "push",
        "--plain-http",
        "-u",
        "writer:writer-pw",
        &reference,
    ]);
    daemon.ctr(&["images", "rm", "--sync", &reference]);
    daemon.ctr(&[
        "images",
        "pull",
        "--plain-http",
        "--snapshotter",
        "native",
        "-u",
        "reader:reader-pw",
        &reference,
    ]);
    let metrics = crate::http::get(&format!("{}/metrics", berth.url()), None);
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    let grants: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("berth_auth_tokens_total{"))
        .collect();
    assert!(
        grants.iter().any(|l| l.contains("grant=\"password\"")),
        "containerd exchanges the password with the OAuth2 POST form: {grants:?}"
    );
}

/// crane signs in once; its pushes, copies and listings then go through the token flow
/// (GET with Basic auth), each token scoped to what it needs.
#[test]
fn crane_auth_login_then_push_list_and_catalog() {
    let Some([umoci, crane]) = tools(["umoci", "crane"]) else {
        return;
    };
    let (berth, _config) = managed_berth();
    let scratch = tempfile::tempdir().unwrap();
    let img = TestImage::build(&umoci, scratch.path());
    let crane = Isolated::new(&crane);
    let layout = img.layout.dir.to_str().unwrap();
    let reference = format!("{}/team/crane:v1", berth.addr);

    let anonymous = failing(crane.cmd().args(["push", "--insecure", layout, &reference]));
    assert!(anonymous.contains("401 Unauthorized"), "{anonymous}");

    crane.run(&[
        "auth",
        "login",
        "--insecure",
        &berth.addr,
        "-u",
        "writer",
        "-p",
        "writer-pw",
    ]);
    crane.run(&["push", "--insecure", layout, &reference]);
    crane.run(&[
        "copy",
        "--insecure",
        &reference,
        &format!("{}/team/crane:copy", berth.addr),
    ]);
    let tags = crane.run(&["ls", "--insecure", &format!("{}/team/crane", berth.addr)]);
    assert_eq!(tags.lines().collect::<Vec<_>>(), ["copy", "v1"]);
    let catalog = crane.run(&["catalog", "--insecure", &berth.addr]);
    assert_eq!(catalog.lines().collect::<Vec<_>>(), ["team/crane"]);

    let metrics = crate::http::get(&format!("{}/metrics", berth.url()), None);
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    let grants: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("berth_auth_tokens_total{"))
        .collect();
    assert!(
        grants.iter().any(|l| l.contains("grant=\"basic\"")),
        "crane fetches tokens with GET and Basic auth: {grants:?}"
    );
}
