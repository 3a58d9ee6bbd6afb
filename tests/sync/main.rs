//! SyncRule replication against real registries on loopback: a second berth (open, or
//! with users and the token flow) and CNCF distribution v3 (no referrers API). The
//! source berth runs standalone with its rules in a config folder; each test reads the
//! result at the other registry, byte for byte (same digests), and berth's metrics.

#[path = "../common/mod.rs"]
mod common;
mod support;

use std::time::Duration;

use common::Berth;
use support::*;

const WAIT: Duration = Duration::from_secs(60);

fn push_rule(name: &str, remote: &str, extra: &str) -> String {
    rule(
        name,
        &format!(
            "  direction: Push\n  namespace: team-a\n  remote: {{url: \"{remote}\", namespace: mirror}}\n{extra}"
        ),
    )
}

/// Pushing an image copies it to the remote at once; a second image sharing a layer
/// sends only the layer and config the remote lacks.
#[tokio::test(flavor = "multi_thread")]
async fn a_push_is_replicated_to_another_berth_sending_only_missing_blobs() {
    let remote = Berth::start();
    let folder = Folder::new(&push_rule("to-b", &remote.url(), ""));
    let (source, reg) = berth_with(&folder).await;
    let b = Reg::open(remote.url());
    let shared = layer("shared", 300_000);
    let first = layer("first", 100_000);
    let (d1, _) = reg
        .push_image("team-a/app", "v1", &[&shared, &first], "one")
        .await;
    wait_until("v1 at the remote", WAIT, || async {
        b.digest("mirror/app", "v1").await.as_deref() == Some(d1.as_str())
    })
    .await;
    let after_first = metric(&source.url(), "berth_sync_bytes_total{direction=\"Push\"}").await;
    assert!(
        (400_000.0..401_000.0).contains(&after_first),
        "the first image sends both layers and its config: {after_first}"
    );
    let second = layer("second", 50_000);
    let (d2, _) = reg
        .push_image("team-a/app", "v2", &[&shared, &second], "two")
        .await;
    wait_until("v2 at the remote", WAIT, || async {
        b.digest("mirror/app", "v2").await.as_deref() == Some(d2.as_str())
    })
    .await;
    let sent =
        metric(&source.url(), "berth_sync_bytes_total{direction=\"Push\"}").await - after_first;
    assert!(
        (50_000.0..51_000.0).contains(&sent),
        "the shared 300 kB layer is not sent again: {sent} bytes sent for v2"
    );
    assert_eq!(
        metric(
            &source.url(),
            "berth_sync_copies_total{direction=\"Push\",result=\"Succeeded\"}"
        )
        .await,
        2.0
    );
}

/// To a berth with users: Basic credentials from a dockerconfigjson Secret in the
/// folder, used through the token flow the remote asks for.
#[tokio::test(flavor = "multi_thread")]
async fn push_to_a_berth_with_auth_uses_a_dockerconfigjson_secret_and_the_token_flow() {
    let remote_folder = tempfile::tempdir().unwrap();
    std::fs::write(
        remote_folder.path().join("c.yaml"),
        "apiVersion: berth.dev/v1alpha1\nkind: Namespace\nmetadata: {name: mirror}\nspec:\n  visibility: private\n  members: [{user: replicator, permission: write}]\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata:\n  name: u\n  labels: {berth.dev/user: \"true\"}\nstringData: {username: replicator, password: rep-pw}\n",
    )
    .unwrap();
    let remote = Berth::start_with(
        &["--config-dir", remote_folder.path().to_str().unwrap()],
        &[],
    );
    let host = remote.addr.clone();
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode("replicator:rep-pw");
    let config = format!(r#"{{"auths":{{"{host}":{{"auth":"{auth}"}}}}}}"#);
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: remote-creds}}\ntype: kubernetes.io/dockerconfigjson\nstringData:\n  .dockerconfigjson: '{config}'\n---\n"
    );
    let folder = Folder::new(&format!(
        "{secret}{}",
        rule(
            "to-b",
            &format!(
                "  direction: Push\n  namespace: team-a\n  remote: {{url: \"{}\", namespace: mirror, credentialsSecret: {{name: remote-creds}}}}\n",
                remote.url()
            )
        )
    ));
    let (_source, reg) = berth_with(&folder).await;
    let (digest, _) = reg
        .push_image("team-a/web", "1.0", &[&layer("web", 10_000)], "web")
        .await;
    let b = Reg::with_user(remote.url(), "replicator", "rep-pw");
    wait_until("1.0 at the remote with auth", WAIT, || async {
        b.digest("mirror/web", "1.0").await.as_deref() == Some(digest.as_str())
    })
    .await;
}

