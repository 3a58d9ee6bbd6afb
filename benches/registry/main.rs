//! berth next to a peer registry (CNCF distribution) on the same machine: blob push,
//! blob pull and manifest GET throughput, with the ratio berth/peer and the project's
//! targets beside each figure. This is a measurement, not a test: it never fails on a
//! target, only on a registry that answers wrongly.
//!
//! The registries must already be running; `scripts/bench.sh` builds berth, starts both
//! on tmpfs and runs this with their URLs and process ids (see benches/README.md):
//!
//! ```text
//! cargo bench --bench registry -- --berth http://127.0.0.1:5001 --peer http://127.0.0.1:5002 \
//!     [--berth-pid PID] [--peer-pid PID] [--quick] [--help]
//! ```
//!
//! The load generator is this process: hyper's HTTP/1.1 client, one keep-alive connection
//! per concurrent client, bodies counted and dropped, never copied. It shares the CPUs with
//! the server under test, so next to every figure the report shows how many cores the
//! server, this client and everything else on the machine used during the measurement.

use std::convert::Infallible;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::{Digest as _, Sha256};
use tokio::net::TcpStream;

mod big_pull;
mod concurrent_push;
mod rss;
mod writeback;

use rss::{PeakRss, fmt_mib};
use writeback::DataDir;

const USAGE: &str = "\
registry benchmark: berth next to a peer registry (normally run by scripts/bench.sh)

  cargo bench --bench registry -- --berth URL [--peer URL] [options]

  --berth URL            berth's base URL, e.g. http://127.0.0.1:5001   (env BENCH_BERTH)
  --peer URL             the peer registry's base URL                   (env BENCH_PEER)
  --peer-name NAME       what to call the peer [distribution]           (env BENCH_PEER_NAME)
  --berth-pid PID        berth's process id, to report its CPU use      (env BENCH_BERTH_PID)
  --peer-pid PID         the peer's process id                          (env BENCH_PEER_PID)
  --storage-note TEXT    where the registries store data, for the report (env BENCH_STORAGE)
  --data-dir PATH        the folder holding both registries' data: the bench syncs its file
                         system before every timed push, reports the writeback each push left
                         behind, and the disk's own fsynced write rate    (env BENCH_DATA_DIR)
  --push-mib N           size of the pushed blob in MiB [100]
  --push-reps N          pushes per registry and push mode; the median is reported [5]
  --pull-kib N           size of the pulled blob in KiB [1024]
  --pull-clients LIST    concurrent blob pullers, one phase per count [8,64,256]
  --manifest-clients LIST  concurrent manifest GET clients, one phase per count [8,64,256]
  --big-pull-mib N       size of the blob pulled alone, whole and by range [64]
  --push-clients N       clients pushing distinct blobs at once [32]
  --push-clients-mib N   size of each of those blobs in MiB [16]
  --rounds N             measured rounds per load phase and registry; median reported [3]
  --seconds S            length of one measured round [5]
  --warmup S             unmeasured warm-up before each round [1]
  --client-threads N     tokio worker threads of this load generator [2]
  --only LIST            run only these phases (comma-separated):
                         push, pull, manifest, big-pull, concurrent-push
  --quick                a fast smoke run: 16 MiB x2 pushes, 8 and 64 clients,
                         8 pushers, 1 round of 1 s
";

// ---------------------------------------------------------------------------------------
// Settings

struct Settings {
    berth: Option<Target>,
    peer: Option<Target>,
    storage_note: String,
    data_dir: Option<DataDir>,
    push_bytes: usize,
    push_reps: usize,
    pull_bytes: usize,
    pull_clients: Vec<usize>,
    manifest_clients: Vec<usize>,
    big_pull_bytes: usize,
    push_clients: usize,
    push_clients_bytes: usize,
    rounds: usize,
    seconds: f64,
    warmup: f64,
    client_threads: usize,
    only: Vec<String>,
}

impl Settings {
    fn runs(&self, phase: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|p| p == phase)
    }
}

#[derive(Clone)]
struct Target {
    name: String,
    url: String,
    addr: SocketAddr,
    /// The `Host` header: `host:port` as given in the URL.
    authority: String,
    pid: Option<u32>,
}

impl Target {
    fn parse(name: &str, url: &str, pid: Option<u32>) -> anyhow::Result<Target> {
        let parsed = url::Url::parse(url).with_context(|| format!("{name} URL {url:?}"))?;
        ensure!(
            parsed.scheme() == "http",
            "{name} URL {url:?}: only plain http:// is supported"
        );
        let host = parsed
            .host_str()
            .with_context(|| format!("{name} URL {url:?} has no host"))?;
        let port = parsed.port_or_known_default().unwrap_or(80);
        let authority = format!("{host}:{port}");
        let addr = authority
            .to_socket_addrs()
            .with_context(|| format!("resolving {authority}"))?
            .next()
            .with_context(|| format!("{authority} resolves to nothing"))?;
        Ok(Target {
            name: name.to_string(),
            url: url.trim_end_matches('/').to_string(),
            addr,
            authority,
            pid,
        })
    }
}

const PHASES: [&str; 5] = ["push", "pull", "manifest", "big-pull", "concurrent-push"];

/// A comma-separated list of client counts, each > 0.
fn counts(v: Option<String>, default: &[usize], what: &str) -> anyhow::Result<Vec<usize>> {
    let Some(v) = v else {
        return Ok(default.to_vec());
    };
    v.split(',')
        .map(|n| match n.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(anyhow::anyhow!("{what}: {n:?} is not a count > 0")),
        })
        .collect()
}

