//! The container clients people actually use — skopeo, containerd's ctr, podman,
//! crane, oras, regctl — against a real berth, one berth per test. Every test pushes
//! real content and checks digests: what goes in is what comes out, byte for byte.
//! Client command lines follow scripts/CLIENTS.md; every client's configuration lives
//! in temp directories.

mod auth;
#[path = "../common/mod.rs"]
mod common;
mod http;
mod image;
// The MinIO fixture of the storage suite, for the redirect tests.
#[allow(dead_code)]
#[path = "../storage/minio_server.rs"]
mod minio_server;
mod redirects;
#[allow(dead_code)]
#[path = "../storage/sigv4.rs"]
mod sigv4;
mod tools;

use common::Berth;
use image::{Layout, TestImage, image_blobs};
use tools::{Containerd, Isolated, Podman, Skopeo, tools};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const SIG_TYPE: &str = "application/vnd.berth.test.signature.v1";
const SBOM_TYPE: &str = "application/vnd.berth.test.sbom.v1";

/// skopeo copies an OCI image into berth and back out to a fresh OCI layout: the
/// manifest and every blob (config and all three layers, one of them several MiB) keep
/// their digests and bytes.
#[test]
fn skopeo_round_trips_a_multi_layer_oci_image_with_identical_digests() {
    let Some([umoci, skopeo]) = tools(["umoci", "skopeo"]) else {
        return;
    };
    let berth = Berth::start();
    let scratch = tempfile::tempdir().unwrap();
    let img = TestImage::build(&umoci, scratch.path());
    let skopeo = Skopeo::new(&skopeo);
    let remote = format!("docker://{}/test/skopeo:v1", berth.addr);

    skopeo.copy(
        &format!("oci:{}:{}", img.layout.dir.display(), TestImage::TAG),
        &remote,
        &["--format", "oci"],
    );

    let raw = skopeo.inspect_raw(&remote);
    assert_eq!(raw, img.manifest, "berth serves the manifest skopeo pushed");
    assert_eq!(skopeo.inspect_digest(&remote), img.manifest_digest);
    let served = http::manifest(&berth, "test/skopeo", "v1");
    assert_eq!(served.digest, img.manifest_digest);
    for blob in img.blob_digests() {
        http::assert_blob_served(&berth, "test/skopeo", &blob);
    }

    let out = Layout::at(scratch.path().join("out"));
    skopeo.copy(&remote, &format!("oci:{}:copied", out.dir.display()), &[]);
    assert_eq!(out.manifest_digest(Some("copied")), img.manifest_digest);
    assert_eq!(out.image_blobs(&img.manifest_digest), img.blob_digests());
    for blob in img.blob_digests() {
        assert_eq!(out.blob(&blob), img.layout.blob(&blob), "blob {blob}");
    }
}

/// An image converted to Docker schema 2 on the way in is stored as pushed: copying it
/// out again (to a directory, and on to another repository) keeps its digest, and the
/// gzip layers are the OCI image's own.
#[test]
fn skopeo_docker_schema2_image_keeps_its_digest_when_copied_out_again() {
    let Some([umoci, skopeo]) = tools(["umoci", "skopeo"]) else {
        return;
    };
    let berth = Berth::start();
    let scratch = tempfile::tempdir().unwrap();
    let img = TestImage::build(&umoci, scratch.path());
    let skopeo = Skopeo::new(&skopeo);
    let remote = format!("docker://{}/test/schema2:v1", berth.addr);

    skopeo.copy(
        &format!("oci:{}:{}", img.layout.dir.display(), TestImage::TAG),
        &remote,
        &["--format", "v2s2"],
    );
    let raw = skopeo.inspect_raw(&remote);
    let v2s2: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(v2s2["mediaType"], DOCKER_MANIFEST);
    assert_eq!(image_blobs(&v2s2), img.blob_digests());
    let digest = common::sha256(&raw);
    assert_ne!(
        digest, img.manifest_digest,
        "schema 2 is a different manifest"
    );
    assert_eq!(http::manifest(&berth, "test/schema2", "v1").digest, digest);

    // Out to a directory: the manifest bytes as served, every blob intact.
    let dir = scratch.path().join("dir-out");
    skopeo.copy(&remote, &format!("dir:{}", dir.display()), &[]);
    let copied = std::fs::read(dir.join("manifest.json")).unwrap();
    assert_eq!(common::sha256(&copied), digest);
    for blob in img.blob_digests() {
        let hex = blob.strip_prefix("sha256:").unwrap();
        let data = std::fs::read(dir.join(hex)).unwrap();
        assert_eq!(common::sha256(&data), blob);
    }

    // Registry to registry, into another repository: the same digest again.
    let other = format!("docker://{}/test/schema2-copy:v1", berth.addr);
    skopeo.copy(&remote, &other, &[]);
    assert_eq!(skopeo.inspect_digest(&other), digest);
    assert_eq!(
        http::manifest(&berth, "test/schema2-copy", "v1").digest,
        digest
    );
}

