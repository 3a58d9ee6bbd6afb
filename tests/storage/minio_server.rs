//! A real MinIO server on loopback, with one bucket, for the S3 half of the suite.
//!
//! One server is shared by every MinIO test of the process ([`shared`]); each test
//! works under its own key prefix. A static is never dropped, so the server's lifetime
//! is tied to the test process by a pipe instead: MinIO runs under a small `sh`
//! watchdog whose stdin is a pipe from this process. When this process exits — tests
//! done, a panic, or SIGKILL — the kernel closes the pipe's write end, the watchdog's
//! `cat` sees EOF, and it kills MinIO and removes its data directory. No stray MinIO
//! survives `cargo test`, even one that was killed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::common::require_tool;
use crate::sigv4;

pub const ACCESS_KEY: &str = "berth-test";
pub const SECRET_KEY: &str = "berth-test-secret";
pub const REGION: &str = "us-east-1";
pub const BUCKET: &str = "berth-suite";

const WATCHDOG: &str = r#"
minio="$1"; dir="$2"; address="$3"; console="$4"
"$minio" server "$dir/data" --address "$address" --console-address "$console" \
    </dev/null >"$dir/minio.log" 2>&1 &
pid=$!
echo "$pid"
cat >/dev/null
kill -KILL "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
rm -rf "$dir"
"#;

pub struct MinioServer {
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    pub bucket: String,
    dir: PathBuf,
    watchdog: Child,
    /// Dropping this ends the watchdog's `cat`, which then kills MinIO.
    lifeline: Option<ChildStdin>,
}

/// The process-wide server, started on first use. `None` when MinIO is not installed
/// (outside CI: the caller skips its test, loudly).
pub fn shared() -> Option<&'static MinioServer> {
    static SERVER: OnceLock<Option<MinioServer>> = OnceLock::new();
    SERVER.get_or_init(MinioServer::start).as_ref()
}

impl MinioServer {
    /// Starts MinIO on free loopback ports and creates [`BUCKET`].
    pub fn start() -> Option<MinioServer> {
        let binary = require_tool("minio")?;
        // Free ports are found by binding and releasing them, so another process can take
        // one in between: a server that fails to come up is retried on new ports.
        let mut failures = Vec::new();
        for _ in 0..3 {
            match MinioServer::try_start(&binary) {
                Ok(server) => {
                    server.create_bucket(BUCKET);
                    return Some(server);
                }
                Err(e) => failures.push(e),
            }
        }
        panic!(
            "MinIO did not start:\n{}",
            failures.join("\n---------------\n")
        );
    }

    fn try_start(binary: &Path) -> Result<MinioServer, String> {
        // Not a tempfile::TempDir: the watchdog deletes it after MinIO is gone, and a
        // static's destructor would never run anyway.
        let dir = std::env::temp_dir().join(format!("berth-minio-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(dir.join("data")).expect("create MinIO data dir");
        let [port, console_port] = free_ports();
        let mut watchdog = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("minio-watchdog")
            .arg(binary)
            .arg(&dir)
            .arg(format!("127.0.0.1:{port}"))
            .arg(format!("127.0.0.1:{console_port}"))
            .env("MINIO_ROOT_USER", ACCESS_KEY)
            .env("MINIO_ROOT_PASSWORD", SECRET_KEY)
            .env("MINIO_BROWSER", "off")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn sh for the MinIO watchdog");
        let mut line = String::new();
        BufReader::new(watchdog.stdout.take().expect("watchdog stdout"))
            .read_line(&mut line)
            .expect("read MinIO pid");
        let pid: u32 = line.trim().parse().expect("watchdog prints MinIO's pid");
        let server = MinioServer {
            endpoint: format!("http://127.0.0.1:{port}"),
            bucket: BUCKET.to_string(),
            lifeline: watchdog.stdin.take(),
            watchdog,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((200, _)) = server.request("GET", "/minio/health/ready", &[]) {
                return Ok(server);
            }
            if !process_alive(pid) || Instant::now() > deadline {
                let log = std::fs::read_to_string(server.dir.join("minio.log")).unwrap_or_default();
                return Err(format!(
                    "MinIO on port {port} ({}), log:\n{log}",
                    if process_alive(pid) {
                        "not ready after 60s"
                    } else {
                        "exited"
                    }
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Creates a bucket with a SigV4-signed `PUT /bucket` (see `sigv4.rs` for why).
    /// The alternative, a directory made in the data dir before MinIO starts, relies on
    /// undocumented behaviour of MinIO's on-disk format (which MinIO says not to touch);
    /// the S3 API call is what every client does and works offline.
    pub fn create_bucket(&self, bucket: &str) {
        let path = format!("/{bucket}");
        // `/minio/health/ready` can answer 200 a moment before the object layer is up, when
        // requests still get 503 XMinioServerNotInitialized: retry those for a while.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let headers = sigv4::sign_empty_request(
                "PUT",
                self.host(),
                &path,
                REGION,
                ACCESS_KEY,
                SECRET_KEY,
            );
            let (status, body) = self
                .request("PUT", &path, &headers)
                .unwrap_or_else(|e| panic!("PUT {path} to MinIO: {e}"));
            match status {
                200 => return,
                // A retried request whose first attempt went through.
                409 if body.contains("BucketAlreadyOwnedByYou") => return,
                503 if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
                _ => panic!("MinIO refused to create bucket {bucket} ({status}): {body}"),
            }
        }
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> &str {
        self.endpoint.trim_start_matches("http://")
    }

    /// The environment `AmazonS3Builder::from_env` (and so `berth serve --storage s3://…`)
    /// needs to reach this server.
    pub fn aws_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_REGION", REGION.into()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    /// One HTTP/1.1 request with an empty body over a plain socket (the fixture runs
    /// before and outside any async runtime). Returns the status and the body.
    fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
    ) -> std::io::Result<(u16, String)> {
        let mut socket = TcpStream::connect(self.host())?;
        socket.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n",
            self.host()
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        socket.write_all(request.as_bytes())?;
        let mut response = String::new();
        socket.read_to_string(&mut response)?;
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {response:?}")))?;
        let body = response
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_string();
        Ok((status, body))
    }
}

impl Drop for MinioServer {
    fn drop(&mut self) {
        drop(self.lifeline.take());
        let _ = self.watchdog.wait();
    }
}

/// Two distinct free loopback ports (see `free_port` for why not `bind(0)`).
fn free_ports() -> [u16; 2] {
    let first = crate::common::free_port();
    loop {
        let second = crate::common::free_port();
        if second != first {
            return [first, second];
        }
    }
}

/// Whether `pid` is running (a zombie waiting for the watchdog to reap it is not).
fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .next()?
                .to_string();
            Some(state != "Z" && state != "X")
        })
        .unwrap_or(false)
}
