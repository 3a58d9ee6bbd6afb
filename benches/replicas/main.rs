//! Scale-out on one S3 bucket: aggregate push and pull throughput of a registry run as
//! 1, 2 or 3 replicas (separate processes on one MinIO bucket prefix), many clients
//! spread round-robin over the replicas. `scripts/bench-replicas.sh` starts MinIO and
//! the replicas of berth and of CNCF distribution v3 and runs this once per
//! configuration (`measure`), then once more to print the side-by-side table (`report`).
//! A measurement, not a test: it fails only on a registry that answers wrongly (a blob
//! pulled through another replica than the one it was pushed to must hash to its digest).
//!
//! The load generator is this process: hyper's HTTP/1.1 client, one keep-alive
//! connection per client, bodies counted and dropped. A `307` to a blob is followed
//! (presigned S3 redirects: berth's `--blob-redirect-min-size`, distribution's default).
//! It shares the machine with the replicas and MinIO, so every figure comes with the
//! cores each side used.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Instant;

use anyhow::{Context as _, bail, ensure};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::{Digest as _, Sha256};
use tokio::net::TcpStream;

const USAGE: &str = "\
replicas benchmark (normally run by scripts/bench-replicas.sh)

  cargo bench --bench replicas -- measure --name NAME --urls URL[,URL...] [options]
  cargo bench --bench replicas -- report --results FILE

measure: one configuration, appended as a JSON line to --results
  --name NAME          registry name in the report, e.g. berth or distribution
  --variant TEXT       what else distinguishes the run, e.g. redirect [proxy]
  --urls LIST          the replicas' base URLs, comma-separated; clients go round-robin
  --pids LIST          the replicas' process ids, for their CPU use
  --store-pid PID      MinIO's process id, for its CPU use
  --clients N          concurrent clients, each with its own distinct blob [32]
  --blob-mib N         size of each blob in MiB [16]
  --rounds N           measured rounds (fresh blobs each); the median is reported [3]
  --results FILE       where to append the result [replicas-results.jsonl]
report: the table of every result in --results, side by side with ratios
";

// ---------------------------------------------------------------------------------------
// A minimal HTTP/1.1 client (as in benches/registry): one keep-alive connection.

type Body = BoxBody<Bytes, Infallible>;

fn empty() -> Body {
    BoxBody::new(Empty::<Bytes>::new())
}

/// 1 MiB frames with chunked transfer encoding, as docker and containerd stream a layer.
fn streamed(data: Bytes) -> Body {
    const FRAME: usize = 1 << 20;
    let size = data.len();
    let frames = (0..size.div_ceil(FRAME)).map(move |i| {
        let end = ((i + 1) * FRAME).min(size);
        Ok::<_, Infallible>(Frame::data(data.slice(i * FRAME..end)))
    });
    BoxBody::new(StreamBody::new(futures::stream::iter(frames)))
}

#[derive(Clone, Debug)]
struct Endpoint {
    addr: SocketAddr,
    authority: String,
}

impl Endpoint {
    fn parse(url: &str) -> anyhow::Result<Endpoint> {
        let parsed = url::Url::parse(url).with_context(|| format!("URL {url:?}"))?;
        ensure!(
            parsed.scheme() == "http",
            "{url:?}: only http:// is supported"
        );
        let host = parsed.host_str().context("URL without host")?;
        let authority = format!("{host}:{}", parsed.port_or_known_default().unwrap_or(80));
        let addr = authority
            .to_socket_addrs()?
            .next()
            .with_context(|| format!("{authority} resolves to nothing"))?;
        Ok(Endpoint { addr, authority })
    }
}

struct Conn {
    send: SendRequest<Body>,
    host: HeaderValue,
}

impl Conn {
    async fn open(e: &Endpoint) -> anyhow::Result<Conn> {
        let tcp = TcpStream::connect(e.addr)
            .await
            .with_context(|| format!("connecting to {}", e.authority))?;
        tcp.set_nodelay(true)?;
        let (send, driver) = hyper::client::conn::http1::Builder::new()
            .handshake::<_, Body>(TokioIo::new(tcp))
            .await?;
        tokio::spawn(async move {
            let _ = driver.await;
        });
        Ok(Conn {
            send,
            host: HeaderValue::from_str(&e.authority)?,
        })
    }

