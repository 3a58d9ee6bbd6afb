//! Uploading image tarballs through the API: `docker save` and OCI layouts, plain and
//! gzip, overwrite a tag and pull back byte for byte; a broken file stores nothing;
//! real clients (skopeo, docker) pull what was uploaded.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;

use crate::common::{require_tool, run, sha256};
use crate::registry::Registry;
use crate::tarball::{self, Tarball};
use crate::{api, auth, start};

async fn upload(
    registry: &Registry,
    who: Option<&str>,
    repo: &str,
    tag: &str,
    data: Vec<u8>,
) -> (u16, Value) {
    let authorization = who.map(auth);
    let reply = registry
        .raw(
            Method::POST,
            &format!("/api/repositories/{repo}/-/upload?tag={tag}"),
            authorization.as_deref(),
            Some(("application/octet-stream", data)),
        )
        .await;
    (reply.status.as_u16(), reply.json())
}

async fn manifest(registry: &Registry, repo: &str, tag: &str) -> (u16, Value) {
    let reply = registry
        .raw(
            Method::GET,
            &format!("/v2/{repo}/manifests/{tag}"),
            Some(&auth("root")),
            None,
        )
        .await;
    (reply.status.as_u16(), reply.json())
}

/// Upload sessions still open: a session is its state record (a removed one may leave
/// an empty folder behind on a filesystem).
fn uploads_left(data_dir: &Path) -> usize {
    std::fs::read_dir(data_dir.join("uploads"))
        .map(|d| {
            d.filter(|e| e.as_ref().is_ok_and(|e| e.path().join("state").exists()))
                .count()
        })
        .unwrap_or(0)
}

async fn check_pulls_back(registry: &Registry, repo: &str, tag: &str, image: &Tarball) {
    let (status, m) = manifest(registry, repo, tag).await;
    assert_eq!(status, 200, "{m}");
    assert_eq!(m["config"]["digest"], image.config_digest.as_str());
    assert_eq!(m["layers"][0]["digest"], image.layer_digest.as_str());
    let blob = registry
        .raw(
            Method::GET,
            &format!("/v2/{repo}/blobs/{}", image.layer_digest),
            Some(&auth("root")),
            None,
        )
        .await;
    assert_eq!(sha256(&blob.body), image.layer_digest);
}

#[tokio::test]
async fn a_docker_save_tar_becomes_a_tag_and_a_second_upload_overwrites_it() {
    let registry = start().await;
    let first = tarball::docker_save("one");
    let (status, body) = upload(
        &registry,
        Some("will"),
        "pub/app",
        "v1",
        first.bytes.clone(),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    check_pulls_back(&registry, "pub/app", "v1", &first).await;
    let second = tarball::docker_save("two");
    let (status, body) = upload(
        &registry,
        Some("will"),
        "pub/app",
        "v1",
        tarball::gzip(&second.bytes),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    check_pulls_back(&registry, "pub/app", "v1", &second).await;
    // The tag page shows the history and layers of the upload.
    let (_, tag) = api(
        &registry,
        Method::GET,
        "/api/repositories/pub/app/-/tags/v1",
        None,
        None,
    )
    .await;
    assert_eq!(
        tag["history"][0]["createdBy"],
        "COPY hello.txt / # buildkit"
    );
    assert_eq!(tag["platforms"][0], "linux/amd64");
    assert_eq!(
        uploads_left(&registry.berth.data_dir),
        0,
        "every session is committed or cancelled"
    );
}

#[tokio::test]
async fn an_oci_layout_tar_plain_or_gzip_keeps_its_manifest_digest() {
    let registry = start().await;
    for (tag, gzip) in [("plain", false), ("gz", true)] {
        let image = tarball::oci_layout(tag);
        let data = if gzip {
            tarball::gzip(&image.bytes)
        } else {
            image.bytes.clone()
        };
        let (status, body) = upload(&registry, Some("will"), "team/oci", tag, data).await;
        assert_eq!(status, 201, "{body}");
        check_pulls_back(&registry, "team/oci", tag, &image).await;
        let head = registry
            .raw(
                Method::HEAD,
                &format!("/v2/team/oci/manifests/{tag}"),
                Some(&auth("root")),
                None,
            )
            .await;
        assert_eq!(
            head.headers["docker-content-digest"].to_str().unwrap(),
            body["digest"].as_str().unwrap()
        );
    }
}

#[tokio::test]
async fn a_bad_file_gets_a_clear_message_and_stores_nothing() {
    let registry = start().await;
    let image = tarball::docker_save("bad");
    let mut corrupt = tarball::gzip(&image.bytes);
    // The gzip trailer's CRC: only the end of the stream shows the damage, after every
    // layer has streamed into an upload session.
    let n = corrupt.len();
    corrupt[n - 8] ^= 0xff;
    let (status, body) = upload(&registry, Some("will"), "pub/fresh", "v1", corrupt).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("CORRUPT_GZIP")),
        "{body}"
    );
    let (status, body) = upload(
        &registry,
        Some("will"),
        "pub/fresh",
        "v1",
        vec![7u8; 10_000],
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("NOT_AN_IMAGE")),
        "{body}"
    );
    let mut cut = image.bytes.clone();
    cut.truncate(cut.len() / 2);
    let (status, body) = upload(&registry, Some("will"), "pub/fresh", "v1", cut).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("CORRUPT_TAR")),
        "{body}"
    );
    let empty_tar = {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("readme"), "not an image").unwrap();
        let out = dir.path().join("x.tar");
        run(Command::new("tar")
            .arg("-C")
            .arg(dir.path())
            .arg("-cf")
            .arg(&out)
            .arg("readme"));
        std::fs::read(out).unwrap()
    };
    let (status, body) = upload(&registry, Some("will"), "pub/fresh", "v1", empty_tar).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("NOT_AN_IMAGE")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("manifest.json"),
        "{body}"
    );
    let (status, _) = manifest(&registry, "pub/fresh", "v1").await;
    assert_eq!(status, 404);
    let blob = registry
        .raw(
            Method::HEAD,
            &format!("/v2/pub/fresh/blobs/{}", image.layer_digest),
            Some(&auth("root")),
            None,
        )
        .await;
    assert_eq!(blob.status, 404, "no layer of a refused upload is linked");
    assert_eq!(
        uploads_left(&registry.berth.data_dir),
        0,
        "no session is left behind"
    );
}

