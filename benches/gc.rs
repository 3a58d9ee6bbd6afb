//! Garbage collection at scale: a generated local store of 10,000 manifests and
//! 100,000 blobs, half of them unreachable; prints the collection's time and what it
//! freed, and the latency of pushes made during the collection beside pushes made
//! with no collection running.
//!
//! `cargo bench --bench gc` (or `scripts/bench-gc.sh`); `-- --dir PATH` puts the store
//! elsewhere than a fresh folder under /dev/shm (e.g. a real disk), `--manifests N`
//! changes the size (10 blobs each). Under `cargo test` it does nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use berth::oci::{Algorithm, Digest, Manifest, OCI_MANIFEST, Reference, RepositoryName, Tag};
use berth::storage::{GcOptions, StorageLocation, Store};
use bytes::Bytes;
use futures::StreamExt;

const BLOBS_PER_MANIFEST: usize = 10;
const REPOSITORIES: usize = 100;
const PARALLEL: usize = 16;

fn body(data: Vec<u8>) -> futures::stream::Iter<std::vec::IntoIter<Result<Bytes, std::io::Error>>> {
    futures::stream::iter(vec![Ok(Bytes::from(data))])
}

/// Pushes one image of `BLOBS_PER_MANIFEST` small unique blobs (the first is its
/// config) into `repo`, tagged or by digest only.
async fn push_image(store: &Store, repo: &RepositoryName, id: u64, tag: Option<&str>) {
    let mut descriptors = Vec::new();
    for b in 0..BLOBS_PER_MANIFEST {
        let data = format!("blob {b} of image {id} {}", "x".repeat(200)).into_bytes();
        let digest = Digest::of(Algorithm::Sha256, &data);
        let size = data.len();
        store
            .put_blob(repo, &digest, body(data), None)
            .await
            .expect("push blob");
        descriptors.push(serde_json::json!({
            "mediaType": if b == 0 { "application/vnd.oci.image.config.v1+json" } else { "application/vnd.oci.image.layer.v1.tar" },
            "digest": digest.to_string(),
            "size": size,
        }));
    }
    let json = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptors[0],
        "layers": descriptors[1..],
    });
    let bytes = Bytes::from(serde_json::to_vec(&json).unwrap());
    let manifest = Manifest::parse(Some(OCI_MANIFEST), &bytes).unwrap();
    let reference = match tag {
        Some(t) => Reference::Tag(t.parse::<Tag>().unwrap()),
        None => Reference::Digest(Digest::of(Algorithm::Sha256, &bytes)),
    };
    store
        .put_manifest(repo, &reference, &[], bytes, &manifest, &[])
        .await
        .expect("push manifest");
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Pushes images one after another until `stop`, returning each push's latency.
async fn pushes_until(store: Store, stop: Arc<AtomicBool>, first_id: u64) -> Vec<Duration> {
    let repo: RepositoryName = "bench/live".parse().unwrap();
    let mut latencies = Vec::new();
    let mut id = first_id;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        push_image(&store, &repo, id, Some(&format!("live-{id}"))).await;
        latencies.push(started.elapsed());
        id += 1;
    }
    latencies.sort();
    latencies
}

fn report(what: &str, latencies: &[Duration]) {
    println!(
        "{what}: {} image pushes ({} blobs + manifest each), p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len(),
        BLOBS_PER_MANIFEST,
        percentile(latencies, 0.5).as_secs_f64() * 1e3,
        percentile(latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        return; // `cargo test --all-targets` runs this binary without --bench
    }
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let manifests: usize = value("--manifests").map_or(10_000, |v| v.parse().unwrap());
    let temp = match value("--dir") {
        Some(dir) => tempfile::tempdir_in(dir).unwrap(),
        None => tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().unwrap()),
    };
    let store = Store::open(&StorageLocation::Local(temp.path().join("data"))).unwrap();
    println!(
        "generating {manifests} manifests with {} blobs in {} ({REPOSITORIES} repositories; half untagged) ...",
        manifests * BLOBS_PER_MANIFEST,
        temp.path().display()
    );
    let started = Instant::now();
    futures::stream::iter(0..manifests as u64)
        .map(|id| {
            let store = store.clone();
            async move {
                let repo: RepositoryName = format!("bench/r{}", id as usize % REPOSITORIES)
                    .parse()
                    .unwrap();
                let tag = (id % 2 == 0).then(|| format!("t{id}"));
                push_image(&store, &repo, id, tag.as_deref()).await;
            }
        })
        .buffer_unordered(PARALLEL)
        .collect::<Vec<()>>()
        .await;
    println!("generated in {:.1} s", started.elapsed().as_secs_f64());
    // Everything generated is made two hours old, past the default grace period, which
    // then protects the blobs the live pushes below upload before their manifests.
    let aged = std::process::Command::new("find")
        .arg(temp.path())
        .args([
            "-type",
            "f",
            "-exec",
            "touch",
            "-m",
            "-d",
            "2 hours ago",
            "{}",
            "+",
        ])
        .status()
        .expect("find");
    assert!(aged.success());

    // Pushes with no collection running, for comparison.
    let stop = Arc::new(AtomicBool::new(false));
    let quiet = tokio::spawn(pushes_until(store.clone(), stop.clone(), 1_000_000_000));
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let quiet = quiet.await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let during = tokio::spawn(pushes_until(store.clone(), stop.clone(), 2_000_000_000));
    let options = GcOptions {
        untagged_delay: Duration::ZERO,
        ..GcOptions::default()
    };
    let gc = store.collect_garbage(&options).await.expect("gc");
    stop.store(true, Ordering::Relaxed);
    let during = during.await.unwrap();

    println!(
        "gc: {:.2} s over {} repositories: {} manifests, {} blob links and {} blobs deleted, {:.1} MiB freed",
        gc.duration_ms as f64 / 1e3,
        gc.repositories,
        gc.manifests_deleted,
        gc.blob_links_deleted,
        gc.blobs_deleted,
        gc.bytes_freed as f64 / (1 << 20) as f64,
    );
    report("pushes with no gc running", &quiet);
    report("pushes during gc", &during);
    let target = if gc.duration_ms < 10_000 {
        "PASS"
    } else {
        "MISS"
    };
    println!("target: gc under 10 s on the local store: {target}");
}