/// A multi-arch index with a signature on it reaches distribution whole — every
/// manifest, and the signature listed under the fallback tag `sha256-<hex>` — and a
/// pull rule on a third berth brings it all back, the signature visible through
/// berth's referrers API. Every digest is the original.
#[tokio::test(flavor = "multi_thread")]
async fn an_index_with_a_referrer_goes_to_distribution_by_fallback_tag_and_comes_back_by_pull() {
    let Some(dist) = Distribution::start() else {
        return;
    };
    let folder = Folder::new(&push_rule(
        "to-dist",
        &dist.url,
        "  tags: {include: [\"v*\"]}\n",
    ));
    let (_source, reg) = berth_with(&folder).await;
    let (index, index_bytes) = reg
        .push_index("team-a/multi", "v1", &layer("base", 20_000))
        .await;
    let sig = reg
        .push_referrer("team-a/multi", &index, index_bytes.len(), OCI_INDEX)
        .await;
    // The signature is pushed after the tag: a catch-up or the next push carries it.
    // v2's 20 MiB layer is larger than a chunk: it goes as PATCH chunks.
    let (v2, _) = reg
        .push_image("team-a/multi", "v2", &[&layer("v2", 20 << 20)], "v2")
        .await;
    let d = Reg::open(dist.url.clone());
    let fallback = format!("sha256-{}", index.strip_prefix("sha256:").unwrap());
    wait_until(
        "the index and its signature at distribution",
        WAIT,
        || async {
            d.digest("mirror/multi", "v1").await.as_deref() == Some(index.as_str())
                && d.digest("mirror/multi", &fallback).await.is_some()
                && d.digest("mirror/multi", "v2").await.as_deref() == Some(v2.as_str())
        },
    )
    .await;
    let listed = d.manifest_json("mirror/multi", &fallback).await;
    assert_eq!(listed["manifests"][0]["digest"], sig.as_str());
    assert_eq!(
        listed["manifests"][0]["artifactType"],
        "application/vnd.dev.sigstore.bundle.v0.3+json"
    );
    let children = d.manifest_json("mirror/multi", "v1").await;
    for child in children["manifests"].as_array().unwrap() {
        let digest = child["digest"].as_str().unwrap();
        assert_eq!(
            d.digest("mirror/multi", digest).await.as_deref(),
            Some(digest)
        );
        let image = d.manifest_json("mirror/multi", digest).await;
        for layer in image["layers"].as_array().unwrap() {
            assert!(
                d.has_blob("mirror/multi", layer["digest"].as_str().unwrap())
                    .await
            );
        }
    }
    assert!(
        !d.tags("mirror/multi")
            .await
            .contains(&"tmp-amd64".to_string()),
        "tags outside the rule's filter stay home"
    );

    // Back by pull, into another berth's team-a.
    let back_folder = Folder::new(&rule(
        "from-dist",
        &format!(
            "  direction: Pull\n  namespace: team-a\n  repositories: [multi]\n  remote: {{url: \"{}\", namespace: mirror}}\n",
            dist.url
        ),
    ));
    let (_back, back) = berth_with(&back_folder).await;
    wait_until("the index pulled back with its signature", WAIT, || async {
        back.digest("team-a/multi", "v1").await.as_deref() == Some(index.as_str())
            && back.digest("team-a/multi", &sig).await.is_some()
            && back.digest("team-a/multi", "v2").await.as_deref() == Some(v2.as_str())
    })
    .await;
    assert_eq!(
        back.referrers("team-a/multi", &index).await,
        vec![sig.clone()]
    );
    let mut tags = back.tags("team-a/multi").await;
    tags.sort();
    assert_eq!(
        tags,
        ["v1", "v2"],
        "the fallback tag is not mirrored as a tag"
    );
}