/// containerd imports an OCI archive, pushes it to berth, forgets it, pulls it back
/// (fetching every blob from berth and unpacking the layers, which checks them against
/// the config's diff_ids): the image digest is the source's throughout.
#[test]
fn containerd_pushes_and_pulls_back_the_same_image() {
    let Some([umoci, containerd, ctr]) = tools(["umoci", "containerd", "ctr"]) else {
        return;
    };
    let berth = Berth::start();
    let scratch = tempfile::tempdir().unwrap();
    let img = TestImage::build(&umoci, scratch.path());
    let archive = img.tar(&scratch.path().join("image.tar"));
    let daemon = Containerd::start(&containerd, &ctr);
    let base = format!("{}/test/ctr", berth.addr);
    let reference = format!("{base}:{}", TestImage::TAG);
    let local_digest = |reference: &str| -> Option<String> {
        daemon
            .ctr(&["images", "ls"])
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|cols| cols.first() == Some(&reference))
            .map(|cols| cols[2].to_string())
    };

    daemon.ctr(&[
        "images",
        "import",
        "--snapshotter",
        "native",
        "--base-name",
        &base,
        archive.to_str().unwrap(),
    ]);
    assert_eq!(local_digest(&reference), Some(img.manifest_digest.clone()));

    daemon.ctr(&["images", "push", "--plain-http", &reference]);
    assert_eq!(
        http::manifest(&berth, "test/ctr", TestImage::TAG).digest,
        img.manifest_digest
    );
    for blob in img.blob_digests() {
        http::assert_blob_served(&berth, "test/ctr", &blob);
    }

    daemon.ctr(&["images", "rm", "--sync", &reference]);
    let content = daemon.ctr(&["content", "ls", "--quiet"]);
    assert!(
        content.trim().is_empty(),
        "containerd still holds content after removing the image:\n{content}"
    );

    daemon.ctr(&[
        "images",
        "pull",
        "--plain-http",
        "--snapshotter",
        "native",
        &reference,
    ]);
    assert_eq!(local_digest(&reference), Some(img.manifest_digest.clone()));
    let content = daemon.ctr(&["content", "ls", "--quiet"]);
    for blob in std::iter::once(&img.manifest_digest).chain(&img.blob_digests()) {
        assert!(content.contains(blob.as_str()), "{blob} not pulled");
    }
    let ready = daemon.ctr(&["images", "check", "--quiet", "--snapshotter", "native"]);
    assert!(
        ready.lines().any(|l| l.trim() == reference),
        "pulled image is not complete and unpacked: {ready:?}"
    );
}

