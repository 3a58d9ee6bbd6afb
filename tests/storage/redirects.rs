//! Scale-out on S3 over HTTP: `--blob-redirect-min-size` sends whole GETs of large blobs
//! to a presigned MinIO URL after the access check, and berth keeps answering small
//! blobs, ranged GETs and HEAD itself; `/readyz` says whether a replica can serve, and
//! turns false when its store stops answering.

use reqwest::StatusCode;
use reqwest::redirect::Policy;

use crate::common::{Berth, sha256};
use crate::minio_server::{self, MinioServer};

const MIB: usize = 1 << 20;

/// A user `reader` may pull `team/*`; `outsider` exists but is no member.
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
metadata: {name: writer, labels: {berth.dev/user: "true"}}
stringData: {password: writer-pw}
---
apiVersion: v1
kind: Secret
metadata: {name: reader, labels: {berth.dev/user: "true"}}
stringData: {password: reader-pw}
---
apiVersion: v1
kind: Secret
metadata: {name: outsider, labels: {berth.dev/user: "true"}}
stringData: {password: outsider-pw}
"#;

struct Setup {
    berth: Berth,
    _config: tempfile::TempDir,
    /// Never follows redirects: the tests look at them.
    http: reqwest::Client,
}

/// berth on a fresh prefix of `server`'s bucket, with the users above, redirecting
/// blobs of 1 MiB and more; `extra` adds flags.
async fn berth_redirecting(server: &MinioServer, extra: &[&str]) -> Setup {
    let config = tempfile::tempdir().unwrap();
    std::fs::write(config.path().join("config.yaml"), CONFIG).unwrap();
    let storage = format!(
        "s3://{}/redirects-{}",
        server.bucket,
        uuid::Uuid::new_v4().simple()
    );
    let env = server.aws_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut args = vec![
        "--storage",
        &storage,
        "--config-dir",
        config.path().to_str().unwrap(),
        "--blob-redirect-min-size",
        "1MiB",
    ];
    args.extend(extra);
    let berth = Berth::start_with(&args, &env);
    let http = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap();
    wait_ready(&http, &berth.url()).await;
    Setup {
        berth,
        _config: config,
        http,
    }
}

async fn wait_ready(http: &reqwest::Client, url: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{url}/readyz")).send().await
            && r.status() == StatusCode::OK
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "berth never became ready"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn content(seed: u8, len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ seed)
        .collect()
}

impl Setup {
    fn blob_url(&self, repo: &str, digest: &str) -> String {
        format!("{}/v2/{repo}/blobs/{digest}", self.berth.url())
    }

    async fn push(&self, repo: &str, data: &[u8]) -> String {
        let digest = sha256(data);
        let resp = self
            .http
            .post(format!(
                "{}/v2/{repo}/blobs/uploads/?digest={digest}",
                self.berth.url()
            ))
            .basic_auth("writer", Some("writer-pw"))
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED, "push {repo}");
        digest
    }

    async fn get(&self, url: &str, user: Option<&str>, range: Option<&str>) -> reqwest::Response {
        let mut request = self.http.get(url);
        if let Some(user) = user {
            request = request.basic_auth(user, Some(format!("{user}-pw")));
        }
        if let Some(range) = range {
            request = request.header("range", range);
        }
        request.send().await.unwrap()
    }

    async fn redirected_bytes(&self) -> u64 {
        let metrics = self
            .http
            .get(format!("{}/metrics", self.berth.url()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("berth_blob_redirected_bytes_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no berth_blob_redirected_bytes_total in {metrics}"))
    }
}