/// Two pull rules fill one namespace from two registries.
#[tokio::test(flavor = "multi_thread")]
async fn two_remotes_are_mirrored_into_one_namespace() {
    let Some(dist) = Distribution::start() else {
        return;
    };
    let other = Berth::start();
    let d = Reg::open(dist.url.clone());
    let o = Reg::open(other.url());
    let (from_dist, _) = d
        .push_image("up/alpine", "3.20", &[&layer("alpine", 5000)], "a")
        .await;
    let (from_berth, _) = o
        .push_image("up/tools", "1", &[&layer("tools", 5000)], "t")
        .await;
    let folder = Folder::new(&format!(
        "{}{}",
        rule(
            "a",
            &format!(
                "  direction: Pull\n  namespace: team-a\n  remote: {{url: \"{}\", namespace: up}}\n",
                dist.url
            )
        ),
        rule(
            "b",
            &format!(
                "  direction: Pull\n  namespace: team-a\n  remote: {{url: \"{}\", namespace: up}}\n",
                other.url()
            )
        ),
    ));
    let (_berth, reg) = berth_with(&folder).await;
    wait_until("both mirrored", WAIT, || async {
        reg.digest("team-a/alpine", "3.20").await.as_deref() == Some(from_dist.as_str())
            && reg.digest("team-a/tools", "1").await.as_deref() == Some(from_berth.as_str())
    })
    .await;
}

/// `overwrite: false`: a remote tag with other content is left as it is, and the
/// conflict is recorded (once, not at every catch-up).
#[tokio::test(flavor = "multi_thread")]
async fn overwrite_false_leaves_a_differing_remote_tag_and_records_a_conflict() {
    let remote = Berth::start();
    let b = Reg::open(remote.url());
    let (theirs, _) = b
        .push_image("mirror/app", "v1", &[&layer("theirs", 1000)], "theirs")
        .await;
    let folder = Folder::new(&push_rule("to-b", &remote.url(), "  overwrite: false\n"));
    let (source, reg) = berth_with(&folder).await;
    let (ours, _) = reg
        .push_image("team-a/app", "v1", &[&layer("ours", 1000)], "ours")
        .await;
    reg.push_image("team-a/app", "v2", &[&layer("ours2", 1000)], "ours2")
        .await;
    wait_until("v2 replicated", WAIT, || async {
        b.digest("mirror/app", "v2").await.is_some()
    })
    .await;
    wait_until("the conflict counted", WAIT, || async {
        metric(
            &source.url(),
            "berth_sync_copies_total{direction=\"Push\",result=\"Conflict\"}",
        )
        .await
            == 1.0
    })
    .await;
    assert_ne!(theirs, ours);
    assert_eq!(
        b.digest("mirror/app", "v1").await.as_deref(),
        Some(theirs.as_str())
    );

    // overwrite: true replaces it.
    folder.write_rules(&push_rule("to-b", &remote.url(), "  overwrite: true\n"));
    wait_until("v1 overwritten", WAIT, || async {
        b.digest("mirror/app", "v1").await.as_deref() == Some(ours.as_str())
    })
    .await;
}

/// Tags pushed before a rule existed stay home unless it says `syncExisting`.
#[tokio::test(flavor = "multi_thread")]
async fn sync_existing_brings_over_tags_pushed_before_the_rule() {
    let remote = Berth::start();
    let b = Reg::open(remote.url());
    let folder = Folder::new("");
    let (_source, reg) = berth_with(&folder).await;
    let (old, _) = reg
        .push_image("team-a/legacy", "1.0", &[&layer("old", 1000)], "old")
        .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    folder.write_rules(&format!(
        "{}{}",
        rule("new-only", &format!("  direction: Push\n  namespace: team-a\n  remote: {{url: \"{}\", namespace: new-only}}\n", remote.url())),
        rule("everything", &format!("  direction: Push\n  namespace: team-a\n  syncExisting: true\n  remote: {{url: \"{}\", namespace: everything}}\n", remote.url())),
    ));
    wait_until(
        "the old tag copied by the syncExisting rule",
        WAIT,
        || async { b.digest("everything/legacy", "1.0").await.as_deref() == Some(old.as_str()) },
    )
    .await;
    let (fresh, _) = reg
        .push_image("team-a/legacy", "2.0", &[&layer("new", 1000)], "new")
        .await;
    wait_until("the new tag copied by both", WAIT, || async {
        b.digest("new-only/legacy", "2.0").await.as_deref() == Some(fresh.as_str())
            && b.digest("everything/legacy", "2.0").await.as_deref() == Some(fresh.as_str())
    })
    .await;
    assert_eq!(b.digest("new-only/legacy", "1.0").await, None);
}