fn parse_settings() -> anyhow::Result<Option<Settings>> {
    let mut flags: Vec<(String, Option<String>)> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            // `cargo bench` appends --bench; the quick and help switches take no value.
            "--bench" => {}
            "--quick" | "--help" | "-h" => flags.push((arg, None)),
            _ if arg.starts_with("--") => match arg.split_once('=') {
                Some((k, v)) => flags.push((k.to_string(), Some(v.to_string()))),
                None => {
                    let value = args
                        .next()
                        .with_context(|| format!("{arg} needs a value"))?;
                    flags.push((arg, Some(value)));
                }
            },
            // libtest-style filters and anything else positional are ignored.
            _ => {}
        }
    }
    let has = |k: &str| flags.iter().any(|(f, _)| f == k);
    if has("--help") || has("-h") {
        print!("{USAGE}");
        return Ok(None);
    }
    let get = |k: &str, env: &str| -> Option<String> {
        flags
            .iter()
            .rev()
            .find(|(f, _)| f == k)
            .and_then(|(_, v)| v.clone())
            .or_else(|| std::env::var(env).ok().filter(|v| !v.is_empty()))
    };
    fn num<T: std::str::FromStr>(v: Option<String>, default: T, what: &str) -> anyhow::Result<T> {
        match v {
            None => Ok(default),
            Some(s) => s
                .parse()
                .map_err(|_| anyhow::anyhow!("{what}: {s:?} is not a number")),
        }
    }
    let quick = has("--quick");
    let pid = |k: &str, env: &str| -> anyhow::Result<Option<u32>> {
        get(k, env).map(|p| num(Some(p), 0, k)).transpose()
    };
    let berth = match get("--berth", "BENCH_BERTH") {
        Some(url) => Some(Target::parse(
            "berth",
            &url,
            pid("--berth-pid", "BENCH_BERTH_PID")?,
        )?),
        None => None,
    };
    let peer_name =
        get("--peer-name", "BENCH_PEER_NAME").unwrap_or_else(|| "distribution".to_string());
    let peer = match get("--peer", "BENCH_PEER") {
        Some(url) => Some(Target::parse(
            &peer_name,
            &url,
            pid("--peer-pid", "BENCH_PEER_PID")?,
        )?),
        None => None,
    };
    let settings = Settings {
        berth,
        peer,
        storage_note: get("--storage-note", "BENCH_STORAGE")
            .unwrap_or_else(|| "not stated".to_string()),
        data_dir: get("--data-dir", "BENCH_DATA_DIR").map(|d| DataDir::new(d.into())),
        push_bytes: num(
            get("--push-mib", "BENCH_PUSH_MIB"),
            if quick { 16 } else { 100 },
            "--push-mib",
        )? << 20,
        push_reps: num(
            get("--push-reps", "BENCH_PUSH_REPS"),
            if quick { 2 } else { 5 },
            "--push-reps",
        )?,
        pull_bytes: num(get("--pull-kib", "BENCH_PULL_KIB"), 1024, "--pull-kib")? << 10,
        pull_clients: counts(
            get("--pull-clients", "BENCH_PULL_CLIENTS"),
            if quick { &[8, 64] } else { &[8, 64, 256] },
            "--pull-clients",
        )?,
        manifest_clients: counts(
            get("--manifest-clients", "BENCH_MANIFEST_CLIENTS"),
            if quick { &[8, 64] } else { &[8, 64, 256] },
            "--manifest-clients",
        )?,
        big_pull_bytes: num(
            get("--big-pull-mib", "BENCH_BIG_PULL_MIB"),
            64,
            "--big-pull-mib",
        )? << 20,
        push_clients: num(
            get("--push-clients", "BENCH_PUSH_CLIENTS"),
            if quick { 8 } else { 32 },
            "--push-clients",
        )?,
        push_clients_bytes: num(
            get("--push-clients-mib", "BENCH_PUSH_CLIENTS_MIB"),
            16,
            "--push-clients-mib",
        )? << 20,
        rounds: num(
            get("--rounds", "BENCH_ROUNDS"),
            if quick { 1 } else { 3 },
            "--rounds",
        )?,
        seconds: num(
            get("--seconds", "BENCH_SECONDS"),
            if quick { 1.0 } else { 5.0 },
            "--seconds",
        )?,
        warmup: num(
            get("--warmup", "BENCH_WARMUP"),
            if quick { 0.3 } else { 1.0 },
            "--warmup",
        )?,
        client_threads: num(
            get("--client-threads", "BENCH_CLIENT_THREADS"),
            2,
            "--client-threads",
        )?,
        only: get("--only", "BENCH_ONLY")
            .map(|l| l.split(',').map(|p| p.trim().to_string()).collect())
            .unwrap_or_default(),
    };
    for phase in &settings.only {
        ensure!(
            PHASES.contains(&phase.as_str()),
            "--only: unknown phase {phase:?} ({})",
            PHASES.join(", ")
        );
    }
    ensure!(
        settings.push_reps > 0 && settings.rounds > 0,
        "reps and rounds must be > 0"
    );
    ensure!(
        settings.push_clients > 0
            && settings.client_threads > 0
            && settings.big_pull_bytes > 0
            && settings.push_clients_bytes > 0,
        "client counts and sizes must be > 0"
    );
    Ok(Some(settings))
}

// ---------------------------------------------------------------------------------------
// A minimal HTTP/1.1 client: one keep-alive connection, requests one after another.

type Body = BoxBody<Bytes, Infallible>;

fn empty() -> Body {
    BoxBody::new(Empty::<Bytes>::new())
}

type Driver = hyper::client::conn::http1::Connection<TokioIo<TcpStream>, Body>;

struct Conn {
    send: SendRequest<Body>,
    host: HeaderValue,
}