/// podman recompresses layers on push, so the digest it pushes is its own — but berth
/// must serve exactly that manifest back, and a pull of it gives the same image: same
/// image ID (config), same uncompressed layers, same digest.
#[test]
fn podman_pulls_back_exactly_the_manifest_it_pushed() {
    let Some([umoci, podman]) = tools(["umoci", "podman"]) else {
        return;
    };
    let berth = Berth::start();
    let scratch = tempfile::tempdir().unwrap();
    let img = TestImage::build(&umoci, scratch.path());
    let archive = img.tar(&scratch.path().join("image.tar"));
    let podman = Podman::new(&podman, &berth.addr);
    let reference = format!("{}/test/podman:v1", berth.addr);

    podman.run(&["load", "--quiet", "--input", archive.to_str().unwrap()]);
    podman.run(&["tag", "localhost/t:latest", &reference]);
    let digest_file = podman.path("pushed-digest");
    podman.run(&[
        "push",
        "--quiet",
        "--tls-verify=false",
        "--digestfile",
        digest_file.to_str().unwrap(),
        &reference,
    ]);
    let pushed = std::fs::read_to_string(&digest_file).unwrap();
    let pushed = pushed.trim();
    assert!(pushed.starts_with("sha256:"), "digest file: {pushed:?}");

    let served = http::manifest(&berth, "test/podman", "v1");
    assert_eq!(served.digest, pushed, "berth serves what podman pushed");
    let manifest = served.json();
    assert_eq!(manifest["config"]["digest"], img.config_digest.as_str());
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 3);
    for blob in image_blobs(&manifest) {
        http::assert_blob_served(&berth, "test/podman", &blob);
    }

    podman.run(&["rmi", "--all", "--force"]);
    let id = podman.run(&["pull", "--quiet", "--tls-verify=false", &reference]);
    assert_eq!(
        format!("sha256:{}", id.trim()),
        img.config_digest,
        "image ID"
    );
    let inspect: serde_json::Value =
        serde_json::from_str(&podman.run(&["image", "inspect", &reference])).unwrap();
    assert_eq!(inspect[0]["Digest"], pushed);
    let layers: Vec<&str> = inspect[0]["RootFS"]["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert_eq!(layers, img.diff_ids, "uncompressed layers");
}

/// crane pushes an OCI layout; the tag is listed, its digest is the source's, a pull
/// to an OCI layout gives back the same manifest and blobs, and the catalog names the
/// repository.
#[test]
fn crane_pushes_lists_and_pulls_an_image_unchanged() {
    let Some([umoci, crane]) = tools(["umoci", "crane"]) else {
        return;
    };
    let berth = Berth::start();
    let scratch = tempfile::tempdir().unwrap();
    let img = TestImage::build(&umoci, scratch.path());
    let crane = Isolated::new(&crane);
    let reference = format!("{}/test/crane:v1", berth.addr);

    crane.run(&[
        "push",
        "--insecure",
        img.layout.dir.to_str().unwrap(),
        &reference,
    ]);
    let repo = format!("{}/test/crane", berth.addr);
    assert_eq!(crane.run(&["ls", "--insecure", &repo]).trim(), "v1");
    assert_eq!(
        crane.run(&["digest", "--insecure", &reference]).trim(),
        img.manifest_digest
    );
    assert_eq!(
        crane
            .run(&["manifest", "--insecure", &reference])
            .as_bytes(),
        img.manifest
    );

    let out = Layout::at(scratch.path().join("pulled"));
    crane.run(&[
        "pull",
        "--insecure",
        "--format",
        "oci",
        &reference,
        out.dir.to_str().unwrap(),
    ]);
    assert_eq!(out.manifest_digest(None), img.manifest_digest);
    for blob in img.blob_digests() {
        assert_eq!(out.blob(&blob), img.layout.blob(&blob), "blob {blob}");
    }

    let catalog = crane.run(&["catalog", "--insecure", &berth.addr]);
    assert_eq!(catalog.lines().collect::<Vec<_>>(), ["test/crane"]);
}

