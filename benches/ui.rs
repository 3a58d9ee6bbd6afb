//! The web UI's costs: server time of a namespace page over 10,000 repositories and of
//! a repository page over 10,000 tags (both paged, 50 a page), and berth's memory
//! while a 2 GB image tarball uploads through the API.
//! Run with `scripts/bench-ui.sh` (release build, loopback). Not a test.

use std::time::{Duration, Instant};

use futures::StreamExt;

const CONCURRENCY: usize = 16;

fn sha256(data: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

async fn put_blob(client: &reqwest::Client, base: &str, repo: &str, data: &[u8]) -> String {
    let digest = sha256(data);
    let r = client
        .post(format!("{base}/v2/{repo}/blobs/uploads/?digest={digest}"))
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    digest
}

async fn put_manifest(client: &reqwest::Client, base: &str, repo: &str, tag: &str, manifest: &str) {
    let r = client
        .put(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
}

fn manifest(config: &str, layer: &str) -> String {
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": 5}],
    })
    .to_string()
}

/// Median and worst of `n` timed GETs of `path`.
async fn time_get(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    n: usize,
) -> (Duration, Duration) {
    let mut times = Vec::new();
    for _ in 0..n {
        let started = Instant::now();
        let r = client.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        r.bytes().await.unwrap();
        times.push(started.elapsed());
    }
    times.sort();
    (times[n / 2], times[n - 1])
}

fn rss_peak_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn tar_header(name: &str, size: u64) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..107].copy_from_slice(b"0000644");
    h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|b| u64::from(*b)).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    h
}

/// A `docker save` tar with one layer of `size` bytes, generated as it is sent.
fn big_tarball(size: u64) -> (reqwest::Body, u64) {
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
            .to_vec();
    let manifest =
        br#"[{"Config":"config.json","RepoTags":["big:1"],"Layers":["layer/layer.tar"]}]"#.to_vec();
    let pad = |n: u64| vec![0u8; ((512 - n % 512) % 512) as usize];
    let mut head = tar_header("config.json", config.len() as u64);
    head.extend_from_slice(&config);
    head.extend(pad(config.len() as u64));
    head.extend(tar_header("layer/layer.tar", size));
    let mut tail = pad(size);
    tail.extend(tar_header("manifest.json", manifest.len() as u64));
    tail.extend_from_slice(&manifest);
    tail.extend(pad(manifest.len() as u64));
    tail.extend(vec![0u8; 1024]);
    let total = head.len() as u64 + size + tail.len() as u64;
    const CHUNK: u64 = 1 << 20;
    let chunks = size.div_ceil(CHUNK);
    let body = futures::stream::iter([bytes::Bytes::from(head)])
        .chain(futures::stream::iter(0..chunks).map(move |i| {
            let n = CHUNK.min(size - i * CHUNK) as usize;
            let mut chunk = vec![(i % 251) as u8; n];
            chunk[0] = (i >> 8) as u8;
            bytes::Bytes::from(chunk)
        }))
        .chain(futures::stream::iter([bytes::Bytes::from(tail)]))
        .map(Ok::<_, std::io::Error>);
    (reqwest::Body::wrap_stream(body), total)
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--help" || a == "-h") {
        println!(
            "berth UI bench (run by scripts/bench-ui.sh): env BENCH_BERTH_BINARY, BENCH_ITEMS (default 10000), BENCH_UPLOAD_BYTES (default 2000000000)"
        );
        return;
    }
    if !std::env::args().any(|a| a == "--bench") {
        println!("ui bench: not run (use scripts/bench-ui.sh)");
        return;
    }
    let bin = std::env::var("BENCH_BERTH_BINARY").unwrap_or_else(|_| "target/release/berth".into());
    let items: usize = std::env::var("BENCH_ITEMS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let upload: u64 = std::env::var("BENCH_UPLOAD_BYTES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000_000_000);
    let work =
        tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| ".".into())).unwrap();
    let mut child = std::process::Command::new(&bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(work.path().join("data"))
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
    let mut banner = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut banner,
    )
    .unwrap();
    let addr = banner
        .split("http://")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let base = format!("http://{addr}");
    let client = reqwest::Client::new();
    while client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let started = Instant::now();
    let config = put_blob(&client, &base, "bench/many-tags", b"{}").await;
    let layer = put_blob(&client, &base, "bench/many-tags", b"layer").await;
    let m = manifest(&config, &layer);
    futures::stream::iter(0..items)
        .map(|i| {
            let (client, base, m) = (&client, &base, &m);
            async move { put_manifest(client, base, "bench/many-tags", &format!("t{i:05}"), m).await }
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    futures::stream::iter(0..items)
        .map(|i| {
            let (client, base) = (&client, &base);
            async move {
                let repo = format!("bench/r{i:05}");
                let config = put_blob(client, base, &repo, b"{}").await;
                let layer = put_blob(client, base, &repo, b"layer").await;
                put_manifest(client, base, &repo, "v1", &manifest(&config, &layer)).await
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    println!(
        "filled {items} tags and {items} repositories in {:.1?}",
        started.elapsed()
    );

    for (what, path) in [
        (
            "repository page, 10,000 tags (newest 50)",
            "/api/repositories/bench/many-tags?per_page=50".to_string(),
        ),
        (
            "repository page, 10,000 tags (page 100, by name)",
            "/api/repositories/bench/many-tags?per_page=50&page=100&sort=name".to_string(),
        ),
        (
            "namespace page, 10,000 repositories (first 50 by name)",
            "/api/namespaces/bench/repositories?per_page=50".to_string(),
        ),
        (
            "namespace page, 10,000 repositories (search)",
            "/api/namespaces/bench/repositories?per_page=50&q=r099".to_string(),
        ),
        (
            "namespace list (usage summed over 10,000 repositories)",
            "/api/namespaces".to_string(),
        ),
    ] {
        let (median, worst) = time_get(&client, &base, &path, 21).await;
        println!("{what}: median {median:.1?}, worst {worst:.1?}");
    }

    let before = rss_peak_kib(child.id());
    let (body, total) = big_tarball(upload);
    let started = Instant::now();
    let r = client
        .post(format!("{base}/api/repositories/bench/big/-/upload?tag=1"))
        .header("content-length", total)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    assert_eq!(status, 201, "{text}");
    let elapsed = started.elapsed();
    println!(
        "upload of a {:.2} GB tar: {elapsed:.1?} ({:.0} MB/s); berth peak RSS {} MiB before, {} MiB after",
        total as f64 / 1e9,
        total as f64 / 1e6 / elapsed.as_secs_f64(),
        before / 1024,
        rss_peak_kib(child.id()) / 1024
    );
    let _ = child.kill();
    let _ = child.wait();
}
