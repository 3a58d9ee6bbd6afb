//! The test image, built offline with umoci, and reading OCI image layouts (what
//! umoci, skopeo and crane write) to compare digests in and out.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::common::{run, sha256};

/// Size of the layer of random-looking bytes: several MiB that gzip cannot shrink, and
/// not a multiple of any power of two, so clients upload it in more than one piece.
pub const NOISE_LEN: usize = 5 * 1024 * 1024 + 4321;

/// An OCI image layout on disk (`index.json`, `blobs/<alg>/<hex>`).
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn at(dir: impl Into<PathBuf>) -> Layout {
        Layout { dir: dir.into() }
    }

    pub fn index(&self) -> Value {
        read_json(&self.dir.join("index.json"))
    }

    /// The digest `index.json` gives for the manifest named `tag`
    /// (`org.opencontainers.image.ref.name`), or for the only manifest when `tag` is
    /// `None` (crane's layouts name nothing).
    pub fn manifest_digest(&self, tag: Option<&str>) -> String {
        let index = self.index();
        let manifests = index["manifests"].as_array().expect("index.json manifests");
        let found: Vec<&Value> = manifests
            .iter()
            .filter(|m| {
                tag.is_none_or(|t| {
                    m["annotations"]["org.opencontainers.image.ref.name"].as_str() == Some(t)
                })
            })
            .collect();
        assert_eq!(
            found.len(),
            1,
            "expected exactly one manifest named {tag:?} in {}: {index:#}",
            self.dir.display()
        );
        found[0]["digest"].as_str().expect("digest").to_string()
    }

    /// A blob's bytes; panics when it is missing or its content does not match its name.
    pub fn blob(&self, digest: &str) -> Vec<u8> {
        let (alg, hex) = digest.split_once(':').expect("algorithm:hex");
        let path = self.dir.join("blobs").join(alg).join(hex);
        let data = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("blob {digest} missing from {}: {e}", self.dir.display()));
        assert_eq!(sha256(&data), digest, "{} is corrupt", path.display());
        data
    }

    /// Config and layer digests of the image manifest `manifest_digest`.
    pub fn image_blobs(&self, manifest_digest: &str) -> Vec<String> {
        image_blobs(&serde_json::from_slice(&self.blob(manifest_digest)).unwrap())
    }
}

/// Config digest first, then the layer digests in order, of an image manifest.
pub fn image_blobs(manifest: &Value) -> Vec<String> {
    let mut digests = vec![
        manifest["config"]["digest"]
            .as_str()
            .expect("config digest")
            .to_string(),
    ];
    for layer in manifest["layers"].as_array().expect("layers") {
        digests.push(layer["digest"].as_str().expect("layer digest").to_string());
    }
    digests
}

pub fn read_json(path: &Path) -> Value {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_slice(&data).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// A three-layer linux/amd64 image in an OCI layout, tagged [`TestImage::TAG`]: a small
/// text file, [`NOISE_LEN`] bytes of incompressible data, and a directory of two files.
pub struct TestImage {
    pub layout: Layout,
    pub manifest_digest: String,
    pub manifest: Vec<u8>,
    pub config_digest: String,
    pub layer_digests: Vec<String>,
    /// The config's `rootfs.diff_ids`: digests of the uncompressed layers.
    pub diff_ids: Vec<String>,
}

impl TestImage {
    pub const TAG: &'static str = "t";

    /// Builds the image under `scratch` (which must exist).
    pub fn build(umoci: &Path, scratch: &Path) -> TestImage {
        let src = scratch.join("image-src");
        let layout_dir = scratch.join("oci");
        let image = format!("{}:{}", layout_dir.display(), Self::TAG);
        let umoci = |args: &[&str]| run(Command::new(umoci).args(args));

        std::fs::create_dir_all(src.join("one")).unwrap();
        std::fs::write(src.join("one/hello"), "hello from berth's client tests\n").unwrap();
        std::fs::create_dir_all(src.join("two")).unwrap();
        std::fs::write(src.join("two/noise.bin"), noise(NOISE_LEN)).unwrap();
        std::fs::create_dir_all(src.join("three/bin")).unwrap();
        std::fs::write(src.join("three/README"), "three: a directory layer\n").unwrap();
        std::fs::write(src.join("three/bin/tool.sh"), "#!/bin/sh\necho tool\n").unwrap();

        umoci(&["init", "--layout", layout_dir.to_str().unwrap()]);
        umoci(&["new", "--image", &image]);
        for (from, to) in [
            ("one/hello", "/etc/berth/hello"),
            ("two/noise.bin", "/usr/share/berth/noise.bin"),
            ("three", "/opt/berth"),
        ] {
            umoci(&[
                "insert",
                "--image",
                &image,
                src.join(from).to_str().unwrap(),
                to,
            ]);
        }
        umoci(&[
            "config",
            "--image",
            &image,
            "--config.cmd",
            "/bin/true",
            "--architecture",
            "amd64",
            "--os",
            "linux",
        ]);
        umoci(&["gc", "--layout", layout_dir.to_str().unwrap()]);

        let layout = Layout::at(layout_dir);
        let manifest_digest = layout.manifest_digest(Some(Self::TAG));
        let manifest = layout.blob(&manifest_digest);
        let blobs = layout.image_blobs(&manifest_digest);
        let config: Value = serde_json::from_slice(&layout.blob(&blobs[0])).unwrap();
        let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
            .as_array()
            .expect("diff_ids")
            .iter()
            .map(|d| d.as_str().unwrap().to_string())
            .collect();
        let image = TestImage {
            manifest_digest,
            manifest,
            config_digest: blobs[0].clone(),
            layer_digests: blobs[1..].to_vec(),
            diff_ids,
            layout,
        };
        assert_eq!(image.layer_digests.len(), 3, "umoci built 3 layers");
        let big = image.layout.blob(&image.layer_digests[1]).len();
        assert!(
            big > NOISE_LEN,
            "noise layer is {big} bytes: it got compressed"
        );
        image
    }

    /// Config and layer digests.
    pub fn blob_digests(&self) -> Vec<String> {
        let mut all = vec![self.config_digest.clone()];
        all.extend(self.layer_digests.iter().cloned());
        all
    }

    /// The layout as a tar archive (what `ctr images import` and `podman load` read).
    pub fn tar(&self, dest: &Path) -> PathBuf {
        run(Command::new("tar")
            .arg("-C")
            .arg(&self.layout.dir)
            .arg("-cf")
            .arg(dest)
            .arg("."));
        dest.to_path_buf()
    }
}

/// Deterministic bytes that look random to gzip (xorshift64).
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}