/// `crane delete` of a manifest digest removes it: fetching it by digest or by its
/// tag fails afterwards, in crane and over HTTP, and the tag is no longer listed.
#[test]
fn crane_delete_by_digest_removes_the_manifest_and_its_tag() {
    let Some([umoci, crane]) = tools(["umoci", "crane"]) else {
        return;
    };
    let berth = Berth::start();
    let scratch = tempfile::tempdir().unwrap();
    let img = TestImage::build(&umoci, scratch.path());
    let crane = Isolated::new(&crane);
    let reference = format!("{}/test/gone:v1", berth.addr);
    let by_digest = format!("{}/test/gone@{}", berth.addr, img.manifest_digest);
    crane.run(&[
        "push",
        "--insecure",
        img.layout.dir.to_str().unwrap(),
        &reference,
    ]);
    crane.run(&["manifest", "--insecure", &by_digest]);

    crane.run(&["delete", "--insecure", &by_digest]);

    for gone in [&by_digest, &reference] {
        let out = crane
            .cmd()
            .args(["manifest", "--insecure", gone])
            .output()
            .unwrap();
        assert!(!out.status.success(), "crane manifest {gone} still works");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("MANIFEST_UNKNOWN"), "{stderr}");
    }
    assert_eq!(
        http::manifest_status(&berth, "test/gone", &img.manifest_digest),
        404
    );
    assert_eq!(http::manifest_status(&berth, "test/gone", "v1"), 404);
    assert!(http::tags(&berth, "test/gone").is_empty());
}

/// An artifact pushed with oras, and two referrers attached to it through the
/// referrers API (never the tag-schema fallback). Returns (subject digest,
/// signature digest, sbom digest).
fn oras_artifact_with_referrers(
    oras: &Isolated,
    berth: &Berth,
    dir: &std::path::Path,
) -> [String; 3] {
    let reference = format!("{}/test/oras:v1", berth.addr);
    std::fs::write(dir.join("hello.txt"), "hello, berth\n").unwrap();
    std::fs::write(dir.join("sig.txt"), "signed: hello, berth\n").unwrap();
    std::fs::write(dir.join("sbom.json"), r#"{"packages":["hello"]}"#).unwrap();
    let oras_json = |args: &[&str]| -> serde_json::Value {
        let out = common::run(oras.cmd().current_dir(dir).args(args));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("oras printed {out:?}: {e}"))
    };
    let pushed = oras_json(&[
        "push",
        "--plain-http",
        "--format",
        "json",
        "--artifact-type",
        "application/vnd.berth.test.artifact.v1",
        &reference,
        "hello.txt:text/plain",
    ]);
    let mut digests = vec![pushed["digest"].as_str().unwrap().to_string()];
    for (artifact_type, file) in [
        (SIG_TYPE, "sig.txt:text/plain"),
        (SBOM_TYPE, "sbom.json:application/json"),
    ] {
        let attached = oras_json(&[
            "attach",
            "--plain-http",
            "--format",
            "json",
            "--distribution-spec",
            "v1.1-referrers-api",
            "--artifact-type",
            artifact_type,
            &reference,
            file,
        ]);
        assert_eq!(attached["artifactType"], artifact_type);
        digests.push(attached["digest"].as_str().unwrap().to_string());
    }
    digests.try_into().unwrap()
}

/// oras attaches a signature-like referrer through the referrers API and discovers it
/// there; the artifact itself pulls back intact, and no `sha256-…` fallback tag is
/// created.
#[test]
fn oras_attach_and_discover_use_the_referrers_api() {
    let Some([oras]) = tools(["oras"]) else {
        return;
    };
    let berth = Berth::start();
    let scratch = tempfile::tempdir().unwrap();
    let oras = Isolated::new(&oras);
    let [subject, sig, sbom] = oras_artifact_with_referrers(&oras, &berth, scratch.path());
    let reference = format!("{}/test/oras:v1", berth.addr);

    let discovered: serde_json::Value = serde_json::from_str(&oras.run(&[
        "discover",
        "--plain-http",
        "--distribution-spec",
        "v1.1-referrers-api",
        "--format",
        "json",
        &reference,
    ]))
    .unwrap();
    assert_eq!(discovered["digest"], subject.as_str());
    let referrers = discovered
        .get("referrers")
        .or_else(|| discovered.get("manifests"))
        .and_then(|r| r.as_array())
        .unwrap_or_else(|| panic!("no referrers in {discovered:#}"));
    let mut found: Vec<(&str, &str)> = referrers
        .iter()
        .map(|r| {
            (
                r["artifactType"].as_str().unwrap(),
                r["digest"].as_str().unwrap(),
            )
        })
        .collect();
    found.sort();
    let mut expected = vec![(SIG_TYPE, sig.as_str()), (SBOM_TYPE, sbom.as_str())];
    expected.sort();
    assert_eq!(found, expected);

    let pulled = scratch.path().join("pulled");
    oras.run(&[
        "pull",
        "--plain-http",
        "-o",
        pulled.to_str().unwrap(),
        &reference,
    ]);
    assert_eq!(
        std::fs::read_to_string(pulled.join("hello.txt")).unwrap(),
        "hello, berth\n"
    );

    assert_eq!(http::tags(&berth, "test/oras"), ["v1"], "no fallback tags");
}