/// Fetches a presigned URL with no credentials of its own, as a client following the
/// redirect does.
async fn fetch_presigned(location: &str) -> Vec<u8> {
    let resp = reqwest::get(location).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "GET {location}");
    resp.bytes().await.unwrap().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_blob_get_is_redirected_to_a_presigned_url_that_serves_its_bytes() {
    let Some(server) = minio_server::shared() else {
        return;
    };
    let setup = berth_redirecting(server, &["--blob-redirect-expiry", "2m"]).await;
    let large = content(1, 3 * MIB + 17);
    let digest = setup.push("team/app", &large).await;

    let resp = setup
        .get(&setup.blob_url("team/app", &digest), Some("reader"), None)
        .await;
    assert_eq!(resp.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(resp.headers()["docker-content-digest"], digest.as_str());
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    assert!(
        location.starts_with(&format!("{}/{}/", server.endpoint, server.bucket)),
        "signed for the endpoint berth uses: {location}"
    );
    assert!(
        location.contains("X-Amz-Expires=120"),
        "the configured expiry is signed in: {location}"
    );
    let fetched = fetch_presigned(&location).await;
    assert_eq!(sha256(&fetched), digest, "the URL serves the blob's bytes");
    assert_eq!(setup.redirected_bytes().await, large.len() as u64);

    // HEAD is still berth's, with the size.
    let head = setup
        .http
        .head(setup.blob_url("team/app", &digest))
        .basic_auth("reader", Some("reader-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()["content-length"], large.len().to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_blobs_and_ranged_gets_are_served_by_berth_itself() {
    let Some(server) = minio_server::shared() else {
        return;
    };
    let setup = berth_redirecting(server, &[]).await;
    let small = content(2, MIB - 1);
    let small_digest = setup.push("team/app", &small).await;
    let resp = setup
        .get(
            &setup.blob_url("team/app", &small_digest),
            Some("reader"),
            None,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK, "below the minimum size");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), small.as_slice());

    let large = content(3, 2 * MIB);
    let large_digest = setup.push("team/app", &large).await;
    let resp = setup
        .get(
            &setup.blob_url("team/app", &large_digest),
            Some("reader"),
            Some("bytes=1000-1999"),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT, "a ranged GET");
    assert_eq!(
        resp.headers()["content-range"],
        format!("bytes 1000-1999/{}", large.len()).as_str()
    );
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &large[1000..2000]);
    assert_eq!(setup.redirected_bytes().await, 0, "nothing was redirected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_without_pull_access_gets_no_url() {
    let Some(server) = minio_server::shared() else {
        return;
    };
    let setup = berth_redirecting(server, &[]).await;
    let digest = setup.push("team/app", &content(4, 2 * MIB)).await;
    let url = setup.blob_url("team/app", &digest);
    for (who, user, status) in [
        ("anonymous", None, StatusCode::UNAUTHORIZED),
        (
            "a user who is no member",
            Some("outsider"),
            StatusCode::FORBIDDEN,
        ),
    ] {
        let resp = setup.get(&url, user, None).await;
        assert_eq!(resp.status(), status, "{who}");
        assert!(
            resp.headers().get("location").is_none(),
            "{who} got a Location"
        );
        let body = resp.text().await.unwrap();
        assert!(!body.contains("X-Amz"), "{who} got a signed URL: {body}");
    }
    // A repository that does not link the blob names no URL for it either.
    let elsewhere = setup
        .get(&setup.blob_url("team/other", &digest), Some("reader"), None)
        .await;
    assert_eq!(elsewhere.status(), StatusCode::NOT_FOUND);
    assert!(elsewhere.headers().get("location").is_none());
    assert_eq!(setup.redirected_bytes().await, 0);
}

/// `--blob-redirect-endpoint`: the URL is signed for the host clients use (here MinIO
/// under `localhost` rather than the `127.0.0.1` berth uses), and MinIO accepts it there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_signed_for_the_public_endpoint_when_one_is_given() {
    let Some(server) = minio_server::shared() else {
        return;
    };
    let public = server.endpoint.replace("127.0.0.1", "localhost");
    let setup = berth_redirecting(server, &["--blob-redirect-endpoint", &public]).await;
    let large = content(5, 2 * MIB);
    let digest = setup.push("team/app", &large).await;
    let resp = setup
        .get(&setup.blob_url("team/app", &digest), Some("reader"), None)
        .await;
    assert_eq!(resp.status(), StatusCode::TEMPORARY_REDIRECT);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    assert!(location.starts_with(&format!("{public}/")), "{location}");
    assert_eq!(sha256(&fetch_presigned(&location).await), digest);
    // The same signature does not hold for another host: the host is signed.
    let internal = location.replace("localhost", "127.0.0.1");
    let resp = reqwest::get(&internal).await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{internal}");
}

#[test]
fn blob_redirects_on_a_local_directory_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(["--blob-redirect-min-size", "1MiB"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("blob redirects need S3 storage"),
        "{stderr}"
    );
}

/// `/readyz` means "can serve": ready while MinIO answers; 503 naming storage once
/// MinIO is gone (after at most a few seconds: the object store client's own retries
/// are cut short), while `/healthz` (liveness) stays 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_turns_false_when_the_store_stops_answering() {
    let Some(server) = MinioServer::start() else {
        return;
    };
    let storage = format!("s3://{}/ready", server.bucket);
    let env = server.aws_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let berth = Berth::start_with(&["--storage", &storage], &env);
    let http = reqwest::Client::new();
    wait_ready(&http, &berth.url()).await;

    drop(server);
    let resp = http
        .get(format!("{}/readyz", berth.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let reason = resp.text().await.unwrap();
    assert!(reason.contains("storage unavailable"), "{reason}");
    let health = http
        .get(format!("{}/healthz", berth.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        health.status(),
        StatusCode::OK,
        "liveness does not depend on storage"
    );
}

/// A bucket that does not exist stops `berth serve` at start, with S3's own reason: the
/// replicas' shared signing key lives in the bucket, so a replica without it could not
/// accept any other replica's token (a missing bucket is a configuration error, and a
/// Pod that exits shows it, where one that stays unready would only be left out).
#[test]
fn a_missing_bucket_stops_berth_at_start_with_an_error_naming_it() {
    let Some(server) = minio_server::shared() else {
        return;
    };
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(["--storage", "s3://no-such-bucket/x"])
        .envs(server.aws_env())
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("NoSuchBucket"), "{stderr}");
    assert!(stderr.contains("no-such-bucket"), "{stderr}");
}