impl Conn {
    /// Opens a connection whose I/O runs in a task of its own.
    async fn open(t: &Target) -> anyhow::Result<Conn> {
        let (conn, driver) = Conn::open_inline(t).await?;
        tokio::spawn(async move {
            let _ = driver.await;
        });
        Ok(conn)
    }

    /// Opens a connection and returns its I/O future, for the caller to poll in its own
    /// task next to the requests: no hand-off between tasks per request, a cheaper client.
    async fn open_inline(t: &Target) -> anyhow::Result<(Conn, Driver)> {
        let tcp = TcpStream::connect(t.addr)
            .await
            .with_context(|| format!("connecting to {} at {}", t.name, t.addr))?;
        tcp.set_nodelay(true)?;
        let (send, driver) = hyper::client::conn::http1::Builder::new()
            .handshake::<_, Body>(TokioIo::new(tcp))
            .await?;
        let conn = Conn {
            send,
            host: HeaderValue::from_str(&t.authority)?,
        };
        Ok((conn, driver))
    }

    async fn request(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(HeaderName, &str)],
        body: Body,
    ) -> anyhow::Result<Response<Incoming>> {
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = path.parse().with_context(|| format!("path {path:?}"))?;
        let h = req.headers_mut();
        h.insert(header::HOST, self.host.clone());
        for (k, v) in headers {
            h.insert(k.clone(), HeaderValue::from_str(v)?);
        }
        self.send.ready().await?;
        Ok(self.send.send_request(req).await?)
    }

    /// Sends a request and reads the whole reply; fails unless the status is `want`.
    async fn expect(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(HeaderName, &str)],
        body: Body,
        want: StatusCode,
    ) -> anyhow::Result<(hyper::HeaderMap, Bytes)> {
        let what = format!("{method} {path}");
        let response = self.request(method, path, headers, body).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        if parts.status != want {
            bail!(
                "{what}: expected {want}, got {}: {}",
                parts.status,
                String::from_utf8_lossy(&body[..body.len().min(500)])
            );
        }
        Ok((parts.headers, body))
    }
}

/// Reads a reply body to its end, counting the bytes without keeping them.
async fn drain(mut body: Incoming) -> anyhow::Result<u64> {
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            n += data.len() as u64;
        }
    }
    Ok(n)
}

/// A `Location` header as a request target: registries may answer with an absolute URL.
fn location(headers: &hyper::HeaderMap) -> anyhow::Result<String> {
    let loc = headers
        .get(header::LOCATION)
        .context("reply has no Location")?
        .to_str()?;
    if let Some(rest) = loc
        .strip_prefix("http://")
        .or_else(|| loc.strip_prefix("https://"))
    {
        return Ok(rest
            .find('/')
            .map_or("/".to_string(), |i| rest[i..].to_string()));
    }
    Ok(loc.to_string())
}

fn with_digest(loc: &str, digest: &str) -> String {
    let sep = if loc.contains('?') { '&' } else { '?' };
    format!("{loc}{sep}digest={}", digest.replace(':', "%3A"))
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Incompressible, reproducible bytes (xorshift64*), fast enough for 100 MiB.
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

fn run_nonce() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}

// ---------------------------------------------------------------------------------------
// CPU accounting from /proc: the server, this client, and the rest of the machine.

const TICKS_PER_SEC: f64 = 100.0; // USER_HZ on Linux

#[derive(Clone, Copy)]
struct CpuSnap {
    at: Instant,
    machine_busy: u64,
    client: u64,
    server: Option<u64>,
}

/// Cores used during an interval (1.0 = one CPU busy the whole time).
#[derive(Clone, Copy, Default)]
struct CpuUse {
    server: Option<f64>,
    client: f64,
    /// Everything else on the machine, steal time included.
    other: f64,
    /// CPU-seconds the server spent.
    server_secs: Option<f64>,
}

fn proc_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After "pid (comm) ", field 3 (state) is index 0: utime is field 14, stime 15.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn machine_busy_ticks() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0;
    };
    let Some(line) = stat.lines().next() else {
        return 0;
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is already in user)
    [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| v.get(i)).sum()
}

fn cpu_snap(server_pid: Option<u32>) -> CpuSnap {
    CpuSnap {
        at: Instant::now(),
        machine_busy: machine_busy_ticks(),
        client: proc_ticks("self").unwrap_or(0),
        server: server_pid.and_then(|p| proc_ticks(&p.to_string())),
    }
}

fn cpu_use(a: CpuSnap, b: CpuSnap) -> CpuUse {
    let secs = (b.at - a.at).as_secs_f64().max(1e-9);
    let d = |x: u64, y: u64| y.saturating_sub(x) as f64 / TICKS_PER_SEC;
    let server_secs = match (a.server, b.server) {
        (Some(x), Some(y)) => Some(d(x, y)),
        _ => None,
    };
    let client_secs = d(a.client, b.client);
    let busy = d(a.machine_busy, b.machine_busy);
    let other = (busy - client_secs - server_secs.unwrap_or(0.0)).max(0.0);
    CpuUse {
        server: server_secs.map(|s| s / secs),
        client: client_secs / secs,
        other: other / secs,
        server_secs,
    }
}

fn fmt_cores(c: &CpuUse) -> String {
    format!(
        "server {} / client {:.2} / other {:.2}",
        c.server.map_or("?".to_string(), |s| format!("{s:.2}")),
        c.client,
        c.other
    )
}

// ---------------------------------------------------------------------------------------
// (a) Push