/// The remote is down while tags are pushed: the rule says so (a failing rule in the
/// metrics, the reason in the log) and, when the remote comes up, catches up unaided.
#[tokio::test(flavor = "multi_thread")]
async fn a_remote_that_is_down_is_reported_and_caught_up_with_when_it_comes_back() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let folder = Folder::new(&push_rule("to-b", &format!("http://{addr}"), ""));
    let (source, reg) = berth_with(&folder).await;
    let (d1, _) = reg
        .push_image("team-a/app", "v1", &[&layer("down1", 5000)], "1")
        .await;
    let (d2, _) = reg
        .push_image("team-a/app", "v2", &[&layer("down2", 5000)], "2")
        .await;
    wait_until("the rule reported failing", WAIT, || async {
        metric(&source.url(), "berth_sync_rules_failing").await == 1.0
    })
    .await;
    let remote = Berth::start_at(&addr, &[]);
    let b = Reg::open(remote.url());
    wait_until("both tags caught up", Duration::from_secs(60), || async {
        b.digest("mirror/app", "v1").await.as_deref() == Some(d1.as_str())
            && b.digest("mirror/app", "v2").await.as_deref() == Some(d2.as_str())
    })
    .await;
    wait_until("the rule healthy again", WAIT, || async {
        metric(&source.url(), "berth_sync_rules_failing").await == 0.0
    })
    .await;
}

/// berth is killed while it copies a large image (the remote behind a slow link, so
/// the kill lands mid-blob); started again, it finishes the copy.
#[tokio::test(flavor = "multi_thread")]
async fn a_copy_cut_short_by_a_kill_is_finished_after_restart() {
    let remote = Berth::start();
    let link = SlowLink::start(&remote.addr, 8 << 20).await;
    let folder = Folder::new(&push_rule("to-b", &link.url, ""));
    let (mut source, reg) = berth_with(&folder).await;
    let big = layer("big", 32 << 20);
    let (digest, _) = reg.push_image("team-a/big", "v1", &[&big], "big").await;
    wait_until("the blob on its way", WAIT, || async {
        link.forwarded.load(std::sync::atomic::Ordering::Relaxed) > 4 << 20
    })
    .await;
    source.kill();
    let b = Reg::open(remote.url());
    assert_eq!(b.digest("mirror/big", "v1").await, None, "killed mid-copy");
    source.restart();
    wait_until(
        "the copy finished after the restart",
        Duration::from_secs(90),
        || async { b.digest("mirror/big", "v1").await.as_deref() == Some(digest.as_str()) },
    )
    .await;
}

