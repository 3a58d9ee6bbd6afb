//! Committing an upload on S3 moves no bytes, and its parts grow and stream: the
//! replicas talk to MinIO through a proxy that notes every request, and a chunked push
//! hopping between two replicas makes no CopyObject and reads none of its bytes back,
//! yet pulls whole and verified; parts follow their schedule and large ones stream
//! through bounded memory; a part cut off mid-stream leaves the session unchanged.

use std::sync::{Arc, Mutex};

use reqwest::StatusCode;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::common::{Berth, sha256};
use crate::minio_server;

/// One request as it went to S3.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
    copy_source: bool,
    content_length: u64,
}

/// A TCP proxy in front of MinIO that parses each HTTP/1.1 request head on its way
/// (bodies are framed by `Content-Length`) and passes every byte through unchanged.
struct CountingProxy {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl CountingProxy {
    async fn start(upstream: &str) -> CountingProxy {
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (upstream, log) = (upstream.clone(), log.clone());
                tokio::spawn(async move {
                    let server = TcpStream::connect(&upstream).await.unwrap();
                    let _ = relay(client, server, log).await;
                });
            }
        });
        CountingProxy { url, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn relay(
    client: TcpStream,
    server: TcpStream,
    log: Arc<Mutex<Vec<Seen>>>,
) -> std::io::Result<()> {
    let (client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    tokio::spawn(async move { tokio::io::copy(&mut server_read, &mut client_write).await });
    let mut client_read = BufReader::new(client_read);
    loop {
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            if client_read.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            head.push(line.clone());
            if line == "\r\n" {
                break;
            }
        }
        let mut words = head[0].split_whitespace();
        let (method, target) = (
            words.next().unwrap_or_default(),
            words.next().unwrap_or_default(),
        );
        let header = |name: &str| {
            head.iter().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
        };
        assert!(
            header("transfer-encoding").is_none(),
            "the proxy frames bodies by Content-Length only: {head:?}"
        );
        let length: u64 = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        log.lock().unwrap().push(Seen {
            method: method.to_string(),
            target: target.to_string(),
            copy_source: header("x-amz-copy-source").is_some(),
            content_length: length,
        });
        server_write.write_all(head.concat().as_bytes()).await?;
        let mut body = (&mut client_read).take(length);
        tokio::io::copy(&mut body, &mut server_write).await?;
    }
}

/// The sizes of the parts sent to S3, in MiB, by part number (parts go out in parallel).
fn part_sizes_mib(seen: &[Seen]) -> Vec<u64> {
    let mut parts: Vec<(u64, u64)> = seen
        .iter()
        .filter(|s| s.method == "PUT")
        .filter_map(|s| {
            let (_, query) = s.target.split_once('?')?;
            let number = query
                .split('&')
                .find_map(|p| p.strip_prefix("partNumber="))?;
            Some((number.parse().ok()?, s.content_length >> 20))
        })
        .collect();
    parts.sort();
    parts.into_iter().map(|(_, size)| size).collect()
}

/// berth's environment for MinIO, reached through `proxy`.
fn env_through(
    server: &minio_server::MinioServer,
    proxy: &CountingProxy,
) -> Vec<(&'static str, String)> {
    let mut env = server.aws_env();
    for (name, value) in &mut env {
        if *name == "AWS_ENDPOINT" {
            *value = proxy.url.clone();
        }
    }
    env
}

/// Resets the peak resident memory of process `pid` (Linux `clear_refs`) and returns
/// what it holds now, in MiB.
fn reset_peak_rss(pid: u32) -> u64 {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
    memory_mib(pid, "VmRSS:")
}

/// The peak resident memory of process `pid` since the last reset, in MiB.
fn peak_rss_mib(pid: u32) -> u64 {
    memory_mib(pid, "VmHWM:")
}

fn memory_mib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib >> 10
}

/// Parts of 5, 10, 20, 40 MiB, then 80: what 8 MiB parts growing to 4 GiB do over
/// thousands of parts, in a few. Only 5 MiB parts may be gathered in memory.
const SMALL_PARTS: &str = "5MiB,1,80MiB,5MiB";