#[derive(Clone, Copy, PartialEq, Eq)]
enum PushMode {
    /// What docker and containerd do: POST, one PATCH streaming the whole blob with
    /// chunked transfer encoding, then PUT ?digest= with no body.
    Streamed,
    /// POST, then PUT ?digest= carrying the whole blob with a Content-Length.
    Monolithic,
}

struct PushSample {
    total: Duration,
    /// The request that carries the bytes (PATCH, or the monolithic PUT).
    transfer: Duration,
    /// The closing PUT of a streamed push: verification and commit.
    commit: Duration,
    cpu: CpuUse,
    /// The disk work the push left for after its answer (with `--data-dir`).
    writeback: Option<Duration>,
}

const PUSH_FRAME: usize = 1 << 20;

/// `data` as a body of 1 MiB frames, sent with chunked transfer encoding as docker and
/// containerd stream a layer.
fn streamed(data: Bytes) -> Body {
    let size = data.len();
    let frames = (0..size.div_ceil(PUSH_FRAME)).map(move |i| {
        let end = ((i + 1) * PUSH_FRAME).min(size);
        Ok::<_, Infallible>(Frame::data(data.slice(i * PUSH_FRAME..end)))
    });
    BoxBody::new(StreamBody::new(futures::stream::iter(frames)))
}

async fn push_once(
    t: &Target,
    repo: &str,
    data: Bytes,
    digest: &str,
    mode: PushMode,
    data_dir: Option<&DataDir>,
) -> anyhow::Result<PushSample> {
    let size = data.len();
    let mut c = Conn::open(t).await?;
    // Settle: nothing of the previous push should still be freeing memory, or waiting to
    // be written to the disk at this push's expense.
    if let Some(dir) = data_dir {
        dir.settle()?;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before = cpu_snap(t.pid);
    let started = Instant::now();
    let (h, _) = c
        .expect(
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/"),
            &[(header::CONTENT_LENGTH, "0")],
            empty(),
            StatusCode::ACCEPTED,
        )
        .await?;
    let loc = location(&h)?;
    let (transfer, commit);
    match mode {
        PushMode::Streamed => {
            let body = streamed(data);
            let t0 = Instant::now();
            let (h, _) = c
                .expect(
                    Method::PATCH,
                    &loc,
                    &[(header::CONTENT_TYPE, "application/octet-stream")],
                    body,
                    StatusCode::ACCEPTED,
                )
                .await?;
            transfer = t0.elapsed();
            let loc = location(&h)?;
            let t1 = Instant::now();
            c.expect(
                Method::PUT,
                &with_digest(&loc, digest),
                &[(header::CONTENT_LENGTH, "0")],
                empty(),
                StatusCode::CREATED,
            )
            .await?;
            commit = t1.elapsed();
        }
        PushMode::Monolithic => {
            let len = size.to_string();
            let t0 = Instant::now();
            c.expect(
                Method::PUT,
                &with_digest(&loc, digest),
                &[
                    (header::CONTENT_TYPE, "application/octet-stream"),
                    (header::CONTENT_LENGTH, &len),
                ],
                BoxBody::new(Full::new(data)),
                StatusCode::CREATED,
            )
            .await?;
            transfer = t0.elapsed();
            commit = Duration::ZERO;
        }
    }
    let total = started.elapsed();
    let cpu = cpu_use(before, cpu_snap(t.pid));
    // Outside the timing: the registry must now serve the blob with the right size.
    let response = c
        .request(
            Method::HEAD,
            &format!("/v2/{repo}/blobs/{digest}"),
            &[],
            empty(),
        )
        .await?;
    let status = response.status();
    let got_len = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    drain(response.into_body()).await?;
    ensure!(
        status == StatusCode::OK && got_len == Some(size),
        "{}: HEAD of the pushed blob answered {status} with length {got_len:?}, want {size}",
        t.name
    );
    let writeback = data_dir.map(DataDir::settle).transpose()?;
    Ok(PushSample {
        total,
        transfer,
        commit,
        cpu,
        writeback,
    })
}

// ---------------------------------------------------------------------------------------
// (b), (c) Closed-loop GET load: N keep-alive connections, each sending its next request
// as soon as the previous reply is read.

#[derive(Clone)]
struct LoadSpec {
    path: String,
    accept: Option<&'static str>,
    /// A `Range` header to send; the reply must then be 206.
    range: Option<String>,
    expect_len: u64,
    clients: usize,
    warmup: Duration,
    measure: Duration,
}

struct LoadResult {
    requests: u64,
    bytes: u64,
    errors: u64,
    first_error: Option<String>,
    secs: f64,
    latencies_us: Vec<u32>,
    cpu: CpuUse,
    /// The server's peak RSS during the round, MiB.
    peak_rss: Option<f64>,
}

impl LoadResult {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.secs
    }
    fn mbps(&self) -> f64 {
        self.bytes as f64 / self.secs / 1e6
    }
    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies_us.len() - 1) as f64 * p).round() as usize;
        self.latencies_us[i] as f64 / 1000.0
    }
    /// Server CPU per request, in microseconds.
    fn server_us_per_req(&self) -> Option<f64> {
        self.cpu
            .server_secs
            .map(|s| s * 1e6 / self.requests.max(1) as f64)
    }
}

struct Worker {
    requests: u64,
    bytes: u64,
    errors: u64,
    first_error: Option<String>,
    latencies_us: Vec<u32>,
}

