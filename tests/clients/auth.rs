//! The same access rules through the real clients: each signs in the way its users do
//! (skopeo and podman with --creds or login, ctr -u, crane auth login, regctl with a
//! docker identity token), and a denied push shows the registry's own message.

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
    assert!(
        tokens_issued(&berth, "password") > 0,
        "containerd exchanges the password with the OAuth2 POST form"
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

    assert!(
        tokens_issued(&berth, "basic") > 0,
        "crane fetches tokens with GET and Basic auth"
    );
}

/// How many tokens berth issued for `grant` (`berth_auth_tokens_total`).
fn tokens_issued(berth: &Berth, grant: &str) -> u64 {
    let metrics = crate::http::get(&format!("{}/metrics", berth.url()), None);
    String::from_utf8_lossy(&metrics.body)
        .lines()
        .find(|l| l.starts_with(&format!("berth_auth_tokens_total{{grant=\"{grant}\"}}")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// `docker login` stores an identity token (a refresh token) instead of the password
/// when the registry offers one; clients then trade it for access tokens with the
/// OAuth2 `refresh_token` grant. regctl reads such a docker config and does exactly that.
#[test]
fn regctl_signs_in_with_a_docker_identity_token() {
    let Some([umoci, regctl]) = tools(["umoci", "regctl"]) else {
        return;
    };
    let (berth, _config) = managed_berth();
    let scratch = tempfile::tempdir().unwrap();
    let img = TestImage::build(&umoci, scratch.path());
    let regctl = Isolated::new(&regctl);
    regctl.run(&["registry", "set", &berth.addr, "--tls", "disabled"]);
    let reference = format!("{}/team/regctl:v1", berth.addr);
    let source = format!("ocidir://{}:{}", img.layout.dir.display(), TestImage::TAG);

    // The refresh token, as docker gets it at login (GET with offline_token=true).
    let identity_token = |user: &str, password: &str| -> String {
        let basic = format!(
            "Basic {}",
            base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                format!("{user}:{password}")
            )
        );
        let r = crate::http::get_with(
            &format!(
                "{}/auth/token?service=berth&offline_token=true&client_id=docker",
                berth.url()
            ),
            Some(("Authorization", &basic)),
        );
        assert_eq!(r.status, 200);
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        body["refresh_token"]
            .as_str()
            .expect("a refresh token for a signed-in user")
            .to_string()
    };
    let use_identity_token = |token: &str| {
        std::fs::write(
            regctl.docker_config_dir().join("config.json"),
            serde_json::json!({"auths": {berth.addr.as_str(): {"identitytoken": token}}})
                .to_string(),
        )
        .unwrap();
    };

    // A reader's token pulls but does not push, and regctl shows berth's reason.
    use_identity_token(&identity_token("reader", "reader-pw"));
    let denied = failing(regctl.cmd().args(["image", "copy", &source, &reference]));
    assert!(
        denied.contains("reader") && denied.contains("write"),
        "the refusal names the caller and the missing permission: {denied}"
    );

    // A writer's token pushes; no password is on disk.
    use_identity_token(&identity_token("writer", "writer-pw"));
    let before = tokens_issued(&berth, "refresh_token");
    regctl.run(&["image", "copy", &source, &reference]);
    assert_eq!(
        regctl.run(&["image", "digest", &reference]).trim(),
        img.manifest_digest
    );
    assert_eq!(
        regctl
            .run(&["tag", "ls", &format!("{}/team/regctl", berth.addr)])
            .trim(),
        "v1"
    );
    assert!(
        tokens_issued(&berth, "refresh_token") > before,
        "regctl traded the identity token for access tokens (grant_type=refresh_token)"
    );
}
