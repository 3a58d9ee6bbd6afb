//! Scale-out: three `berth serve` processes on one MinIO bucket prefix serve one
//! registry. Pushes through any replica pull whole from every other, chunked uploads
//! hop between replicas, racing chunks on one session never leave bytes under a digest
//! they do not hash to, racing pushes of one tag leave one whole manifest, a replica
//! killed mid-push loses nothing that was committed, and a token issued by one replica
//! is accepted by the others and after restarts (one signing key per bucket).

use reqwest::StatusCode;

use crate::common::{Berth, sha256};
use crate::minio_server::{self, MinioServer};

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";

/// Three replicas sharing `s3://bucket/<fresh prefix>`.
fn three_replicas(server: &MinioServer) -> Vec<Berth> {
    three_replicas_with(server, &[])
}

/// Three replicas sharing `s3://bucket/<fresh prefix>`, each with `extra` arguments.
pub(crate) fn three_replicas_with(server: &MinioServer, extra: &[&str]) -> Vec<Berth> {
    replicas_on(server, 3, extra).1
}

/// `count` replicas sharing `s3://bucket/<fresh prefix>`, each with `extra` arguments;
/// returns the prefix too.
pub(crate) fn replicas_on(
    server: &MinioServer,
    count: usize,
    extra: &[&str],
) -> (String, Vec<Berth>) {
    let prefix = format!("replicas-{}", uuid::Uuid::new_v4().simple());
    let storage = format!("s3://{}/{prefix}", server.bucket);
    let env = server.aws_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let replicas = (0..count)
        .map(|i| {
            let id = format!("replica-{i}");
            let mut args = vec!["--storage", &storage, "--replica-id", &id];
            args.extend_from_slice(extra);
            Berth::start_with(&args, &env)
        })
        .collect();
    (prefix, replicas)
}

/// Waits until `url` answers `/readyz` with 200 (configuration and users loaded).
pub(crate) async fn wait_ready(url: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let ready = reqwest::get(format!("{url}/readyz"))
            .await
            .is_ok_and(|r| r.status() == StatusCode::OK);
        if ready {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{url} never became ready"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A config folder: the private namespace `team`, whose member alice pushes, and the
/// administrator `root`.
pub(crate) fn private_team_folder(extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "apiVersion: berth.dev/v1alpha1\nkind: Namespace\nmetadata: {name: team}\n\
                spec:\n  visibility: private\n  autoCreateRepositories: true\n  members: [{user: alice, permission: write}]\n---\n\
                apiVersion: v1\nkind: Secret\nmetadata:\n  name: user-alice\n  labels: {berth.dev/user: \"true\"}\n\
                stringData: {username: alice, password: alice-password}\n---\n\
                apiVersion: v1\nkind: Secret\nmetadata:\n  name: user-root\n  labels: {berth.dev/user: \"true\"}\n\
                stringData: {username: root, password: root-password, admin: \"true\"}\n";
    std::fs::write(dir.path().join("team.yaml"), yaml).unwrap();
    std::fs::write(dir.path().join("extra.yaml"), extra).unwrap();
    dir
}

/// Distinct, incompressible-looking bytes for `seed`.
pub(crate) fn content(seed: u32, len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| {
            (i.wrapping_add(seed.wrapping_mul(7919))
                .wrapping_mul(2_654_435_761)
                >> 13) as u8
        })
        .collect()
}

pub(crate) async fn expect(
    resp: reqwest::Response,
    status: StatusCode,
    what: &str,
) -> reqwest::Response {
    if resp.status() != status {
        let got = resp.status();
        panic!(
            "{what}: expected {status}, got {got}: {}",
            resp.text().await.unwrap_or_default()
        );
    }
    resp
}

/// A monolithic blob push (POST with `?digest=`).
pub(crate) async fn push_blob(
    http: &reqwest::Client,
    registry: &str,
    repo: &str,
    data: &[u8],
) -> String {
    let digest = sha256(data);
    let resp = http
        .post(format!(
            "{registry}/v2/{repo}/blobs/uploads/?digest={digest}"
        ))
        .header("content-type", "application/octet-stream")
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    expect(resp, StatusCode::CREATED, "monolithic blob push").await;
    digest
}

/// Starts a session on one replica; returns its URL path (`/v2/…/blobs/uploads/<id>`).
pub(crate) async fn start_session(http: &reqwest::Client, registry: &str, repo: &str) -> String {
    let resp = http
        .post(format!("{registry}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let resp = expect(resp, StatusCode::ACCEPTED, "start upload").await;
    resp.headers()["location"].to_str().unwrap().to_string()
}

async fn patch(
    http: &reqwest::Client,
    registry: &str,
    session: &str,
    start: usize,
    chunk: &[u8],
) -> reqwest::Response {
    http.patch(format!("{registry}{session}"))
        .header("content-type", "application/octet-stream")
        .header(
            "content-range",
            format!("{start}-{}", start + chunk.len() - 1),
        )
        .body(chunk.to_vec())
        .send()
        .await
        .unwrap()
}

async fn close(
    http: &reqwest::Client,
    registry: &str,
    session: &str,
    digest: &str,
) -> reqwest::Response {
    let sep = if session.contains('?') { '&' } else { '?' };
    http.put(format!("{registry}{session}{sep}digest={digest}"))
        .send()
        .await
        .unwrap()
}

pub(crate) fn manifest(config: &[u8], layers: &[&[u8]]) -> Vec<u8> {
    let layers: Vec<_> = layers
        .iter()
        .map(|l| serde_json::json!({"mediaType": LAYER_TYPE, "digest": sha256(l), "size": l.len()}))
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": CONFIG_TYPE, "digest": sha256(config), "size": config.len()},
        "layers": layers,
    }))
    .unwrap()
}