async fn load_worker(
    t: Target,
    first: (Conn, Driver),
    spec: LoadSpec,
    from: Instant,
    until: Instant,
) -> Worker {
    let mut w = Worker {
        requests: 0,
        bytes: 0,
        errors: 0,
        first_error: None,
        latencies_us: Vec::with_capacity(1 << 16),
    };
    let LoadSpec {
        path,
        accept,
        range,
        expect_len,
        ..
    } = spec;
    let headers: Vec<(HeaderName, &str)> = accept
        .map(|a| (header::ACCEPT, a))
        .into_iter()
        .chain(range.as_deref().map(|r| (header::RANGE, r)))
        .collect();
    let want = if range.is_some() {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let mut next = Some(first);
    loop {
        let (mut conn, driver) = match next.take() {
            Some(c) => c,
            // After a failure the connection may be gone: start a fresh one, or give up.
            None => match Conn::open_inline(&t).await {
                Ok(c) => c,
                Err(_) => break,
            },
        };
        // Requests one after another on this connection until time is up (true) or one
        // fails (false); the connection's I/O is polled in this same task.
        let session = async {
            loop {
                let sent = Instant::now();
                if sent >= until {
                    return true;
                }
                let outcome = async {
                    let response = conn.request(Method::GET, &path, &headers, empty()).await?;
                    let status = response.status();
                    let n = drain(response.into_body()).await?;
                    ensure!(status == want, "status {status}, want {want}");
                    ensure!(n == expect_len, "{n} bytes, want {expect_len}");
                    Ok(n)
                }
                .await;
                let done = Instant::now();
                match outcome {
                    Ok(n) => {
                        if done >= from && done <= until {
                            w.requests += 1;
                            w.bytes += n;
                            w.latencies_us
                                .push((done - sent).as_micros().min(u32::MAX as u128) as u32);
                        }
                    }
                    Err(e) => {
                        w.errors += 1;
                        w.first_error.get_or_insert_with(|| e.to_string());
                        return false;
                    }
                }
            }
        };
        let mut session = std::pin::pin!(session);
        let finished = match futures::future::select(session.as_mut(), std::pin::pin!(driver)).await
        {
            futures::future::Either::Left((finished, _)) => finished,
            // The connection ended: the request in flight fails, and is counted, now.
            futures::future::Either::Right(_) => session.await,
        };
        if finished {
            break;
        }
    }
    w
}

async fn run_load(t: &Target, spec: &LoadSpec) -> anyhow::Result<LoadResult> {
    let mut conns = Vec::with_capacity(spec.clients);
    for _ in 0..spec.clients {
        conns.push(Conn::open_inline(t).await?);
    }
    let start = Instant::now() + Duration::from_millis(20);
    let from = start + spec.warmup;
    let until = from + spec.measure;
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|c| tokio::spawn(load_worker(t.clone(), c, spec.clone(), from, until)))
        .collect();
    tokio::time::sleep_until(from.into()).await;
    let before = cpu_snap(t.pid);
    let rss = PeakRss::watch(t.pid);
    tokio::time::sleep_until(until.into()).await;
    let after = cpu_snap(t.pid);
    let peak_rss = rss.finish().await;
    let mut result = LoadResult {
        requests: 0,
        bytes: 0,
        errors: 0,
        first_error: None,
        secs: (after.at - before.at).as_secs_f64(),
        latencies_us: Vec::new(),
        cpu: cpu_use(before, after),
        peak_rss,
    };
    for task in tasks {
        let w = task.await?;
        result.requests += w.requests;
        result.bytes += w.bytes;
        result.errors += w.errors;
        if result.first_error.is_none() {
            result.first_error = w.first_error;
        }
        result.latencies_us.extend(w.latencies_us);
    }
    result.latencies_us.sort_unstable();
    Ok(result)
}

// ---------------------------------------------------------------------------------------
// Fixtures: a blob to pull and a small image whose manifest is fetched by tag.

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

async fn put_blob(c: &mut Conn, repo: &str, data: &[u8]) -> anyhow::Result<String> {
    let digest = sha256(data);
    let (h, _) = c
        .expect(
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/"),
            &[(header::CONTENT_LENGTH, "0")],
            empty(),
            StatusCode::ACCEPTED,
        )
        .await?;
    let loc = location(&h)?;
    let len = data.len().to_string();
    c.expect(
        Method::PUT,
        &with_digest(&loc, &digest),
        &[
            (header::CONTENT_TYPE, "application/octet-stream"),
            (header::CONTENT_LENGTH, &len),
        ],
        BoxBody::new(Full::new(Bytes::copy_from_slice(data))),
        StatusCode::CREATED,
    )
    .await?;
    Ok(digest)
}

/// Pushes the pull fixture; returns its path.
async fn setup_pull(t: &Target, blob: &[u8]) -> anyhow::Result<String> {
    let mut c = Conn::open(t).await?;
    let digest = put_blob(&mut c, "bench/pull", blob).await?;
    let path = format!("/v2/bench/pull/blobs/{digest}");
    let (_, body) = c
        .expect(Method::GET, &path, &[], empty(), StatusCode::OK)
        .await?;
    ensure!(
        sha256(&body) == digest,
        "{}: the pulled blob does not match what was pushed",
        t.name
    );
    Ok(path)
}

/// Pushes a one-layer OCI image tagged `latest`; returns the manifest path and size.
async fn setup_manifest(t: &Target, nonce: u64) -> anyhow::Result<(String, u64)> {
    let mut c = Conn::open(t).await?;
    let repo = "bench/manifest";
    let layer = pseudo_random(4096, nonce ^ 0x5eed);
    let layer_digest = put_blob(&mut c, repo, &layer).await?;
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    })
    .to_string();
    let config_digest = put_blob(&mut c, repo, config.as_bytes()).await?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": layer_digest,
            "size": layer.len(),
        }],
    })
    .to_string();
    let path = format!("/v2/{repo}/manifests/latest");
    c.expect(
        Method::PUT,
        &path,
        &[(header::CONTENT_TYPE, OCI_MANIFEST)],
        BoxBody::new(Full::new(Bytes::from(manifest.clone()))),
        StatusCode::CREATED,
    )
    .await?;
    let (h, body) = c
        .expect(
            Method::GET,
            &path,
            &[(header::ACCEPT, MANIFEST_ACCEPT)],
            empty(),
            StatusCode::OK,
        )
        .await?;
    ensure!(
        body == manifest.as_bytes(),
        "{}: GET by tag returned other bytes than were pushed",
        t.name
    );
    ensure!(
        h.get("docker-content-digest").and_then(|v| v.to_str().ok())
            == Some(sha256(manifest.as_bytes()).as_str()),
        "{}: GET by tag has a wrong Docker-Content-Digest",
        t.name
    );
    Ok((path, manifest.len() as u64))
}

