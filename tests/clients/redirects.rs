//! Real clients pulling from berth on MinIO with `--blob-redirect-min-size`: they follow
//! the `307` for the large layer to a presigned MinIO URL (berth counts its bytes as
//! redirected, not sent), verify it against its digest, and get the small blobs from
//! berth. Clients sign in, as for a private namespace; MinIO is given to them under
//! `localhost` (`--blob-redirect-endpoint`) while berth is `127.0.0.1`, as S3 is another
//! host than the registry in a deployment.

use crate::common::Berth;
use crate::http;
use crate::image::{Layout, TestImage};
use crate::minio_server;
use crate::tools::{Isolated, Skopeo, tools};

const MIB: usize = 1 << 20;

const CONFIG: &str = r#"
apiVersion: berth.dev/v1alpha1
kind: Namespace
metadata: {name: team}
spec:
  visibility: private
  members:
    - {user: writer, permission: write}
---
apiVersion: v1
kind: Secret
metadata: {name: writer, labels: {berth.dev/user: "true"}}
stringData: {password: writer-pw}
"#;

/// berth on a fresh MinIO prefix redirecting blobs of 1 MiB and more, ready for traffic.
fn redirecting_berth() -> Option<(Berth, tempfile::TempDir)> {
    let server = minio_server::shared()?;
    let config = tempfile::tempdir().unwrap();
    std::fs::write(config.path().join("config.yaml"), CONFIG).unwrap();
    let storage = format!(
        "s3://{}/clients-{}",
        server.bucket,
        uuid::Uuid::new_v4().simple()
    );
    let public = server.endpoint.replace("127.0.0.1", "localhost");
    let env = server.aws_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let berth = Berth::start_with(
        &[
            "--storage",
            &storage,
            "--config-dir",
            config.path().to_str().unwrap(),
            "--blob-redirect-min-size",
            "1MiB",
            "--blob-redirect-endpoint",
            &public,
        ],
        &env,
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while http::get(&format!("{}/readyz", berth.url()), None).status != 200 {
        assert!(std::time::Instant::now() < deadline, "berth never ready");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Some((berth, config))
}

/// The bytes of the image's blobs of 1 MiB or more: what one pull is redirected.
fn redirectable_bytes(img: &TestImage) -> u64 {
    let sizes: Vec<u64> = img
        .blob_digests()
        .iter()
        .map(|d| img.layout.blob(d).len() as u64)
        .collect();
    assert!(
        sizes.iter().any(|s| *s < MIB as u64),
        "the image has small blobs berth serves itself"
    );
    sizes.into_iter().filter(|s| *s >= MIB as u64).sum()
}

fn redirected_bytes(berth: &Berth) -> u64 {
    let metrics = http::get(&format!("{}/metrics", berth.url()), None).body;
    let metrics = String::from_utf8_lossy(&metrics).into_owned();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("berth_blob_redirected_bytes_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no berth_blob_redirected_bytes_total in {metrics}"))
}

fn assert_same_image(out: &Layout, img: &TestImage, tag: Option<&str>) {
    assert_eq!(out.manifest_digest(tag), img.manifest_digest);
    for blob in img.blob_digests() {
        assert_eq!(out.blob(&blob), img.layout.blob(&blob), "blob {blob}");
    }
}

#[test]
fn crane_pulls_a_large_layer_through_a_presigned_redirect_unchanged() {
    let Some([umoci, crane]) = tools(["umoci", "crane"]) else {
        return;
    };
    let Some((berth, _config)) = redirecting_berth() else {
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    let img = TestImage::build(&umoci, scratch.path());
    let crane = Isolated::new(&crane);
    crane.run(&[
        "auth",
        "login",
        &berth.addr,
        "-u",
        "writer",
        "-p",
        "writer-pw",
    ]);
    let reference = format!("{}/team/crane:v1", berth.addr);
    crane.run(&[
        "push",
        "--insecure",
        img.layout.dir.to_str().unwrap(),
        &reference,
    ]);
    assert_eq!(redirected_bytes(&berth), 0, "a push redirects nothing");

    let out = Layout::at(scratch.path().join("pulled"));
    crane.run(&[
        "pull",
        "--insecure",
        "--format",
        "oci",
        &reference,
        out.dir.to_str().unwrap(),
    ]);
    assert_same_image(&out, &img, None);
    assert_eq!(
        redirected_bytes(&berth),
        redirectable_bytes(&img),
        "the large layer came from MinIO"
    );
}

#[test]
fn skopeo_copies_an_image_out_through_a_presigned_redirect_unchanged() {
    let Some([umoci, skopeo]) = tools(["umoci", "skopeo"]) else {
        return;
    };
    let Some((berth, _config)) = redirecting_berth() else {
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    let img = TestImage::build(&umoci, scratch.path());
    let skopeo = Skopeo::new(&skopeo);
    let remote = format!("docker://{}/team/skopeo:v1", berth.addr);
    skopeo.copy(
        &format!("oci:{}:{}", img.layout.dir.display(), TestImage::TAG),
        &remote,
        &["--dest-creds", "writer:writer-pw"],
    );

    let out = Layout::at(scratch.path().join("out"));
    skopeo.copy(
        &remote,
        &format!("oci:{}:copied", out.dir.display()),
        &["--src-creds", "writer:writer-pw"],
    );
    assert_same_image(&out, &img, Some("copied"));
    assert_eq!(redirected_bytes(&berth), redirectable_bytes(&img));

    // Without credentials there is no redirect to follow: the pull is refused.
    let refused = skopeo
        .cmd()
        .args(["copy", "--quiet", "--src-tls-verify=false", &remote])
        .arg(format!("oci:{}:anon", out.dir.display()))
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert_eq!(redirected_bytes(&berth), redirectable_bytes(&img));
}