pub(crate) async fn put_manifest(
    http: &reqwest::Client,
    registry: &str,
    repo: &str,
    tag: &str,
    body: &[u8],
) -> reqwest::Response {
    http.put(format!("{registry}/v2/{repo}/manifests/{tag}"))
        .header("content-type", MANIFEST_TYPE)
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
}

/// Pulls `repo:tag` from `registry` and checks the manifest and every blob it names
/// against their digests; returns the manifest's digest.
pub(crate) async fn pull_verified(
    http: &reqwest::Client,
    registry: &str,
    repo: &str,
    tag: &str,
) -> String {
    let resp = http
        .get(format!("{registry}/v2/{repo}/manifests/{tag}"))
        .header("accept", MANIFEST_TYPE)
        .send()
        .await
        .unwrap();
    let resp = expect(
        resp,
        StatusCode::OK,
        &format!("pull {repo}:{tag} from {registry}"),
    )
    .await;
    let header = resp.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_string();
    let body = resp.bytes().await.unwrap();
    assert_eq!(sha256(&body), header, "{repo}:{tag} from {registry}");
    let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let mut blobs = vec![parsed["config"].clone()];
    blobs.extend(parsed["layers"].as_array().unwrap().iter().cloned());
    for blob in blobs {
        let digest = blob["digest"].as_str().unwrap();
        let resp = http
            .get(format!("{registry}/v2/{repo}/blobs/{digest}"))
            .send()
            .await
            .unwrap();
        let resp = expect(
            resp,
            StatusCode::OK,
            &format!("blob {digest} from {registry}"),
        )
        .await;
        let bytes = resp.bytes().await.unwrap();
        assert_eq!(bytes.len() as u64, blob["size"].as_u64().unwrap());
        assert_eq!(
            sha256(&bytes),
            digest,
            "blob of {repo}:{tag} from {registry}"
        );
    }
    header
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_on_one_bucket_serve_one_registry() {
    let Some(server) = minio_server::shared() else {
        return;
    };
    let replicas = three_replicas(server);
    let urls: Vec<String> = replicas.iter().map(Berth::url).collect();
    let http = reqwest::Client::new();

    // Different images pushed at once through different replicas, each with a layer
    // uploaded in chunks that hop from replica to replica (POST on one, a PATCH on
    // each of the others, the closing PUT back on the first).
    let pushes = (0..3).map(|i| {
        let http = http.clone();
        let urls = urls.clone();
        async move {
            let repo = format!("team/app-{i}");
            let home = &urls[i];
            let config = content(100 + i as u32, 300);
            let layer = content(i as u32, 7 << 20);
            push_blob(&http, home, &repo, &config).await;
            let session = start_session(&http, home, &repo).await;
            let third = layer.len() / 3;
            for (n, range) in [(1, 0..third), (2, third..2 * third)] {
                let via = &urls[(i + n) % 3];
                let resp = patch(&http, via, &session, range.start, &layer[range.clone()]).await;
                expect(resp, StatusCode::ACCEPTED, "PATCH on another replica").await;
            }
            // The rest goes with the closing PUT, on the replica that started it.
            let sep = if session.contains('?') { '&' } else { '?' };
            let resp = http
                .put(format!("{home}{session}{sep}digest={}", sha256(&layer)))
                .header("content-type", "application/octet-stream")
                .header(
                    "content-range",
                    format!("{}-{}", 2 * third, layer.len() - 1),
                )
                .body(layer[2 * third..].to_vec())
                .send()
                .await
                .unwrap();
            expect(resp, StatusCode::CREATED, "closing PUT").await;
            let body = manifest(&config, &[&layer]);
            let resp = put_manifest(&http, &urls[(i + 2) % 3], &repo, "v1", &body).await;
            expect(resp, StatusCode::CREATED, "manifest push").await;
            (repo, sha256(&body))
        }
    });
    let pushed = futures::future::join_all(pushes).await;

    // Every image pulls whole, verified, from every replica.
    for (repo, digest) in &pushed {
        for url in &urls {
            assert_eq!(&pull_verified(&http, url, repo, "v1").await, digest);
        }
    }

    // One tag pushed at once through all three replicas, round after round: each round
    // leaves one whole manifest that every replica serves, and no replica serves an
    // older one after its own push was answered.
    let config = content(7, 200);
    push_blob(&http, &urls[0], "team/shared", &config).await;
    let layers: Vec<Vec<u8>> = (0..3).map(|i| content(200 + i, 4096)).collect();
    for layer in &layers {
        push_blob(&http, &urls[1], "team/shared", layer).await;
    }
    for round in 0..5 {
        let bodies: Vec<Vec<u8>> = (0..3)
            .map(|i| {
                let mut body: serde_json::Value =
                    serde_json::from_slice(&manifest(&config, &[&layers[i]])).unwrap();
                // Distinct per round too, so a stale answer would show.
                body["annotations"] = serde_json::json!({"round": round.to_string()});
                serde_json::to_vec(&body).unwrap()
            })
            .collect();
        let racing = (0..3).map(|i| {
            let http = http.clone();
            let url = urls[i].clone();
            let body = bodies[i].clone();
            async move {
                let resp = put_manifest(&http, &url, "team/shared", "latest", &body).await;
                expect(resp, StatusCode::CREATED, "racing tag push").await;
            }
        });
        futures::future::join_all(racing).await;
        let candidates: Vec<String> = bodies.iter().map(|b| sha256(b)).collect();
        let seen: Vec<String> = futures::future::join_all(
            urls.iter()
                .map(|url| pull_verified(&http, url, "team/shared", "latest")),
        )
        .await;
        assert!(candidates.contains(&seen[0]), "round {round}: {seen:?}");
        assert!(
            seen.iter().all(|d| d == &seen[0]),
            "round {round}: {seen:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_chunks_through_two_replicas_never_store_bytes_under_another_digest() {
    let Some(server) = minio_server::shared() else {
        return;
    };
    let replicas = three_replicas(server);
    let urls: Vec<String> = replicas.iter().map(Berth::url).collect();
    let http = reqwest::Client::new();
    let repo = "team/race";
    let (mut stored, mut refused) = (0, 0);
    for round in 0..8u32 {
        // Two different chunks for offset 0 of one session, sent at once through two
        // replicas. With per-process locks and unconditional writes, the bytes of one
        // and the hash of the other could end up together.
        let session = start_session(&http, &urls[0], repo).await;
        let a = content(1000 + round, 2 << 20);
        let b = content(2000 + round, 2 << 20);
        let (ra, rb) = tokio::join!(
            patch(&http, &urls[1], &session, 0, &a),
            patch(&http, &urls[2], &session, 0, &b)
        );
        let (sa, sb) = (ra.status(), rb.status());
        assert!(
            [sa, sb].contains(&StatusCode::ACCEPTED),
            "round {round}: one chunk is taken ({sa}, {sb})"
        );
        for other in [sa, sb] {
            assert!(
                [StatusCode::ACCEPTED, StatusCode::RANGE_NOT_SATISFIABLE].contains(&other),
                "round {round}: a chunk that lost the race is refused with 416, got {other}"
            );
        }
        // The client claims the bytes of whichever chunk it likes: only a claim the
        // stored bytes hash to commits, and what commits reads back as that digest.
        let claimed = if round % 2 == 0 { &a } else { &b };
        let digest = sha256(claimed);
        let resp = close(&http, &urls[round as usize % 3], &session, &digest).await;
        match resp.status() {
            StatusCode::CREATED => {
                stored += 1;
                for url in &urls {
                    let bytes = http
                        .get(format!("{url}/v2/{repo}/blobs/{digest}"))
                        .send()
                        .await
                        .unwrap()
                        .bytes()
                        .await
                        .unwrap();
                    assert_eq!(
                        sha256(&bytes),
                        digest,
                        "round {round}: stored blob is whole"
                    );
                }
            }
            StatusCode::BAD_REQUEST => {
                refused += 1;
                let resp = http
                    .head(format!("{}/v2/{repo}/blobs/{digest}", urls[0]))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), StatusCode::NOT_FOUND, "round {round}");
            }
            other => panic!("round {round}: closing PUT answered {other}"),
        }
    }
    assert_eq!(stored + refused, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_mid_push_loses_nothing_committed_and_the_others_keep_serving() {
    let Some(server) = minio_server::shared() else {
        return;
    };
    let mut replicas = three_replicas(server);
    let urls: Vec<String> = replicas.iter().map(Berth::url).collect();
    let http = reqwest::Client::new();

    // An image committed through the replica about to die.
    let config = content(1, 250);
    let layer = content(2, 3 << 20);
    push_blob(&http, &urls[2], "team/kept", &config).await;
    push_blob(&http, &urls[2], "team/kept", &layer).await;
    let kept = manifest(&config, &[&layer]);
    let resp = put_manifest(&http, &urls[2], "team/kept", "v1", &kept).await;
    expect(resp, StatusCode::CREATED, "push before the kill").await;

    // A large upload streaming slowly into that replica when it is SIGKILLed.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let slow = tokio::spawn({
        let http = http.clone();
        let url = format!(
            "{}/v2/team/lost/blobs/uploads/?digest={}",
            urls[2],
            sha256(b"never")
        );
        async move {
            let chunks = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|chunk| (chunk, rx))
            });
            let body = reqwest::Body::wrap_stream(chunks);
            http.post(url).body(body).send().await
        }
    });
    for i in 0..8 {
        tx.send(Ok(content(i, 1 << 20))).await.unwrap();
    }
    replicas[2].kill();
    drop(tx);
    assert!(
        slow.await.unwrap().is_err(),
        "the killed replica answers nothing"
    );

    // The others keep serving: what was committed pulls whole, new pushes land.
    for url in &urls[..2] {
        assert_eq!(
            pull_verified(&http, url, "team/kept", "v1").await,
            sha256(&kept)
        );
    }
    let fresh = content(3, 1 << 20);
    push_blob(&http, &urls[0], "team/kept", &fresh).await;
    let next = manifest(&config, &[&layer, &fresh]);
    let resp = put_manifest(&http, &urls[1], "team/kept", "v2", &next).await;
    expect(resp, StatusCode::CREATED, "push after the kill").await;
    for url in &urls[..2] {
        assert_eq!(
            pull_verified(&http, url, "team/kept", "v2").await,
            sha256(&next)
        );
    }
    // Nothing of the cut-off upload became visible.
    let resp = http
        .head(format!(
            "{}/v2/team/lost/blobs/{}",
            urls[0],
            sha256(b"never")
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

/// One signing key per bucket: a token issued by replica 0 pulls a private repository
/// from replica 2, and still does after every replica was killed and started again
/// (and a garbage collection ran) — the key is an object in the bucket, created by the
/// first replica, read by the others, and neither served nor collected as content. A
/// `berth login-command --storage s3://…` credential is signed with the same key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_from_one_replica_and_a_login_command_credential_pull_from_every_replica_and_survive_restarts()
 {
    let Some(server) = minio_server::shared() else {
        return;
    };
    let folder = private_team_folder("");
    let folder_arg = folder.path().to_str().unwrap();
    let (prefix, mut replicas) = replicas_on(server, 3, &["--config-dir", folder_arg]);
    for r in &replicas {
        wait_ready(&r.url()).await;
    }
    let http = reqwest::Client::new();
    let repo = "team/app";
    let config = content(1, 200);
    let layer = content(2, 4096);
    for blob in [&config, &layer] {
        let resp = http
            .post(format!(
                "{}/v2/{repo}/blobs/uploads/?digest={}",
                replicas[0].url(),
                sha256(blob)
            ))
            .basic_auth("alice", Some("alice-password"))
            .header("content-type", "application/octet-stream")
            .body(blob.clone())
            .send()
            .await
            .unwrap();
        expect(resp, StatusCode::CREATED, "blob push as alice").await;
    }
    let body = manifest(&config, &[&layer]);
    let resp = http
        .put(format!("{}/v2/{repo}/manifests/v1", replicas[0].url()))
        .basic_auth("alice", Some("alice-password"))
        .header("content-type", MANIFEST_TYPE)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    expect(resp, StatusCode::CREATED, "manifest push as alice").await;

    let token: serde_json::Value = http
        .get(format!(
            "{}/auth/token?service=berth&scope=repository:{repo}:pull",
            replicas[0].url()
        ))
        .basic_auth("alice", Some("alice-password"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["token"].as_str().expect("a token").to_string();
    let pull = |url: String, token: Option<String>| {
        let http = http.clone();
        async move {
            let mut req = http
                .get(format!("{url}/v2/{repo}/manifests/v1"))
                .header("accept", MANIFEST_TYPE);
            if let Some(token) = token {
                req = req.bearer_auth(token);
            }
            req.send().await.unwrap().status()
        }
    };
    assert_eq!(
        pull(replicas[2].url(), None).await,
        StatusCode::UNAUTHORIZED,
        "the repository is private"
    );
    for r in &replicas {
        assert_eq!(
            pull(r.url(), Some(token.clone())).await,
            StatusCode::OK,
            "replica 0's token on {}",
            r.url()
        );
    }

    // `berth login-command` given the same storage signs with the bucket's key: its
    // credential is accepted by every replica.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args([
            "login-command",
            "--user",
            "alice",
            "--config-dir",
            folder_arg,
        ])
        .args(["--storage", &format!("s3://{}/{prefix}", server.bucket)])
        .envs(server.aws_env())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "login-command: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).unwrap();
    let credential = line
        .split_whitespace()
        .nth(5)
        .expect("docker login -u alice -p CRED");
    for r in &replicas {
        let status = http
            .get(format!("{}/v2/{repo}/manifests/v1", r.url()))
            .header("accept", MANIFEST_TYPE)
            .basic_auth("alice", Some(credential))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(
            status,
            StatusCode::OK,
            "login-command credential on {}",
            r.url()
        );
    }

    // Whichever replica leads collects garbage; the key object is not content.
    let mut collected = 0;
    for r in &replicas {
        let resp = http
            .post(format!("{}/api/gc", r.url()))
            .basic_auth("root", Some("root-password"))
            .send()
            .await
            .unwrap();
        collected += u32::from(resp.status().is_success());
    }
    assert_eq!(collected, 1, "exactly one replica leads and collects");
    let catalog: serde_json::Value = http
        .get(format!("{}/v2/_catalog", replicas[1].url()))
        .basic_auth("root", Some("root-password"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(catalog["repositories"], serde_json::json!([repo]));

    for r in &mut replicas {
        r.restart();
    }
    for r in &replicas {
        wait_ready(&r.url()).await;
        assert_eq!(
            pull(r.url(), Some(token.clone())).await,
            StatusCode::OK,
            "the token after a restart, on {}",
            r.url()
        );
    }
}