/// The referrers API as oras' referrers left it: every referrer of the subject, with
/// the artifactType, digest and size of the manifest berth serves; `?artifactType=`
/// keeps only matching ones and says so in `OCI-Filters-Applied`.
#[test]
fn referrers_api_lists_and_filters_oras_referrers() {
    let Some([oras]) = tools(["oras"]) else {
        return;
    };
    let berth = Berth::start();
    let scratch = tempfile::tempdir().unwrap();
    let oras = Isolated::new(&oras);
    let [subject, sig, sbom] = oras_artifact_with_referrers(&oras, &berth, scratch.path());

    let all = http::referrers(&berth, "test/oras", &subject, None);
    assert_eq!(all.header("oci-filters-applied"), None);
    let index = all.json();
    let manifests = index["manifests"].as_array().unwrap();
    let mut listed: Vec<&str> = manifests
        .iter()
        .map(|m| m["digest"].as_str().unwrap())
        .collect();
    listed.sort();
    let mut expected = vec![sig.as_str(), sbom.as_str()];
    expected.sort();
    assert_eq!(listed, expected);
    for m in manifests {
        let digest = m["digest"].as_str().unwrap();
        let served = http::manifest(&berth, "test/oras", digest);
        assert_eq!(m["size"].as_u64(), Some(served.body.len() as u64));
        assert_eq!(m["mediaType"], OCI_MANIFEST);
        assert_eq!(m["artifactType"], served.json()["artifactType"]);
        assert_eq!(served.json()["subject"]["digest"], subject.as_str());
    }

    let only_sigs = http::referrers(&berth, "test/oras", &subject, Some(SIG_TYPE));
    assert_eq!(
        only_sigs.header("oci-filters-applied"),
        Some("artifactType")
    );
    let index = only_sigs.json();
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1, "{index:#}");
    assert_eq!(manifests[0]["digest"], sig.as_str());
    assert_eq!(manifests[0]["artifactType"], SIG_TYPE);

    let none = http::referrers(&berth, "test/oras", &subject, Some("application/x-nothing"));
    assert_eq!(none.header("oci-filters-applied"), Some("artifactType"));
    assert_eq!(none.json()["manifests"], serde_json::json!([]));

    assert_eq!(http::tags(&berth, "test/oras"), ["v1"], "no fallback tags");
}

