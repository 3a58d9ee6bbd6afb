//! One real Kubernetes control plane per test binary (scripts/control-plane/start.sh),
//! started by the first test that asks for it, with berth's CRDs installed and
//! Established; tests reach it through `cluster::TestCluster`.
//!
//! Cleanup: cargo never drops statics, so a watchdog shell, started before the control
//! plane, holds the read end of a pipe whose write end only this process holds. When the
//! process exits — normally, on a panic, or by SIGKILL — the pipe closes, `read` returns,
//! and the watchdog runs stop.sh and deletes the directory. `BERTH_KEEP_CLUSTER=1` keeps
//! the directory (logs, etcd data) for a look afterwards.

use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const BINARIES: [&str; 6] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "kwok-stages",
];

/// The control plane shared by all tests of this process.
pub struct ControlPlane {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    kubectl: PathBuf,
    /// Never written and never closed: its end is the watchdog's signal.
    _watchdog: ChildStdin,
}

pub enum Unavailable {
    /// Not installed here: skip, or fail in CI.
    Missing { what: String, how: String },
    /// Installed but did not come up: every test fails with this.
    Failed(String),
}

static SHARED: OnceLock<Result<ControlPlane, Unavailable>> = OnceLock::new();

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Where start.sh takes its binaries from (the same rule as start.sh).
fn control_plane_bin() -> PathBuf {
    if let Ok(dir) = std::env::var("BERTH_CONTROL_PLANE_BIN") {
        return dir.into();
    }
    let cache = std::env::var("BERTH_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                .join(".cache/berth")
        });
    cache.join("bin")
}

/// The control plane, started by the first caller; the others wait for it. Blocks.
pub fn shared() -> Result<&'static ControlPlane, &'static Unavailable> {
    SHARED.get_or_init(start).as_ref()
}

fn start() -> Result<ControlPlane, Unavailable> {
    let bin = control_plane_bin();
    if let Some(name) = BINARIES.iter().find(|n| !bin.join(n).is_file()) {
        return Err(Unavailable::Missing {
            what: format!("{}/{name}", bin.display()),
            how: "Run scripts/build-control-plane.sh (about 20 minutes the first time).".into(),
        });
    }
    // On PATH, where start.sh looks for it too.
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("kubectl"))
            .find(|p| p.is_file())
    });
    let Some(kubectl) = on_path else {
        return Err(Unavailable::Missing {
            what: "kubectl".into(),
            how: "Run scripts/install-system-packages.sh.".into(),
        });
    };
    let dir = tempfile::Builder::new()
        .prefix("berth-k8s-")
        .tempdir()
        .map_err(|e| Unavailable::Failed(format!("temp dir: {e}")))?
        .keep();
    let watchdog = spawn_watchdog(&dir).map_err(Unavailable::Failed)?;

    let started = Instant::now();
    let out = Command::new(repo().join("scripts/control-plane/start.sh"))
        .arg(&dir)
        .process_group(0) // a Ctrl-C reaches the tests, not the control plane
        .output()
        .map_err(|e| Unavailable::Failed(format!("cannot run start.sh: {e}")))?;
    if !out.status.success() {
        return Err(Unavailable::Failed(format!(
            "scripts/control-plane/start.sh {} failed ({}):\n{}",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let kubeconfig = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let ready = started.elapsed();

    let shared = ControlPlane {
        dir,
        kubeconfig,
        kubectl,
        _watchdog: watchdog,
    };
    install_crds(&shared).map_err(Unavailable::Failed)?;
    eprintln!(
        "control plane in {}: ready in {:.1}s, CRDs served {:.1}s later",
        shared.dir.display(),
        ready.as_secs_f64(),
        (started.elapsed() - ready).as_secs_f64()
    );
    Ok(shared)
}

/// Starts the watchdog that stops the control plane once this process is gone.
fn spawn_watchdog(dir: &Path) -> Result<ChildStdin, String> {
    const SCRIPT: &str = r#"
        trap '' INT HUP
        read -r _ || true
        "$1" "$2" >/dev/null 2>&1
        [ -n "$3" ] || rm -rf "$2"
    "#;
    let keep = std::env::var("BERTH_KEEP_CLUSTER").unwrap_or_default();
    let mut child = Command::new("sh")
        .args(["-c", SCRIPT, "berth-k8s-watchdog"])
        .arg(repo().join("scripts/control-plane/stop.sh"))
        .arg(dir)
        .arg(keep)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start the watchdog: {e}"))?;
    Ok(child.stdin.take().expect("piped stdin"))
}

/// Applies crds/, waits until they are Established and until discovery and OpenAPI list
/// them: both follow Established, and a kubectl that read discovery in between would
/// cache it without berth's kinds ("the server doesn't have a resource type"), as
/// `kubectl explain` would miss them.
fn install_crds(shared: &ControlPlane) -> Result<(), String> {
    let crds = repo().join("crds");
    let crds = crds.to_str().unwrap();
    let apply = [
        "apply",
        "--server-side",
        "--field-manager=berth-tests",
        "-f",
        crds,
    ];
    let wait = [
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "-f",
        crds,
    ];
    for args in [&apply[..], &wait[..]] {
        let out = shared.kubectl(args, None);
        if !out.status.success() {
            return Err(format!("installing the CRDs: {out}"));
        }
    }
    let plurals: Vec<String> = berth::api::crds()
        .iter()
        .map(|crd| crd.spec.names.plural.clone())
        .collect();
    let listed = |doc: &str, format: &dyn Fn(&str) -> String| {
        plurals.iter().all(|p| doc.contains(&format(p)))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let discovery = shared.kubectl(
            &["api-resources", "--api-group=berth.dev", "-o", "name"],
            None,
        );
        let openapi = shared.kubectl(
            &["get", "--raw", "/openapi/v3/apis/berth.dev/v1alpha1"],
            None,
        );
        if listed(&discovery.stdout, &|p| format!("{p}.berth.dev\n"))
            && listed(&openapi.stdout, &|p| {
                format!("/apis/berth.dev/v1alpha1/{p}\"")
            })
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "berth's kinds are not served:\n{discovery}\n{openapi}"
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

impl ControlPlane {
    /// Runs kubectl as the admin, with `stdin` as its input.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Kubectl {
        let mut cmd = Command::new(&self.kubectl);
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.dir.join("kubectl-tests-cache"))
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run kubectl: {e}"));
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().unwrap();
            pipe.write_all(input.as_bytes()).expect("kubectl stdin");
        }
        let out = child.wait_with_output().expect("kubectl output");
        Kubectl {
            args: args.iter().map(|a| a.to_string()).collect(),
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// What a kubectl run printed.
pub struct Kubectl {
    pub args: Vec<String>,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Kubectl {
    /// stdout, or a panic with everything kubectl said.
    #[track_caller]
    pub fn ok(self) -> String {
        assert!(self.status.success(), "{self}");
        self.stdout
    }

    /// stderr of a run that must fail, or a panic when it succeeded.
    #[track_caller]
    pub fn fails(self) -> String {
        assert!(!self.status.success(), "expected a failure: {self}");
        self.stderr
    }
}

impl std::fmt::Display for Kubectl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "kubectl {} exited with {}\nstdout:\n{}\nstderr:\n{}",
            self.args.join(" "),
            self.status,
            self.stdout,
            self.stderr
        )
    }
}
