//! The cost of auth on the hottest request, manifest GET: the same berth serves a
//! public repository anonymously and a private one to a bearer token and to Basic
//! auth; concurrent clients hammer each in turn and the ratio to anonymous is printed.
//! Then a flood: `BENCH_FLOOD` (default 2,000) concurrent wrong-password sign-ins from
//! 100 loopback addresses while one valid client pulls with its token; it prints berth's
//! RSS and that client's p50/p99.
//! Run with `scripts/bench-auth.sh` (release build, loopback). Not a test.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;

const CONFIG: &str = r#"
apiVersion: berth.dev/v1alpha1
kind: Namespace
metadata: {name: open}
spec: {visibility: public}
---
apiVersion: berth.dev/v1alpha1
kind: Namespace
metadata: {name: closed}
spec:
  visibility: private
  members: [{user: bench, permission: write}]
---
apiVersion: v1
kind: Secret
metadata: {name: bench, labels: {berth.dev/user: "true"}}
stringData: {password: bench-password, admin: "true"}
"#;

const CONCURRENCY: usize = 32;

fn sha256(data: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

async fn push(client: &reqwest::Client, base: &str, basic: &str, repo: &str) {
    let mut descriptors = Vec::new();
    for data in [b"{}".to_vec(), b"layer".to_vec()] {
        let digest = sha256(&data);
        let r = client
            .post(format!("{base}/v2/{repo}/blobs/uploads/?digest={digest}"))
            .header("authorization", basic)
            .body(data.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        descriptors.push((digest, data.len()));
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": descriptors[0].0, "size": descriptors[0].1},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": descriptors[1].0, "size": descriptors[1].1}],
    });
    let r = client
        .put(format!("{base}/v2/{repo}/manifests/v1"))
        .header("authorization", basic)
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

/// Requests per second of `CONCURRENCY` clients GETting `url` for `duration`.
async fn load(url: String, authorization: Option<String>, duration: Duration) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + duration;
    let mut workers = Vec::new();
    for _ in 0..CONCURRENCY {
        let (url, authorization, done) = (url.clone(), authorization.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            let client = reqwest::Client::builder().no_proxy().build().unwrap();
            while Instant::now() < until {
                let mut req = client
                    .get(&url)
                    .header("accept", "application/vnd.oci.image.manifest.v1+json");
                if let Some(a) = &authorization {
                    req = req.header("authorization", a);
                }
                let r = req.send().await.unwrap();
                assert_eq!(r.status(), 200, "{url}");
                r.bytes().await.unwrap();
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / duration.as_secs_f64()
}

fn rss_mib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib >> 10)
}

