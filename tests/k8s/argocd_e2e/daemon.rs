//! Long-running helper processes (redis, Argo CD's servers, git daemon) that must not
//! outlive the test process, whatever way it ends.
//!
//! Each runs under a small shell that holds the read end of a pipe whose write end only
//! this process holds (as the control plane's watchdog does): dropping the `Daemon`, a
//! normal exit, a panic or a SIGKILL of the test process all close the pipe, and the
//! shell then stops the daemon. A shared daemon kept in a `static` (never dropped) lives
//! exactly as long as the test process.

use std::fs::File;
use std::io::Read as _;
use std::net::TcpStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Daemon {
    name: String,
    log: PathBuf,
    child: Child,
    /// Never written: closing it (drop, or the process ending) stops the daemon.
    stop: Option<ChildStdin>,
}

impl Daemon {
    /// Starts `program ARGS` with `envs` added, stdout and stderr to `log`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        envs: &[(&str, String)],
        log: &Path,
    ) -> Daemon {
        // The shell exits with the daemon (so `try_wait` sees a crash); a background
        // subshell reads the pipe (fd 3: an asynchronous list's stdin would be
        // /dev/null) and stops the daemon once the pipe closes.
        const SCRIPT: &str = r#"
            exec 3<&0
            "$@" </dev/null 3<&- &
            child=$!
            { read -r _ <&3 || true; kill "$child" 2>/dev/null; } &
            exec 3<&-
            wait "$child"
        "#;
        let out = File::create(log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let mut cmd = Command::new("sh");
        cmd.args(["-c", SCRIPT, name])
            .arg(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            // Ctrl-C reaches the tests, which then close the pipe.
            .process_group(0);
        for (key, value) in envs {
            cmd.env(key, value);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({}): {e}", program.display()));
        let stop = child.stdin.take();
        Daemon {
            name: name.to_string(),
            log: log.to_path_buf(),
            child,
            stop,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the daemon is still running (a crash is reported with its log).
    pub fn check_running(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(format!(
                "{} exited ({status})\n{}",
                self.name,
                self.log_tail(40)
            )),
            _ => Ok(()),
        }
    }

    /// The last lines of the daemon's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        let all: Vec<&str> = text.lines().collect();
        let from = all.len().saturating_sub(lines);
        format!(
            "--- last {} lines of {} ---\n{}",
            all.len() - from,
            self.log.display(),
            all[from..].join("\n")
        )
    }

    /// Waits until something accepts connections on 127.0.0.1:`port`.
    pub fn wait_for_port(&mut self, port: u16, limit: Duration) {
        self.wait_until(limit, &format!("listening on port {port}"), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    /// Waits until `GET http://127.0.0.1:PORT/healthz` answers 200.
    pub fn wait_for_healthz(&mut self, port: u16, limit: Duration) {
        use std::io::Write as _;
        self.wait_until(limit, &format!("healthy on port {port}"), || {
            let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
                return false;
            };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let asked = write!(
                s,
                "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
            );
            let mut reply = String::new();
            asked.is_ok()
                && s.read_to_string(&mut reply).is_ok()
                && reply.starts_with("HTTP/1.1 200")
        });
    }

    fn wait_until(&mut self, limit: Duration, what: &str, check: impl Fn() -> bool) {
        let start = Instant::now();
        loop {
            if check() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited ({status}) before it was {what}\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
            assert!(
                start.elapsed() < limit,
                "{} is not {what} after {limit:?}\n{}",
                self.name,
                self.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        drop(self.stop.take());
        let _ = self.child.wait();
    }
}

pub use crate::common::free_port;