    async fn request(
        &mut self,
        method: Method,
        target: &str,
        body: Body,
    ) -> anyhow::Result<Response<Incoming>> {
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = target
            .parse()
            .with_context(|| format!("target {target:?}"))?;
        req.headers_mut().insert(header::HOST, self.host.clone());
        self.send.ready().await?;
        Ok(self.send.send_request(req).await?)
    }

    /// Sends a request, reads the reply; fails unless its status is `want`.
    async fn expect(
        &mut self,
        method: Method,
        target: &str,
        body: Body,
        want: StatusCode,
    ) -> anyhow::Result<hyper::HeaderMap> {
        let what = format!("{method} {target}");
        let (parts, body) = self.request(method, target, body).await?.into_parts();
        let body = body.collect().await?.to_bytes();
        if parts.status != want {
            bail!(
                "{what}: expected {want}, got {}: {}",
                parts.status,
                String::from_utf8_lossy(&body[..body.len().min(300)])
            );
        }
        Ok(parts.headers)
    }
}

/// `(origin, path and query)` of a `Location`, which may be absolute or a path.
fn split_location(headers: &hyper::HeaderMap) -> anyhow::Result<(Option<String>, String)> {
    let loc = headers
        .get(header::LOCATION)
        .context("reply has no Location")?
        .to_str()?;
    if let Some(rest) = loc.strip_prefix("http://") {
        let at = rest.find('/').unwrap_or(rest.len());
        let path = if at == rest.len() { "/" } else { &rest[at..] };
        return Ok((Some(format!("http://{}", &rest[..at])), path.to_string()));
    }
    ensure!(
        !loc.contains("://"),
        "Location {loc:?}: only http:// is followed"
    );
    Ok((None, loc.to_string()))
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Incompressible, reproducible bytes (xorshift64*).
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

// ---------------------------------------------------------------------------------------
// CPU accounting from /proc: the replicas, the store, this client, everything else.

const TICKS_PER_SEC: f64 = 100.0; // USER_HZ on Linux

fn proc_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn machine_busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| v.get(i)).sum()
}

#[derive(Clone, Copy)]
struct CpuSnap {
    at: Instant,
    busy: u64,
    client: u64,
    replicas: u64,
    store: u64,
}

fn cpu_snap(replicas: &[u32], store: Option<u32>) -> CpuSnap {
    let ticks = |p: &u32| proc_ticks(&p.to_string()).unwrap_or(0);
    CpuSnap {
        at: Instant::now(),
        busy: machine_busy_ticks(),
        client: proc_ticks("self").unwrap_or(0),
        replicas: replicas.iter().map(ticks).sum(),
        store: store.as_ref().map_or(0, ticks),
    }
}

/// Cores used during an interval (1.0 = one CPU busy the whole time).
#[derive(Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
struct Cores {
    replicas: f64,
    store: f64,
    client: f64,
    other: f64,
}

fn cores(a: CpuSnap, b: CpuSnap) -> Cores {
    let secs = (b.at - a.at).as_secs_f64().max(1e-9);
    let d = |x: u64, y: u64| y.saturating_sub(x) as f64 / TICKS_PER_SEC / secs;
    let (replicas, store, client) = (
        d(a.replicas, b.replicas),
        d(a.store, b.store),
        d(a.client, b.client),
    );
    Cores {
        replicas,
        store,
        client,
        other: (d(a.busy, b.busy) - replicas - store - client).max(0.0),
    }
}

fn fmt_cores(c: &Cores) -> String {
    format!(
        "replicas {:.2} / minio {:.2} / client {:.2} / other {:.2}",
        c.replicas, c.store, c.client, c.other
    )
}

// ---------------------------------------------------------------------------------------
// One configuration