// ---------------------------------------------------------------------------------------
// A load phase: rounds of closed-loop GETs on every registry, alternating which goes first.

async fn load_phase(
    s: &Settings,
    targets: &[Target],
    title: &str,
    spec_for: impl Fn(usize) -> LoadSpec,
) -> anyhow::Result<Vec<Vec<LoadResult>>> {
    println!(
        "-- {title}: {} rounds of {:.1} s (+{:.1} s warm-up) per registry",
        s.rounds, s.seconds, s.warmup
    );
    let mut results: Vec<Vec<LoadResult>> = targets.iter().map(|_| Vec::new()).collect();
    for round in 0..s.rounds {
        let mut order: Vec<usize> = (0..targets.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let t = &targets[i];
            let r = run_load(t, &spec_for(i))
                .await
                .with_context(|| format!("{title} on {}", t.name))?;
            println!(
                "   {:<13} round {round}: {:9.1} req/s {:8.1} MB/s  p50 {:6.2} ms  p99 {:6.2} ms  errors {}  server {} µs/req  RSS {}  cores: {}",
                t.name,
                r.rps(),
                r.mbps(),
                r.percentile_ms(0.5),
                r.percentile_ms(0.99),
                r.errors,
                r.server_us_per_req()
                    .map_or("?".to_string(), |u| format!("{u:.1}")),
                fmt_mib(r.peak_rss),
                fmt_cores(&r.cpu),
            );
            if let Some(e) = &r.first_error {
                println!("   {:<13} first error: {e}", "");
            }
            results[i].push(r);
        }
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    for (i, t) in targets.iter().enumerate() {
        let cpu = median_cpu(&results[i].iter().map(|r| r.cpu).collect::<Vec<_>>());
        println!(
            "   {:<13} median {:9.1} req/s {:8.1} MB/s  p99 {:.2} ms; cores: {}; {}",
            t.name,
            median_by(&results[i], LoadResult::rps),
            median_by(&results[i], LoadResult::mbps),
            median_by(&results[i], |r| r.percentile_ms(0.99)),
            fmt_cores(&cpu),
            limit(&cpu, cpus),
        );
    }
    let errors: u64 = results.iter().flatten().map(|r| r.errors).sum();
    if errors > 0 {
        println!("   WARNING: {errors} failed requests; the figures above are suspect");
    }
    println!();
    Ok(results)
}

/// What bounded a round. With every CPU busy, the load generator's share is CPU the
/// server could not have: when it takes a third or more, the figure says as much about
/// the generator as about the server.
fn limit(cpu: &CpuUse, cpus: f64) -> String {
    let busy = cpu.server.unwrap_or(0.0) + cpu.client + cpu.other;
    if busy < 0.9 * cpus {
        return "limit: neither side saturates the CPUs (latency-bound)".to_string();
    }
    let share = cpu.client / busy;
    if share >= 0.33 {
        format!(
            "limit: CPUs saturated, the load generator holds {:.0} % of them (generator-bound)",
            share * 100.0
        )
    } else {
        format!(
            "limit: CPUs saturated, the load generator holds {:.0} % (server-bound)",
            share * 100.0
        )
    }
}

fn medians(results: &[Vec<LoadResult>], f: impl Fn(&LoadResult) -> f64 + Copy) -> Vec<f64> {
    results.iter().map(|v| median_by(v, f)).collect()
}

/// p99 latency, errors and peak RSS of a load phase, berth beside the peer.
fn load_rows(what: &str, results: &[Vec<LoadResult>]) -> Vec<Row> {
    let p99 = medians(results, |r| r.percentile_ms(0.99));
    let errors: Vec<f64> = results
        .iter()
        .map(|v| v.iter().map(|r| r.errors).sum::<u64>() as f64)
        .collect();
    let rss = medians(results, |r| r.peak_rss.unwrap_or(f64::NAN));
    vec![
        Row {
            metric: format!("{what} p99 (ms)"),
            berth: p99[0],
            peer: p99.get(1).copied(),
            target: "-".to_string(),
            verdict: None,
        },
        Row {
            metric: format!("{what} errors"),
            berth: errors[0],
            peer: errors.get(1).copied(),
            target: "0".to_string(),
            verdict: Some(errors.iter().all(|&e| e == 0.0)),
        },
        Row {
            metric: format!("{what} peak RSS (MiB)"),
            berth: rss[0],
            peer: rss.get(1).copied(),
            target: "-".to_string(),
            verdict: None,
        },
    ]
}

// ---------------------------------------------------------------------------------------
// Report

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn median_by<T>(items: &[T], f: impl Fn(&T) -> f64) -> f64 {
    let mut v: Vec<f64> = items.iter().map(f).collect();
    median(&mut v)
}

fn median_cpu(items: &[CpuUse]) -> CpuUse {
    let server = items.iter().all(|c| c.server.is_some());
    CpuUse {
        server: server.then(|| median_by(items, |c| c.server.unwrap_or(0.0))),
        client: median_by(items, |c| c.client),
        other: median_by(items, |c| c.other),
        server_secs: server.then(|| median_by(items, |c| c.server_secs.unwrap_or(0.0))),
    }
}

struct Row {
    metric: String,
    berth: f64,
    peer: Option<f64>,
    target: String,
    verdict: Option<bool>,
}

impl Row {
    /// A figure with no target: `values[0]` is berth's, `values[1]` (if any) the peer's.
    fn reported(metric: String, values: &[f64]) -> Row {
        Row {
            metric,
            berth: values[0],
            peer: values.get(1).copied(),
            target: "-".to_string(),
            verdict: None,
        }
    }
}

fn read_first_line(path: &str) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.lines().next().map(str::trim).map(str::to_string))
        .unwrap_or_else(|| "?".to_string())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "?".to_string())
}

