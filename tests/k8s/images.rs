//! Test images: an OCI layout written by hand, pushed with skopeo as the test admin.

use std::path::Path;
use std::process::Command;

use serde_json::json;

use crate::common::{run, sha256};

/// An OCI image layout with one image whose layer is unique to `seed`.
pub fn oci_layout(dir: &Path, seed: &str) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let write = |data: &[u8]| {
        let digest = sha256(data);
        std::fs::write(blobs.join(&digest[7..]), data).unwrap();
        (digest, data.len())
    };
    let config =
        write(br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#);
    let layer = write(format!("layer of {seed}").as_bytes());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.0, "size": config.1},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer.0, "size": layer.1}],
    })
    .to_string();
    let manifest = write(manifest.as_bytes());
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest.0, "size": manifest.1,
            "annotations": {"org.opencontainers.image.ref.name": "image"},
        }],
    });
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
}

/// Pushes an image unique to `seed` as `addr/repo:tag` with skopeo; returns the digest
/// of the manifest as pushed (skopeo may rewrite the layout's).
pub fn skopeo_push(skopeo: &Path, addr: &str, repo: &str, tag: &str, seed: &str) -> String {
    let layout = tempfile::tempdir().unwrap();
    oci_layout(layout.path(), seed);
    let digest_file = layout.path().join("pushed-digest");
    run(Command::new(skopeo).args([
        "copy",
        "--insecure-policy",
        "--dest-tls-verify=false",
        "--dest-creds",
        &crate::operator::admin_creds(),
        "--digestfile",
        digest_file.to_str().unwrap(),
        &format!("oci:{}:image", layout.path().display()),
        &format!("docker://{addr}/{repo}:{tag}"),
    ]));
    std::fs::read_to_string(digest_file)
        .unwrap()
        .trim()
        .to_string()
}
