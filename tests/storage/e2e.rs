//! The real server on S3: `berth serve --storage s3://bucket/prefix` against MinIO,
//! configured only by `AWS_*` variables, driven over HTTP.

use std::collections::{BTreeMap, BTreeSet};

use futures::TryStreamExt;
use reqwest::StatusCode;

use crate::backends::s3_objects;
use crate::common::{Berth, sha256};
use crate::minio_server;

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn berth_serves_and_stores_content_in_minio() {
    let Some(server) = minio_server::shared() else {
        return;
    };
    let prefix = format!("e2e-{}", uuid::Uuid::new_v4().simple());
    let storage = format!("s3://{}/{prefix}", server.bucket);
    let env = server.aws_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut berth = Berth::start_with(&["--storage", &storage], &env);
    let http = reqwest::Client::new();
    let base = format!("{}/v2/e2e/app", berth.url());

    // A config blob, monolithically (POST with ?digest=).
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = sha256(config);
    let resp = http
        .post(format!("{base}/blobs/uploads/?digest={config_digest}"))
        .header("content-type", "application/octet-stream")
        .body(config.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::CREATED,
        "{:?}",
        resp.text().await
    );

    // A 12 MiB layer in two chunks (PATCH, then the rest with the closing PUT), so the
    // server writes multipart objects to MinIO and concatenates them.
    let layer: Vec<u8> = (0..12u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let layer_digest = sha256(&layer);
    let split = 9 << 20;
    let resp = http
        .post(format!("{base}/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    let upload_url = format!("{}{location}", berth.url());
    let resp = http
        .patch(&upload_url)
        .header("content-type", "application/octet-stream")
        .header("content-range", format!("0-{}", split - 1))
        .body(layer[..split].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::ACCEPTED,
        "{:?}",
        resp.text().await
    );
    assert_eq!(resp.headers()["range"], format!("0-{}", split - 1).as_str());
    let sep = if upload_url.contains('?') { '&' } else { '?' };
    let resp = http
        .put(format!("{upload_url}{sep}digest={layer_digest}"))
        .header("content-type", "application/octet-stream")
        .header("content-range", format!("{split}-{}", layer.len() - 1))
        .body(layer[split..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::CREATED,
        "{:?}",
        resp.text().await
    );

    // The manifest, by tag.
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len()}],
    }))
    .unwrap();
    let manifest_digest = sha256(&manifest);
    let resp = http
        .put(format!("{base}/manifests/v1"))
        .header("content-type", MANIFEST_TYPE)
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::CREATED,
        "{:?}",
        resp.text().await
    );
    assert_eq!(
        resp.headers()["docker-content-digest"],
        manifest_digest.as_str()
    );

    // Read back, also after a restart: the content is in MinIO, not in the process.
    for round in ["first", "after restart"] {
        let resp = http
            .get(format!("{base}/manifests/v1"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{round}");
        assert_eq!(resp.headers()["content-type"], MANIFEST_TYPE);
        assert_eq!(resp.bytes().await.unwrap(), manifest, "{round}");
        let resp = http
            .get(format!("{base}/blobs/{layer_digest}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{round}");
        assert!(
            resp.bytes().await.unwrap() == layer,
            "{round}: the layer reads back whole"
        );
        let resp = http
            .get(format!("{base}/blobs/{layer_digest}"))
            .header("range", "bytes=9437000-9437299")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT, "{round}");
        assert_eq!(resp.bytes().await.unwrap(), &layer[9_437_000..9_437_300]);
        let tags: serde_json::Value = http
            .get(format!("{base}/tags/list"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            tags,
            serde_json::json!({"name": "e2e/app", "tags": ["v1"]}),
            "{round}"
        );
        if round == "first" {
            berth.restart();
        }
    }

    // And the objects are in the bucket, under the prefix, where the layout says.
    let objects = s3_objects(server, &prefix);
    let sizes: BTreeMap<String, u64> = objects
        .list(None)
        .map_ok(|m| (m.location.to_string(), m.size))
        .try_collect()
        .await
        .unwrap();
    let keys: BTreeSet<&String> = sizes.keys().collect();
    let hex = |d: &str| d.trim_start_matches("sha256:").to_string();
    for want in [
        format!("blob-index/sha256/{}", hex(&config_digest)),
        format!("blob-index/sha256/{}", hex(&layer_digest)),
        format!("blobs/sha256/{}", hex(&manifest_digest)),
        format!("repositories/e2e+app/blobs/sha256/{}", hex(&layer_digest)),
        format!(
            "repositories/e2e+app/manifests/sha256/{}",
            hex(&manifest_digest)
        ),
        "repositories/e2e+app/tags/v1".to_string(),
    ] {
        assert!(
            sizes.contains_key(&want),
            "{want} missing from MinIO; it holds {keys:#?}"
        );
    }
    assert!(
        keys.iter().all(|k| !k.starts_with("uploads/")),
        "finished uploads leave nothing: {keys:#?}"
    );
    // The layer's bytes stayed in the object its upload wrote, which its index names.
    let index: serde_json::Value = serde_json::from_slice(
        &objects
            .get_opts(
                &format!("blob-index/sha256/{}", hex(&layer_digest))
                    .as_str()
                    .into(),
                Default::default(),
            )
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    let data = index["data"].as_str().unwrap();
    assert!(data.starts_with("blob-data/"), "{index}");
    assert_eq!(sizes[data], layer.len() as u64);
    assert_eq!(index["size"], layer.len() as u64);
}

/// `--storage-config FILE` names the bucket, endpoint and credentials itself (the secret
/// key in a file beside it, as a mounted Kubernetes Secret would be): no `AWS_*` needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_configuration_file_replaces_the_aws_variables() {
    let Some(server) = minio_server::shared() else {
        return;
    };
    let prefix = format!("config-file-{}", uuid::Uuid::new_v4().simple());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("s3-secret"),
        format!("{}\n", minio_server::SECRET_KEY),
    )
    .unwrap();
    let config = dir.path().join("storage.yaml");
    std::fs::write(
        &config,
        format!(
            "s3:\n  bucket: {}\n  prefix: {prefix}\n  region: {}\n  endpoint: {}\n  allowHttp: true\n  accessKeyId: {}\n  secretAccessKeyFile: s3-secret\n",
            server.bucket,
            minio_server::REGION,
            server.endpoint,
            minio_server::ACCESS_KEY
        ),
    )
    .unwrap();
    let berth = Berth::start_with(&["--storage-config", config.to_str().unwrap()], &[]);

    let blob = b"stored where the configuration file says".to_vec();
    let digest = sha256(&blob);
    let resp = reqwest::Client::new()
        .post(format!(
            "{}/v2/configured/app/blobs/uploads/?digest={digest}",
            berth.url()
        ))
        .body(blob.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::CREATED,
        "{:?}",
        resp.text().await
    );

    let objects = s3_objects(server, &prefix);
    let prefix = prefix.as_str();
    let read = |key: String| {
        let objects = objects.clone();
        async move {
            objects
                .get_opts(&key.as_str().into(), Default::default())
                .await
                .unwrap_or_else(|e| panic!("{key} is not under {prefix} in MinIO: {e}"))
                .bytes()
                .await
                .unwrap()
        }
    };
    let index = read(format!(
        "blob-index/sha256/{}",
        digest.trim_start_matches("sha256:")
    ))
    .await;
    let index: serde_json::Value = serde_json::from_slice(&index).unwrap();
    let stored = read(index["data"].as_str().unwrap().to_string()).await;
    assert_eq!(stored, blob);
}

/// A mistake in the storage configuration stops berth at start, naming the file and
/// the setting, before it listens.
#[test]
fn a_bad_storage_configuration_stops_berth_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("storage.yaml");
    std::fs::write(
        &config,
        "s3:\n  bucket: registry\n  endpont: http://127.0.0.1:9\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["serve", "--listen", "127.0.0.1:0", "--storage-config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "berth started: {stderr}");
    assert!(
        stderr.contains("storage.yaml") && stderr.contains("endpont"),
        "the error names the file and the unknown setting: {stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "nothing listened: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}