struct Measure {
    name: String,
    variant: String,
    replicas: Vec<Endpoint>,
    pids: Vec<u32>,
    store_pid: Option<u32>,
    clients: usize,
    blob_bytes: usize,
    rounds: usize,
    results: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Outcome {
    name: String,
    variant: String,
    replicas: usize,
    clients: usize,
    blob_mib: usize,
    push_mbps: f64,
    pull_mbps: f64,
    push_cores: Cores,
    pull_cores: Cores,
    /// Blob GETs answered with a redirect (followed to the store).
    redirected_pulls: usize,
}

const REPO: &str = "bench/replicas";

/// POST, one streamed PATCH, PUT ?digest=: the whole session on one replica.
async fn push(replica: &Endpoint, data: Bytes, digest: &str) -> anyhow::Result<()> {
    let mut c = Conn::open(replica).await?;
    let h = c
        .expect(
            Method::POST,
            &format!("/v2/{REPO}/blobs/uploads/"),
            empty(),
            StatusCode::ACCEPTED,
        )
        .await?;
    let (_, loc) = split_location(&h)?;
    let h = c
        .expect(Method::PATCH, &loc, streamed(data), StatusCode::ACCEPTED)
        .await?;
    let (_, loc) = split_location(&h)?;
    let sep = if loc.contains('?') { '&' } else { '?' };
    let put = format!("{loc}{sep}digest={}", digest.replace(':', "%3A"));
    c.expect(Method::PUT, &put, empty(), StatusCode::CREATED)
        .await?;
    Ok(())
}

/// GETs a blob through `replica`, following a redirect; returns the body (kept only
/// when `keep`, else just its length) and whether it was redirected.
async fn pull(replica: &Endpoint, digest: &str, keep: bool) -> anyhow::Result<(Bytes, u64, bool)> {
    let mut c = Conn::open(replica).await?;
    let path = format!("/v2/{REPO}/blobs/{digest}");
    let response = c.request(Method::GET, &path, empty()).await?;
    let (response, redirected) = match response.status() {
        StatusCode::OK => (response, false),
        StatusCode::TEMPORARY_REDIRECT | StatusCode::FOUND | StatusCode::SEE_OTHER => {
            let (origin, target) = split_location(response.headers())?;
            let origin = origin.context("a redirect to a path on the same replica")?;
            let mut store = Conn::open(&Endpoint::parse(&origin)?).await?;
            let followed = store.request(Method::GET, &target, empty()).await?;
            ensure!(
                followed.status() == StatusCode::OK,
                "GET {path} redirected to {origin}: {}",
                followed.status()
            );
            (followed, true)
        }
        other => bail!("GET {path}: {other}"),
    };
    let mut body = response.into_body();
    let mut kept = Vec::new();
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            n += data.len() as u64;
            if keep {
                kept.extend_from_slice(&data);
            }
        }
    }
    Ok((Bytes::from(kept), n, redirected))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