/// TLS: a remote with a certificate from a private CA is trusted with the CA bundle
/// from a ConfigMap in the folder, or with `insecureSkipTlsVerify`; without either the
/// rule fails (counted as failing, `RemoteTLSFailed` in the log) and copies nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_private_ca_is_trusted_from_a_config_map_and_refused_without_it() {
    let Some((_certs, ca, cert, key)) = test_certificates() else {
        return;
    };
    let Some(dist) = Distribution::start_tls(&cert, &key) else {
        return;
    };
    let pem = std::fs::read_to_string(&ca).unwrap();
    let indented: String = pem.lines().map(|l| format!("    {l}\n")).collect();
    let config_map = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: private-ca}}\ndata:\n  ca.crt: |\n{indented}---\n"
    );
    let rules = [
        ("trusted", "caBundle: {kind: ConfigMap, name: private-ca}"),
        ("insecure", "insecureSkipTlsVerify: true"),
        ("untrusted", "insecureSkipTlsVerify: false"),
    ]
    .map(|(name, tls)| {
        rule(
            name,
            &format!(
                "  direction: Push\n  namespace: team-a\n  remote: {{url: \"{}\", namespace: {name}, {tls}}}\n",
                dist.url
            ),
        )
    })
    .concat();
    let folder = Folder::new(&format!("{config_map}{rules}"));
    let (source, reg) = berth_with(&folder).await;
    let (digest, _) = reg
        .push_image("team-a/app", "v1", &[&layer("tls", 2000)], "tls")
        .await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca_pem = reqwest::Certificate::from_pem(pem.as_bytes()).unwrap();
    let checker = reqwest::Client::builder()
        .tls_certs_only([ca_pem])
        .build()
        .unwrap();
    let at = |ns: &'static str| {
        let checker = checker.clone();
        let url = format!("{}/v2/{ns}/app/manifests/v1", dist.url);
        async move {
            checker
                .get(url)
                .header("accept", OCI_MANIFEST)
                .send()
                .await
                .ok()
                .filter(|r| r.status() == 200)
                .and_then(|r| r.headers().get("docker-content-digest").cloned())
                .map(|d| d.to_str().unwrap().to_string())
        }
    };
    wait_until("copied with the CA bundle and insecurely", WAIT, || async {
        at("trusted").await.as_deref() == Some(digest.as_str())
            && at("insecure").await.as_deref() == Some(digest.as_str())
    })
    .await;
    wait_until("the untrusted rule failing", WAIT, || async {
        metric(&source.url(), "berth_sync_rules_failing").await == 1.0
    })
    .await;
    assert_eq!(at("untrusted").await, None);
}

/// The benchmark the issue asks for: 20 images sharing most of their layers, synced by
/// a `syncExisting` rule; prints bytes sent against the total size, and the time.
/// `cargo test --release --test sync -- --ignored --nocapture bench_`
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a benchmark: run it with --ignored --nocapture"]
async fn bench_twenty_images_sharing_layers() {
    let remote = Berth::start();
    let folder = Folder::new("");
    let (source, reg) = berth_with(&folder).await;
    let shared: Vec<Vec<u8>> = (0..5)
        .map(|i| layer(&format!("shared-{i}"), 2 << 20))
        .collect();
    let mut total = 0usize;
    let mut digests = Vec::new();
    for i in 0..20 {
        let own = layer(&format!("own-{i}"), 200 << 10);
        let mut layers: Vec<&[u8]> = shared.iter().map(Vec::as_slice).collect();
        layers.push(&own);
        let (digest, manifest) = reg
            .push_image(
                &format!("team-a/app{}", i % 4),
                &format!("v{i}"),
                &layers,
                &format!("image {i}"),
            )
            .await;
        total += layers.iter().map(|l| l.len()).sum::<usize>() + manifest.len();
        digests.push((format!("mirror/app{}", i % 4), format!("v{i}"), digest));
    }
    let started = std::time::Instant::now();
    folder.write_rules(&push_rule("bench", &remote.url(), "  syncExisting: true\n"));
    let b = Reg::open(remote.url());
    wait_until(
        "all 20 images at the remote",
        Duration::from_secs(300),
        || async {
            for (repo, tag, digest) in &digests {
                if b.digest(repo, tag).await.as_deref() != Some(digest.as_str()) {
                    return false;
                }
            }
            true
        },
    )
    .await;
    let elapsed = started.elapsed();
    let sent = metric(&source.url(), "berth_sync_bytes_total{direction=\"Push\"}").await;
    println!(
        "sync bench: 20 images in 4 repositories, {:.1} MiB in total; {:.1} MiB of blobs sent ({:.1}%), in {:.2} s",
        total as f64 / 1048576.0,
        sent / 1048576.0,
        100.0 * sent / total as f64,
        elapsed.as_secs_f64()
    );
    // Each shared layer crosses once; the other repositories mount it.
    assert!(
        sent < (10 << 20) as f64 + 20.0 * (210 << 10) as f64,
        "{sent}"
    );
}