fn loadavg() -> String {
    read_first_line("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------------------

fn main() -> anyhow::Result<()> {
    let Some(s) = parse_settings()? else {
        return Ok(());
    };
    if s.berth.is_none() {
        // `cargo test --all-targets` runs this binary too: without registries, do nothing.
        eprintln!(
            "registry bench: no --berth URL (or BENCH_BERTH) given, nothing to measure; \
             run scripts/bench.sh"
        );
        return Ok(());
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(s.client_threads)
        .enable_all()
        .build()?
        .block_on(run(s))
}

async fn run(s: Settings) -> anyhow::Result<()> {
    let berth = s.berth.clone().expect("checked in main");
    let targets: Vec<Target> = std::iter::once(berth.clone())
        .chain(s.peer.clone())
        .collect();
    let peer_name = s.peer.as_ref().map(|p| p.name.clone());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load_at_start = loadavg();

    println!("== berth registry benchmark ==");
    println!(
        "machine: {} ({} CPUs, {}), kernel {}",
        read_first_line("/proc/sys/kernel/hostname"),
        cpus,
        cpu_model(),
        read_first_line("/proc/sys/kernel/osrelease"),
    );
    for t in &targets {
        println!(
            "{:<13} {}  (pid {})",
            format!("{}:", t.name),
            t.url,
            t.pid
                .map_or("unknown, no CPU figures".to_string(), |p| p.to_string())
        );
    }
    println!("storage: {}", s.storage_note);
    println!(
        "load generator: this process, hyper HTTP/1.1 keep-alive connections on {} tokio threads; \
         it shares the {cpus} CPUs with the server under test. Registries run one at a time.",
        s.client_threads
    );
    println!("load average at start: {load_at_start}");
    println!("MB = 10^6 bytes; 'cores' = CPU-seconds per second of wall time.");
    println!();

    let nonce = run_nonce();
    let mut rows: Vec<Row> = Vec::new();

    // ---- (a) push
    let base = pseudo_random(s.push_bytes, nonce);
    let mib = s.push_bytes >> 20;
    let push_modes = if s.runs("push") {
        vec![PushMode::Streamed, PushMode::Monolithic]
    } else {
        Vec::new()
    };
    if let (Some(dir), false) = (&s.data_dir, push_modes.is_empty()) {
        let limit = dir.write_limit(s.push_bytes, &base)?;
        println!(
            "-- the storage alone: {mib} MiB written in 1 MiB pieces and fsynced: {limit:.1} MB/s"
        );
        rows.push(Row {
            metric: format!("storage limit: {mib} MiB write+fsync (MB/s)"),
            berth: limit,
            peer: None,
            target: "-".to_string(),
            verdict: None,
        });
    }
    for mode in push_modes {
        let label = match mode {
            PushMode::Streamed => "POST + PATCH (whole blob, chunked) + PUT ?digest=",
            PushMode::Monolithic => "POST + PUT ?digest= (whole blob, Content-Length)",
        };
        println!("-- push {mib} MiB blob: {label}; {} reps each", s.push_reps);
        let mut samples: Vec<Vec<PushSample>> = targets.iter().map(|_| Vec::new()).collect();
        for rep in 0..s.push_reps {
            // A distinct blob per push, so no registry can skip work it has already done.
            let mut data = base.clone();
            data[..8].copy_from_slice(&(nonce ^ rep as u64 ^ ((mode as u64) << 32)).to_le_bytes());
            let data = Bytes::from(data);
            let digest = sha256(&data);
            let mut order: Vec<usize> = (0..targets.len()).collect();
            if rep % 2 == 1 {
                order.reverse();
            }
            for i in order {
                let t = &targets[i];
                let sample = push_once(
                    t,
                    "bench/push",
                    data.clone(),
                    &digest,
                    mode,
                    s.data_dir.as_ref(),
                )
                .await
                .with_context(|| format!("push to {}", t.name))?;
                println!(
                    "   {:<13} rep {rep}: {:7.1} MB/s  total {:6.1} ms  (transfer {:6.1} ms, final PUT {:5.1} ms{})  cores: {}",
                    t.name,
                    s.push_bytes as f64 / sample.total.as_secs_f64() / 1e6,
                    sample.total.as_secs_f64() * 1e3,
                    sample.transfer.as_secs_f64() * 1e3,
                    sample.commit.as_secs_f64() * 1e3,
                    sample.writeback.map_or(String::new(), |w| format!(
                        "; writeback left {:.1} ms",
                        w.as_secs_f64() * 1e3
                    )),
                    fmt_cores(&sample.cpu),
                );
                samples[i].push(sample);
            }
        }
        let mbps: Vec<f64> = samples
            .iter()
            .map(|v| median_by(v, |p| s.push_bytes as f64 / p.total.as_secs_f64() / 1e6))
            .collect();
        for (i, t) in targets.iter().enumerate() {
            let cpu = median_cpu(&samples[i].iter().map(|p| p.cpu).collect::<Vec<_>>());
            println!(
                "   {:<13} median {:7.1} MB/s; server CPU per push {}",
                t.name,
                mbps[i],
                cpu.server_secs
                    .map_or("?".to_string(), |x| format!("{:.0} ms", x * 1e3)),
            );
        }
        let peer = mbps.get(1).copied();
        let mode_name = match mode {
            PushMode::Streamed => "POST+PATCH+PUT",
            PushMode::Monolithic => "POST+PUT monolithic",
        };
        let (target, verdict) = match mode {
            PushMode::Streamed => (
                "≥ 1000 MB/s and ≥ 2×".to_string(),
                Some(mbps[0] >= 1000.0 && peer.is_none_or(|p| mbps[0] >= 2.0 * p)),
            ),
            PushMode::Monolithic => ("-".to_string(), None),
        };
        rows.push(Row {
            metric: format!("push {mib} MiB, {mode_name} (MB/s)"),
            berth: mbps[0],
            peer,
            target,
            verdict,
        });
        if s.data_dir.is_some() {
            let timed: Vec<Vec<_>> = samples
                .iter()
                .map(|v| v.iter().map(|p| (p.total, p.writeback)).collect())
                .collect();
            rows.extend(writeback::rows(
                &format!("push {mib} MiB, {mode_name}"),
                s.push_bytes,
                &timed,
            ));
        }
        println!();
    }
    drop(base);

    // ---- (b) pull, (c) manifest GET, at each concurrency
    let pull_blob = pseudo_random(s.pull_bytes, nonce ^ 0xb10b);
    let mut pull_paths = Vec::new();
    let mut manifest_paths = Vec::new();
    for t in &targets {
        pull_paths.push(
            setup_pull(t, &pull_blob)
                .await
                .with_context(|| format!("pull fixture on {}", t.name))?,
        );
        manifest_paths.push(
            setup_manifest(t, nonce)
                .await
                .with_context(|| format!("manifest fixture on {}", t.name))?,
        );
    }
    drop(pull_blob);
    let kib = s.pull_bytes >> 10;
    if s.runs("pull") {
        for &clients in &s.pull_clients {
            let title = format!("pull {kib} KiB blob, {clients} clients");
            let results = load_phase(&s, &targets, &title, |i| LoadSpec {
                path: pull_paths[i].clone(),
                accept: None,
                range: None,
                expect_len: s.pull_bytes as u64,
                clients,
                warmup: Duration::from_secs_f64(s.warmup),
                measure: Duration::from_secs_f64(s.seconds),
            })
            .await?;
            let mbps = medians(&results, LoadResult::mbps);
            let peer = mbps.get(1).copied();
            rows.push(Row {
                metric: format!("pull {kib} KiB ×{clients} (MB/s)"),
                berth: mbps[0],
                peer,
                target: "≥ 2×".to_string(),
                verdict: peer.map(|p| mbps[0] >= 2.0 * p),
            });
            rows.extend(load_rows(&format!("pull {kib} KiB ×{clients}"), &results));
        }
    }
    if s.runs("manifest") {
        for &clients in &s.manifest_clients {
            let title = format!("manifest GET by tag, {clients} clients");
            let results = load_phase(&s, &targets, &title, |i| LoadSpec {
                path: manifest_paths[i].0.clone(),
                accept: Some(MANIFEST_ACCEPT),
                range: None,
                expect_len: manifest_paths[i].1,
                clients,
                warmup: Duration::from_secs_f64(s.warmup),
                measure: Duration::from_secs_f64(s.seconds),
            })
            .await?;
            let rps = medians(&results, LoadResult::rps);
            rows.push(Row {
                metric: format!("manifest GET by tag ×{clients} (req/s)"),
                berth: rps[0],
                peer: rps.get(1).copied(),
                target: "≥ 20000 req/s".to_string(),
                verdict: Some(rps[0] >= 20000.0),
            });
            rows.extend(load_rows(&format!("manifest ×{clients}"), &results));
        }
    }

    // ---- (d) one large blob, alone: whole and by range, beside the loopback limit
    if s.runs("big-pull") {
        rows.extend(big_pull::run(&s, &targets, nonce).await?);
    }

    // ---- (e) many clients pushing distinct blobs at once
    if s.runs("concurrent-push") {
        rows.extend(concurrent_push::run(&s, &targets, nonce).await?);
    }

    // ---- summary
    let peer_col = peer_name.unwrap_or_else(|| "(no peer)".to_string());
    println!("== summary (medians) ==");
    let width = rows
        .iter()
        .map(|r| r.metric.chars().count())
        .max()
        .unwrap_or(6);
    println!(
        "{:<width$} {:>10} {:>13} {:>8}  {:<22} result",
        "metric", "berth", peer_col, "ratio", "target"
    );
    for r in &rows {
        let ratio = r
            .peer
            .filter(|&p| p != 0.0 && p.is_finite() && r.berth.is_finite())
            .map_or("-".to_string(), |p| format!("{:.2}×", r.berth / p));
        println!(
            "{:<width$} {:>10.1} {:>13} {:>8}  {:<22} {}",
            r.metric,
            r.berth,
            r.peer.map_or("-".to_string(), |p| format!("{p:.1}")),
            ratio,
            r.target,
            match r.verdict {
                Some(true) => "PASS",
                Some(false) => "MISS",
                None => "-",
            }
        );
    }
    println!(
        "load average: {load_at_start} at start, {} at end (targets are reported, never enforced)",
        loadavg()
    );
    Ok(())
}