async fn measure(m: Measure) -> anyhow::Result<()> {
    let r = m.replicas.len();
    let (n, mib) = (m.clients, m.blob_bytes >> 20);
    println!(
        "== {} {} with {r} replica(s): {n} clients, distinct {mib} MiB blobs, round-robin, {} rounds",
        m.name, m.variant, m.rounds
    );
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64;
    let (mut push_rates, mut pull_rates) = (Vec::new(), Vec::new());
    let (mut push_cores, mut pull_cores) = (Vec::new(), Vec::new());
    let mut redirected_pulls = 0;
    for round in 0..m.rounds {
        let blobs: Vec<(Bytes, String)> = (0..n)
            .map(|k| {
                let data = Bytes::from(pseudo_random(
                    m.blob_bytes,
                    nonce ^ ((round * n + k) as u64) << 24,
                ));
                let digest = sha256(&data);
                (data, digest)
            })
            .collect();
        let total = (n * m.blob_bytes) as f64;

        // Push: client k through replica k mod R.
        let before = cpu_snap(&m.pids, m.store_pid);
        let started = Instant::now();
        let tasks: Vec<_> = blobs
            .iter()
            .enumerate()
            .map(|(k, (data, digest))| {
                let (replica, data, digest) =
                    (m.replicas[k % r].clone(), data.clone(), digest.clone());
                tokio::spawn(async move { push(&replica, data, &digest).await })
            })
            .collect();
        for t in tasks {
            t.await??;
        }
        let secs = started.elapsed().as_secs_f64();
        let used = cores(before, cpu_snap(&m.pids, m.store_pid));
        push_rates.push(total / secs / 1e6);
        push_cores.push(used);
        println!(
            "   round {round} push: {:7.1} MB/s aggregate ({secs:.2} s); cores: {}",
            total / secs / 1e6,
            fmt_cores(&used)
        );

        // Pull: client k fetches blob k through replica (k+1) mod R, not the one it was
        // pushed through (with one replica, the same one).
        let before = cpu_snap(&m.pids, m.store_pid);
        let started = Instant::now();
        let tasks: Vec<_> = blobs
            .iter()
            .enumerate()
            .map(|(k, (_, digest))| {
                let (replica, digest) = (m.replicas[(k + 1) % r].clone(), digest.clone());
                tokio::spawn(async move { pull(&replica, &digest, false).await })
            })
            .collect();
        let mut redirected = 0;
        for (t, (data, digest)) in tasks.into_iter().zip(&blobs) {
            let (_, len, was_redirected) = t.await??;
            ensure!(
                len == data.len() as u64,
                "{digest}: {len} bytes pulled, {} pushed",
                data.len()
            );
            redirected += usize::from(was_redirected);
        }
        let secs = started.elapsed().as_secs_f64();
        let used = cores(before, cpu_snap(&m.pids, m.store_pid));
        pull_rates.push(total / secs / 1e6);
        pull_cores.push(used);
        redirected_pulls += redirected;
        println!(
            "   round {round} pull: {:7.1} MB/s aggregate ({secs:.2} s, {redirected} of {n} redirected); cores: {}",
            total / secs / 1e6,
            fmt_cores(&used)
        );

        // Unmeasured: every blob, through yet another replica, hashes to its digest.
        for (k, (_, digest)) in blobs.iter().enumerate() {
            let (body, _, _) = pull(&m.replicas[(k + 2) % r], digest, true).await?;
            ensure!(
                sha256(&body) == *digest,
                "{} replica {}: blob {digest} came back with other bytes",
                m.name,
                (k + 2) % r
            );
        }
    }
    let pick = |rates: &[f64], all: &[Cores]| -> Cores {
        // The cores of the median round.
        let med = median(rates.to_vec());
        let i = rates
            .iter()
            .position(|x| (*x - med).abs() < 1e-9)
            .unwrap_or(0);
        all[i]
    };
    let outcome = Outcome {
        name: m.name.clone(),
        variant: m.variant.clone(),
        replicas: r,
        clients: n,
        blob_mib: mib,
        push_mbps: median(push_rates.clone()),
        pull_mbps: median(pull_rates.clone()),
        push_cores: pick(&push_rates, &push_cores),
        pull_cores: pick(&pull_rates, &pull_cores),
        redirected_pulls,
    };
    println!(
        "   median: push {:.1} MB/s, pull {:.1} MB/s; every blob verified through another replica",
        outcome.push_mbps, outcome.pull_mbps
    );
    let line = serde_json::to_string(&outcome)? + "\n";
    use std::io::Write as _;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&m.results)
        .with_context(|| format!("opening {}", m.results))?
        .write_all(line.as_bytes())?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The report