/// berth on a fresh prefix of MinIO, reached with `env`, with [`SMALL_PARTS`].
fn berth_with_small_parts(server: &minio_server::MinioServer, env: &[(&str, &str)]) -> Berth {
    let storage = format!(
        "s3://{}/part-schedule-{}",
        server.bucket,
        uuid::Uuid::new_v4().simple()
    );
    Berth::start_with(
        &["--storage", &storage, "--s3-part-schedule", SMALL_PARTS],
        env,
    )
}

/// Pulls `digest` from `repo` and checks it is `blob`, whole.
async fn assert_pulls(
    http: &reqwest::Client,
    berth: &Berth,
    repo: &str,
    digest: &str,
    blob: &[u8],
) {
    let resp = http
        .get(format!("{}/v2/{repo}/blobs/{digest}", berth.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.bytes().await.unwrap();
    assert_eq!(body.len(), blob.len());
    assert_eq!(sha256(&body), digest);
}

fn content(len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chunked_upload_through_two_replicas_commits_without_copying_or_rereading_its_bytes() {
    let Some(server) = minio_server::shared() else {
        return;
    };
    let proxy = CountingProxy::start(&server.endpoint).await;
    let storage = format!(
        "s3://{}/in-place-{}",
        server.bucket,
        uuid::Uuid::new_v4().simple()
    );
    let env = env_through(server, &proxy);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let replicas: Vec<Berth> = (0..2)
        .map(|i| {
            let id = format!("replica-{i}");
            Berth::start_with(&["--storage", &storage, "--replica-id", &id], &env)
        })
        .collect();
    let urls: Vec<String> = replicas.iter().map(Berth::url).collect();
    let http = reqwest::Client::new();

    // 24 MiB, larger than one part, in three 8 MiB chunks: A, B, A; closed on B.
    let blob = content(24 << 20);
    let digest = sha256(&blob);
    let resp = http
        .post(format!("{}/v2/team/big/blobs/uploads/", urls[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let session = resp.headers()["location"].to_str().unwrap().to_string();
    for (n, chunk) in blob.chunks(8 << 20).enumerate() {
        let start = n * (8 << 20);
        let resp = http
            .patch(format!("{}{session}", urls[n % 2]))
            .header("content-type", "application/octet-stream")
            .header(
                "content-range",
                format!("{start}-{}", start + chunk.len() - 1),
            )
            .body(chunk.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::ACCEPTED, "chunk {n}");
    }
    let sep = if session.contains('?') { '&' } else { '?' };
    let resp = http
        .put(format!("{}{session}{sep}digest={digest}", urls[1]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED, "closing PUT");

    let pushed = proxy.seen();
    let copies: Vec<_> = pushed.iter().filter(|s| s.copy_source).collect();
    assert!(copies.is_empty(), "the push copied objects: {copies:?}");
    let rereads: Vec<_> = pushed
        .iter()
        // A listing of the session's objects (to clean up) reads no bytes.
        .filter(|s| {
            s.method == "GET" && s.target.contains("blob-data") && !s.target.contains("list-type=")
        })
        .collect();
    assert!(
        rereads.is_empty(),
        "the push read its bytes back: {rereads:?}"
    );
    let parts = pushed
        .iter()
        .filter(|s| s.method == "PUT" && s.target.contains("partNumber="))
        .count();
    let completed = pushed
        .iter()
        .filter(|s| s.method == "POST" && s.target.contains("uploadId="))
        .count();
    assert_eq!(
        (parts, completed),
        (3, 1),
        "one multipart upload of three parts, completed once: {pushed:?}"
    );

    // It pulls whole and verified from both replicas.
    for url in &urls {
        let resp = http
            .get(format!("{url}/v2/team/big/blobs/{digest}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body = resp.bytes().await.unwrap();
        assert_eq!(body.len(), blob.len());
        assert_eq!(sha256(&body), digest);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parts_grow_along_an_upload_and_stream_through_bounded_memory_with_or_without_a_length() {
    let Some(server) = minio_server::shared() else {
        return;
    };
    let proxy = CountingProxy::start(&server.endpoint).await;
    let env = env_through(server, &proxy);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let berth = berth_with_small_parts(server, &env);
    let http = reqwest::Client::new();

    // A monolithic push with a Content-Length streams its large parts.
    let blob = content(240 << 20);
    let digest = sha256(&blob);
    let pid = berth.pid().unwrap();
    let resident = reset_peak_rss(pid);
    let before = proxy.seen().len();
    let resp = http
        .post(format!(
            "{}/v2/team/huge/blobs/uploads/?digest={digest}",
            berth.url()
        ))
        .header("content-type", "application/octet-stream")
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
    let peak = peak_rss_mib(pid);
    assert_eq!(
        part_sizes_mib(&proxy.seen()[before..]),
        [5, 10, 20, 40, 80, 80, 5],
        "parts follow the schedule; the last one takes the rest"
    );
    // Gathering an 80 MiB part would add at least 80 MiB; streaming adds the 5 MiB
    // parts, the hashing batches and a few of the body's chunks.
    assert!(
        peak - resident < 48,
        "berth's resident memory grew from {resident} MiB to {peak} MiB during the push"
    );

    // A body of unknown length (chunked, as docker sends layers) gathers its large parts
    // on disk first: the same parts, and memory as bounded.
    let chunked = content(240 << 20);
    let chunked_digest = sha256(&chunked);
    let resp = http
        .post(format!("{}/v2/team/huge/blobs/uploads/", berth.url()))
        .send()
        .await
        .unwrap();
    let session = resp.headers()["location"].to_str().unwrap().to_string();
    let resident = reset_peak_rss(pid);
    let before = proxy.seen().len();
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
        chunked.chunks(1 << 20).map(|c| Ok(c.to_vec())).collect();
    let resp = http
        .patch(format!("{}{session}", berth.url()))
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(pieces)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let sep = if session.contains('?') { '&' } else { '?' };
    let resp = http
        .put(format!(
            "{}{session}{sep}digest={chunked_digest}",
            berth.url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let peak = peak_rss_mib(pid);
    assert_eq!(
        part_sizes_mib(&proxy.seen()[before..]),
        [5, 10, 20, 40, 80, 80, 5],
        "the same schedule without a length"
    );
    assert!(
        peak - resident < 48,
        "berth's resident memory grew from {resident} MiB to {peak} MiB during the chunked push"
    );

    assert_pulls(&http, &berth, "team/huge", &digest, &blob).await;
    assert_pulls(&http, &berth, "team/huge", &chunked_digest, &chunked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_streamed_part_cut_off_by_a_dropped_connection_leaves_the_session_as_it_was() {
    let Some(server) = minio_server::shared() else {
        return;
    };
    let env = server.aws_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let berth = berth_with_small_parts(server, &env);
    let http = reqwest::Client::new();
    let blob = content(60 << 20);
    let digest = sha256(&blob);
    let resp = http
        .post(format!("{}/v2/team/cut/blobs/uploads/", berth.url()))
        .send()
        .await
        .unwrap();
    let session = resp.headers()["location"].to_str().unwrap().to_string();

    // A PATCH announcing 60 MiB whose client goes away after 30: berth is then
    // streaming its 20 MiB third part.
    let mut socket = TcpStream::connect(&berth.addr).await.unwrap();
    let head = format!(
        "PATCH {session} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        berth.addr,
        blob.len()
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(&blob[..30 << 20]).await.unwrap();
    socket.flush().await.unwrap();
    drop(socket);

    // The session still has none of those bytes...
    let status = || async {
        http.get(format!("{}{session}", berth.url()))
            .send()
            .await
            .unwrap()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        let resp = status().await;
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        let range = resp
            .headers()
            .get("range")
            .map(|r| r.to_str().unwrap().to_string());
        assert!(
            range.is_none() || range.as_deref() == Some("0-0"),
            "a cut-off request added bytes to the session: {range:?}"
        );
        if std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    // ...and takes them whole when the client sends them again.
    let resp = http
        .patch(format!("{}{session}", berth.url()))
        .header("content-type", "application/octet-stream")
        .body(blob.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::ACCEPTED,
        "{:?}",
        resp.text().await
    );
    let session = resp.headers()["location"].to_str().unwrap().to_string();
    let sep = if session.contains('?') { '&' } else { '?' };
    let resp = http
        .put(format!("{}{session}{sep}digest={digest}", berth.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::CREATED,
        "{:?}",
        resp.text().await
    );
    assert_pulls(&http, &berth, "team/cut", &digest, &blob).await;
}
