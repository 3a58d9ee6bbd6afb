//! Image tarballs built by the test, as `docker save` (classic layout) and an OCI
//! image layout write them, with the system's `tar` and `gzip`.

use std::path::Path;
use std::process::Command;

use serde_json::json;

use crate::common::{run, sha256};

pub struct Tarball {
    pub bytes: Vec<u8>,
    pub layer_digest: String,
    pub config_digest: String,
}

fn tar_dir(dir: &Path) -> Vec<u8> {
    let out = dir.with_extension("tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(dir)
        .arg("-cf")
        .arg(&out)
        .arg("."));
    std::fs::read(out).unwrap()
}

/// A one-layer tar whose file holds `content`.
fn layer(work: &Path, content: &str) -> Vec<u8> {
    let root = work.join("rootfs");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("hello.txt"), content).unwrap();
    tar_dir(&root)
}

fn config(layer_digest: &str) -> Vec<u8> {
    json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/hello"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created": "2026-01-01T00:00:00Z", "created_by": "COPY hello.txt / # buildkit"}],
    })
    .to_string()
    .into_bytes()
}

/// `docker save`'s classic layout: `<id>/layer.tar`, `<config>.json`, `manifest.json`.
pub fn docker_save(content: &str) -> Tarball {
    let work = tempfile::tempdir().unwrap();
    let layer = layer(work.path(), content);
    let layer_digest = sha256(&layer);
    let config = config(&layer_digest);
    let config_digest = sha256(&config);
    let image = work.path().join("image");
    let id = &layer_digest[7..];
    std::fs::create_dir_all(image.join(id)).unwrap();
    std::fs::write(image.join(id).join("layer.tar"), &layer).unwrap();
    std::fs::write(image.join(id).join("VERSION"), "1.0").unwrap();
    let config_name = format!("{}.json", &config_digest[7..]);
    std::fs::write(image.join(&config_name), &config).unwrap();
    let manifest = json!([{"Config": config_name, "RepoTags": ["x:latest"], "Layers": [format!("{id}/layer.tar")]}]);
    std::fs::write(image.join("manifest.json"), manifest.to_string()).unwrap();
    Tarball {
        bytes: tar_dir(&image),
        layer_digest,
        config_digest,
    }
}

/// An OCI image layout: `blobs/sha256/…`, `index.json`, `oci-layout`.
pub fn oci_layout(content: &str) -> Tarball {
    let work = tempfile::tempdir().unwrap();
    let layer = layer(work.path(), content);
    let layer_digest = sha256(&layer);
    let config = config(&layer_digest);
    let config_digest = sha256(&config);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len()}],
    })
    .to_string()
    .into_bytes();
    let manifest_digest = sha256(&manifest);
    let image = work.path().join("image");
    let blobs = image.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    for (digest, data) in [
        (&layer_digest, &layer),
        (&config_digest, &config),
        (&manifest_digest, &manifest),
    ] {
        std::fs::write(blobs.join(&digest[7..]), data).unwrap();
    }
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest, "size": manifest.len()}],
    });
    std::fs::write(image.join("index.json"), index.to_string()).unwrap();
    std::fs::write(
        image.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    Tarball {
        bytes: tar_dir(&image),
        layer_digest,
        config_digest,
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("image.tar");
    std::fs::write(&path, data).unwrap();
    run(Command::new("gzip").arg("-k").arg(&path));
    std::fs::read(dir.path().join("image.tar.gz")).unwrap()
}