fn report(results: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(results).with_context(|| format!("reading {results}"))?;
    let outcomes: Vec<Outcome> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let mut variants: Vec<String> = Vec::new();
    for o in &outcomes {
        if !variants.contains(&o.variant) {
            variants.push(o.variant.clone());
        }
    }
    let by: HashMap<(&str, &str, usize), &Outcome> = outcomes
        .iter()
        .map(|o| ((o.name.as_str(), o.variant.as_str(), o.replicas), o))
        .collect();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "aggregate throughput, MB/s (10^6 bytes/s); machine: {cpus} cores; clients and blob size as measured"
    );
    for variant in &variants {
        println!();
        println!("-- {variant}");
        println!(
            "{:<9} {:>9} {:>13} {:>7}   {:>9} {:>13} {:>7}   cores (replicas/minio/client) push | pull",
            "replicas",
            "berth push",
            "distrib. push",
            "ratio",
            "berth pull",
            "distrib. pull",
            "ratio"
        );
        for r in 1..=3 {
            let b = by.get(&("berth", variant.as_str(), r));
            let d = by.get(&("distribution", variant.as_str(), r));
            if b.is_none() && d.is_none() {
                continue;
            }
            let f = |o: Option<&&Outcome>, g: fn(&Outcome) -> f64| {
                o.map_or("-".to_string(), |o| format!("{:.1}", g(o)))
            };
            let ratio = |g: fn(&Outcome) -> f64| match (b, d) {
                (Some(b), Some(d)) if g(d) > 0.0 => format!("{:.2}", g(b) / g(d)),
                _ => "-".to_string(),
            };
            let c = |o: Option<&&Outcome>| {
                o.map_or("-".to_string(), |o| {
                    let (p, q) = (o.push_cores, o.pull_cores);
                    format!(
                        "{:.1}/{:.1}/{:.1} | {:.1}/{:.1}/{:.1}",
                        p.replicas, p.store, p.client, q.replicas, q.store, q.client
                    )
                })
            };
            println!(
                "{r:<9} {:>9} {:>13} {:>7}   {:>9} {:>13} {:>7}   berth {}; distribution {}",
                f(b, |o| o.push_mbps),
                f(d, |o| o.push_mbps),
                ratio(|o| o.push_mbps),
                f(b, |o| o.pull_mbps),
                f(d, |o| o.pull_mbps),
                ratio(|o| o.pull_mbps),
                c(b),
                c(d),
            );
        }
    }
    if let Some(o) = outcomes.first() {
        println!();
        println!(
            "{} clients, each a distinct {} MiB blob; ratio = berth / distribution (above 1: berth faster)",
            o.clients, o.blob_mib
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let Some(mode) = args.first().cloned() else {
        print!("{USAGE}");
        return Ok(());
    };
    let mut flags: HashMap<String, String> = HashMap::new();
    let mut rest = args[1..].iter();
    while let Some(flag) = rest.next() {
        let value = rest
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        flags.insert(flag.trim_start_matches("--").to_string(), value.clone());
    }
    let get = |k: &str, default: &str| flags.get(k).cloned().unwrap_or_else(|| default.to_string());
    let num = |k: &str, default: usize| -> anyhow::Result<usize> {
        get(k, &default.to_string())
            .parse()
            .with_context(|| format!("--{k} is not a number"))
    };
    let results = get("results", "replicas-results.jsonl");
    match mode.as_str() {
        "report" => report(&results),
        "measure" => {
            let replicas = get("urls", "")
                .split(',')
                .filter(|u| !u.is_empty())
                .map(Endpoint::parse)
                .collect::<anyhow::Result<Vec<_>>>()?;
            ensure!(!replicas.is_empty(), "--urls names no replica");
            let pids = get("pids", "")
                .split(',')
                .filter(|p| !p.is_empty())
                .map(|p| p.parse().with_context(|| format!("pid {p:?}")))
                .collect::<anyhow::Result<Vec<u32>>>()?;
            let store_pid = flags.get("store-pid").map(|p| p.parse()).transpose()?;
            let m = Measure {
                name: get("name", "registry"),
                variant: get("variant", "proxy"),
                replicas,
                pids,
                store_pid,
                clients: num("clients", 32)?,
                blob_bytes: num("blob-mib", 16)? << 20,
                rounds: num("rounds", 3)?.max(1),
                results,
            };
            ensure!(
                m.clients > 0 && m.blob_bytes > 0,
                "clients and size must be > 0"
            );
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?
                .block_on(measure(m))
        }
        "-h" | "--help" | "help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown mode {other:?}\n{USAGE}"),
    }
}