#[tokio::test]
async fn only_writers_upload_and_immutable_tags_stay() {
    let registry = start().await;
    let image = tarball::docker_save("x");
    let (status, body) = upload(
        &registry,
        Some("rita"),
        "team/app",
        "v1",
        image.bytes.clone(),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = upload(&registry, None, "team/app", "v1", image.bytes.clone()).await;
    assert_eq!(
        status, 404,
        "a private namespace does not exist for an anonymous caller: {body}"
    );
    let (status, _) = upload(
        &registry,
        Some("will"),
        "pub/app",
        "release-1",
        image.bytes.clone(),
    )
    .await;
    assert_eq!(status, 201);
    let other = tarball::docker_save("y");
    let (status, body) = upload(&registry, Some("will"), "pub/app", "release-1", other.bytes).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("immutable"),
        "{body}"
    );
    check_pulls_back(&registry, "pub/app", "release-1", &image).await;
}

#[tokio::test]
async fn skopeo_pulls_what_was_uploaded_and_the_pull_count_goes_up() {
    let Some(skopeo) = require_tool("skopeo") else {
        return;
    };
    let registry = start().await;
    let image = tarball::docker_save("skopeo");
    let (status, body) = upload(
        &registry,
        Some("will"),
        "pub/app",
        "v1",
        image.bytes.clone(),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let count = |repo: &Value| repo["tags"]["items"][0]["pulls"].as_u64().unwrap();
    let (_, before) = api(
        &registry,
        Method::GET,
        "/api/repositories/pub/app",
        None,
        None,
    )
    .await;
    assert_eq!(count(&before), 0);
    for i in 0..2 {
        let out = tempfile::tempdir().unwrap();
        run(Command::new(&skopeo).args([
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{}/pub/app:v1", registry.berth.addr),
            &format!("dir:{}/{i}", out.path().display()),
        ]));
    }
    let (_, after) = api(
        &registry,
        Method::GET,
        "/api/repositories/pub/app",
        None,
        None,
    )
    .await;
    assert!(count(&after) >= 2, "{after}");
}

/// A Docker daemon of the test's own (vfs storage, no networking of its own).
pub struct Dockerd {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Dockerd {
    pub fn start(dockerd: &Path) -> Option<Dockerd> {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("docker.sock");
        let child = Command::new(dockerd)
            .args([
                "--storage-driver",
                "vfs",
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
            ])
            .arg("--data-root")
            .arg(dir.path().join("data"))
            .arg("--exec-root")
            .arg(dir.path().join("exec"))
            .arg("--pidfile")
            .arg(dir.path().join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("dockerd.log")).unwrap())
            .spawn()
            .ok()?;
        let d = Dockerd {
            child,
            socket,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if d.docker()
                .arg("info")
                .output()
                .is_ok_and(|o| o.status.success())
            {
                return Some(d);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        None
    }

    pub fn docker(&self) -> Command {
        let mut cmd = Command::new("docker");
        cmd.arg("-H")
            .arg(format!("unix://{}", self.socket.display()));
        cmd
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn docker_save_uploaded_through_the_api_is_pulled_by_docker() {
    let Some(dockerd) = require_tool("dockerd") else {
        return;
    };
    if require_tool("docker").is_none() {
        return;
    }
    let Some(daemon) = Dockerd::start(&dockerd) else {
        crate::common::missing_prerequisite(
            "a running dockerd",
            "run the tests as root with Debian's docker.io installed",
        );
        return;
    };
    // An image made without a network: a one-file root filesystem, imported.
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("hello.txt"), "from docker").unwrap();
    let rootfs = work.path().join("rootfs.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(work.path())
        .arg("-cf")
        .arg(&rootfs)
        .arg("hello.txt"));
    run(daemon
        .docker()
        .args(["import"])
        .arg(&rootfs)
        .arg("berth-test/hello:1"));
    let saved = work.path().join("saved.tar");
    run(daemon
        .docker()
        .args(["save", "-o"])
        .arg(&saved)
        .arg("berth-test/hello:1"));
    let id = run(daemon.docker().args([
        "image",
        "inspect",
        "--format",
        "{{.Id}}",
        "berth-test/hello:1",
    ]));

    let registry = start().await;
    let (status, body) = upload(
        &registry,
        Some("will"),
        "pub/hello",
        "1",
        std::fs::read(&saved).unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let reference = format!("{}/pub/hello:1", registry.berth.addr);
    run(daemon.docker().args(["pull", &reference]));
    let pulled = run(daemon
        .docker()
        .args(["image", "inspect", "--format", "{{.Id}}", &reference]));
    assert_eq!(
        pulled.trim(),
        id.trim(),
        "docker pulls the very image it saved"
    );
    let (_, repo) = api(
        &registry,
        Method::GET,
        "/api/repositories/pub/hello",
        None,
        None,
    )
    .await;
    assert!(repo["pullCount"].as_u64().unwrap() >= 1, "{repo}");
}