/// Wrong-password sign-ins, all at once, while a valid client keeps pulling.
async fn flood(base: &str, bearer: &str, pid: u32, attempts: usize) {
    use std::net::{IpAddr, Ipv4Addr};
    let before = rss_mib(pid);
    let flooding = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let peak = Arc::new(AtomicU64::new(before));
    let sampler = {
        let (flooding, peak) = (flooding.clone(), peak.clone());
        tokio::spawn(async move {
            while flooding.load(Ordering::SeqCst) {
                peak.fetch_max(rss_mib(pid), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let puller = {
        let (url, bearer, flooding) = (
            format!("{base}/v2/closed/app/manifests/v1"),
            bearer.to_string(),
            flooding.clone(),
        );
        tokio::spawn(async move {
            let client = reqwest::Client::builder().no_proxy().build().unwrap();
            let mut latencies = Vec::new();
            while flooding.load(Ordering::SeqCst) {
                let started = Instant::now();
                let r = client
                    .get(&url)
                    .header("authorization", &bearer)
                    .header("accept", "application/vnd.oci.image.manifest.v1+json")
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                r.bytes().await.unwrap();
                latencies.push(started.elapsed());
            }
            latencies
        })
    };
    let clients: Vec<reqwest::Client> = (0..100u8)
        .map(|n| {
            reqwest::Client::builder()
                .no_proxy()
                .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 1, n + 1)))
                .build()
                .unwrap()
        })
        .collect();
    let started = Instant::now();
    let tasks: Vec<_> = (0..attempts)
        .map(|n| {
            let client = clients[n % clients.len()].clone();
            let url = format!("{base}/v2/");
            let basic = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("bench:guess-{n}"))
            );
            tokio::spawn(async move {
                client
                    .get(url)
                    .header("authorization", basic)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            })
        })
        .collect();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for t in tasks {
        *statuses.entry(t.await.unwrap()).or_default() += 1;
    }
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    flooding.store(false, Ordering::SeqCst);
    sampler.await.unwrap();
    let mut latencies = puller.await.unwrap();
    latencies.sort();
    let at = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    println!(
        "flood of {attempts} concurrent wrong-password sign-ins from 100 addresses, answered in {took:.2?}: {statuses:?} (status: count)"
    );
    println!(
        "  berth RSS {before} MiB before, {} MiB at peak, {} MiB after",
        peak.load(Ordering::SeqCst),
        rss_mib(pid)
    );
    println!(
        "  a valid client's manifest GETs meanwhile: {} requests, p50 {:.2?}, p99 {:.2?}",
        latencies.len(),
        at(0.5),
        at(0.99)
    );
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--help" || a == "-h") {
        println!(
            "berth auth bench (run by scripts/bench-auth.sh): env BENCH_BERTH_BINARY (release berth), BENCH_SECS (default 10), BENCH_FLOOD (wrong-password sign-ins, default 2000)"
        );
        return;
    }
    // `cargo test --all-targets` runs benches once without `--bench`: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("auth bench: not run (use scripts/bench-auth.sh)");
        return;
    }
    let bin = std::env::var("BENCH_BERTH_BINARY").unwrap_or_else(|_| "target/release/berth".into());
    let secs: u64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("config.yaml"), CONFIG).unwrap();
    let mut child = std::process::Command::new(&bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--config-dir"])
        .arg(work.path())
        .arg("--data-dir")
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
        .unwrap();
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
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("bench:bench-password")
    );
    push(&client, &base, &basic, "open/app").await;
    push(&client, &base, &basic, "closed/app").await;
    let token: serde_json::Value = client
        .get(format!(
            "{base}/auth/token?service=berth&scope=repository:closed/app:pull"
        ))
        .header("authorization", &basic)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bearer = format!("Bearer {}", token["token"].as_str().unwrap());
    let bearer_for_flood = bearer.clone();

    let duration = Duration::from_secs(secs);
    println!("manifest GET by tag, {CONCURRENCY} concurrent clients, {secs} s each, loopback");
    let anonymous = load(format!("{base}/v2/open/app/manifests/v1"), None, duration).await;
    let with_token = load(
        format!("{base}/v2/closed/app/manifests/v1"),
        Some(bearer),
        duration,
    )
    .await;
    let with_basic = load(
        format!("{base}/v2/closed/app/manifests/v1"),
        Some(basic),
        duration,
    )
    .await;
    // Client and server share the machine's cores, so the difference in wall time per
    // request times the cores is the CPU each auth check adds (an upper bound).
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let cost = |rate: f64| cores * 1e6 * (1.0 / rate - 1.0 / anonymous);
    println!("  anonymous (public repository)   {anonymous:>9.0} req/s");
    println!(
        "  bearer token (private)          {with_token:>9.0} req/s   ratio to anonymous {:.3}  (+{:.1} µs CPU per request)",
        with_token / anonymous,
        cost(with_token)
    );
    println!(
        "  Basic auth (private, cached)    {with_basic:>9.0} req/s   ratio to anonymous {:.3}  (+{:.1} µs CPU per request)",
        with_basic / anonymous,
        cost(with_basic)
    );
    let attempts: usize = std::env::var("BENCH_FLOOD")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    flood(&base, &bearer_for_flood, child.id(), attempts).await;
    let _ = child.kill();
    let _ = child.wait();
}