/// regctl copies an image from an OCI layout (digest kept), lists its tag, attaches an
/// artifact to it and lists it among the image's referrers.
#[test]
fn regctl_copies_lists_tags_and_lists_referrers() {
    let Some([umoci, regctl]) = tools(["umoci", "regctl"]) else {
        return;
    };
    let berth = Berth::start();
    let scratch = tempfile::tempdir().unwrap();
    let img = TestImage::build(&umoci, scratch.path());
    let regctl = Isolated::new(&regctl);
    let host = format!("reg={},tls=disabled", berth.addr);
    let reg = |args: &[&str]| regctl.run(&[&["--host", host.as_str()], args].concat());
    let reference = format!("{}/test/regctl:v1", berth.addr);

    reg(&[
        "image",
        "copy",
        &format!("ocidir://{}:{}", img.layout.dir.display(), TestImage::TAG),
        &reference,
    ]);
    assert_eq!(
        http::manifest(&berth, "test/regctl", "v1").digest,
        img.manifest_digest
    );
    assert_eq!(
        reg(&["image", "digest", &reference]).trim(),
        img.manifest_digest
    );
    let repo = format!("{}/test/regctl", berth.addr);
    assert_eq!(reg(&["tag", "ls", &repo]).trim(), "v1");

    let sig_file = scratch.path().join("sig.txt");
    std::fs::write(&sig_file, "signed by regctl\n").unwrap();
    let sig = reg(&[
        "artifact",
        "put",
        "--subject",
        &reference,
        "--artifact-type",
        SIG_TYPE,
        "--file-media-type",
        "text/plain",
        "--file",
        sig_file.to_str().unwrap(),
        "--format",
        "{{ .Manifest.GetDescriptor.Digest }}",
    ]);
    let sig = sig.trim();
    assert!(sig.starts_with("sha256:"), "artifact put printed {sig:?}");

    let listed: serde_json::Value = serde_json::from_str(&reg(&[
        "artifact",
        "list",
        &reference,
        "--format",
        "{{jsonPretty .}}",
    ]))
    .unwrap();
    assert_eq!(listed["subject"]["Digest"], img.manifest_digest.as_str());
    let descriptors = listed["descriptors"].as_array().unwrap();
    assert_eq!(descriptors.len(), 1, "{listed:#}");
    assert_eq!(descriptors[0]["digest"], sig);
    assert_eq!(descriptors[0]["artifactType"], SIG_TYPE);
    assert_eq!(reg(&["tag", "ls", &repo]).trim(), "v1", "no fallback tags");
}

/// Multi-level repository names work end to end: skopeo and crane push to
/// `team-a/tools/builder`, both tags list, the catalog names it, and both clients pull
/// the image back unchanged.
#[test]
fn nested_repository_names_work_with_skopeo_and_crane() {
    let Some([umoci, skopeo, crane]) = tools(["umoci", "skopeo", "crane"]) else {
        return;
    };
    let berth = Berth::start();
    let scratch = tempfile::tempdir().unwrap();
    let img = TestImage::build(&umoci, scratch.path());
    let skopeo = Skopeo::new(&skopeo);
    let crane = Isolated::new(&crane);
    let repo = format!("{}/team-a/tools/builder", berth.addr);

    skopeo.copy(
        &format!("oci:{}:{}", img.layout.dir.display(), TestImage::TAG),
        &format!("docker://{repo}:skopeo"),
        &[],
    );
    crane.run(&[
        "push",
        "--insecure",
        img.layout.dir.to_str().unwrap(),
        &format!("{repo}:crane"),
    ]);

    assert_eq!(
        http::tags(&berth, "team-a/tools/builder"),
        ["crane", "skopeo"]
    );
    let mut listed: Vec<String> = crane
        .run(&["ls", "--insecure", &repo])
        .lines()
        .map(String::from)
        .collect();
    listed.sort();
    assert_eq!(listed, ["crane", "skopeo"]);
    assert_eq!(
        crane.run(&["catalog", "--insecure", &berth.addr]).trim(),
        "team-a/tools/builder"
    );
    for tag in ["skopeo", "crane"] {
        assert_eq!(
            http::manifest(&berth, "team-a/tools/builder", tag).digest,
            img.manifest_digest
        );
        assert_eq!(
            crane
                .run(&["digest", "--insecure", &format!("{repo}:{tag}")])
                .trim(),
            img.manifest_digest
        );
    }

    let out = Layout::at(scratch.path().join("skopeo-out"));
    skopeo.copy(
        &format!("docker://{repo}:crane"),
        &format!("oci:{}:back", out.dir.display()),
        &[],
    );
    assert_eq!(out.manifest_digest(Some("back")), img.manifest_digest);
    let out = Layout::at(scratch.path().join("crane-out"));
    crane.run(&[
        "pull",
        "--insecure",
        "--format",
        "oci",
        &format!("{repo}:skopeo"),
        out.dir.to_str().unwrap(),
    ]);
    assert_eq!(out.manifest_digest(None), img.manifest_digest);
    for blob in img.blob_digests() {
        assert_eq!(out.blob(&blob), img.layout.blob(&blob), "blob {blob}");
    }
}
