//! The storage suite: each function gets an empty `Store` and must pass on every
//! backend unchanged. `main.rs` runs each one on each backend.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use berth::oci::{
    Algorithm, Descriptor, Digest, Manifest, OCI_EMPTY_JSON, OCI_INDEX, OCI_MANIFEST, Reference,
    RepositoryName, Tag,
};
use berth::storage::{ByteRange, StorageError, Store};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use sha2::Digest as _;

pub(crate) const LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub(crate) const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MIB: usize = 1 << 20;

// ---------------------------------------------------------------------------------------
// Helpers

type Body = futures::stream::Iter<std::vec::IntoIter<Result<Bytes, std::io::Error>>>;

/// `data` as a request body arriving in pieces of `piece` bytes.
pub(crate) fn pieces(data: &[u8], piece: usize) -> Body {
    let chunks: Vec<_> = data
        .chunks(piece.max(1))
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures::stream::iter(chunks)
}

/// `data` as a request body in one piece.
pub(crate) fn body(data: &[u8]) -> Body {
    pieces(data, data.len())
}

fn empty() -> Body {
    futures::stream::iter(Vec::new())
}

pub(crate) fn repo(name: &str) -> RepositoryName {
    name.parse().expect("valid repository name")
}

pub(crate) fn tag(name: &str) -> Tag {
    name.parse().expect("valid tag")
}

pub(crate) fn sha256(data: &[u8]) -> Digest {
    Digest::of(Algorithm::Sha256, data)
}

/// `len` deterministic pseudo-random bytes (xorshift64*), different for each `seed`.
pub(crate) fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The blob (or range of it) as the store serves it; `None` for an unsatisfiable range.
pub(crate) async fn read(
    store: &Store,
    repo: &RepositoryName,
    digest: &Digest,
    range: Option<ByteRange>,
) -> Option<Vec<u8>> {
    let body = store
        .read_blob(repo, digest, range)
        .await
        .unwrap_or_else(|e| panic!("read {digest} from {repo}: {e}"))?;
    let want = body.range.end - body.range.start;
    let bytes: Vec<Bytes> = body.stream.try_collect().await.expect("blob stream");
    let bytes = bytes.concat();
    assert_eq!(bytes.len() as u64, want, "served length matches the range");
    Some(bytes)
}

/// Every key in the store under `prefix` (all keys for ""), sorted.
pub(crate) async fn keys(store: &Store, prefix: &str) -> Vec<String> {
    let prefix = (!prefix.is_empty()).then(|| Path::from(prefix));
    let mut keys: Vec<String> = store
        .objects()
        .list(prefix.as_ref())
        .map_ok(|meta| meta.location.to_string())
        .try_collect()
        .await
        .expect("list objects");
    keys.sort();
    keys
}

/// The keys that say where content is: `blobs/<alg>/<hex>` (content itself), and on
/// S3 `blob-index/<alg>/<hex>` (where an upload's bytes were committed in place).
pub(crate) async fn content_keys(store: &Store) -> Vec<String> {
    let mut all = keys(store, "blobs").await;
    all.extend(keys(store, "blob-index").await);
    all
}

pub(crate) fn descriptor(media_type: &str, data: &[u8]) -> Descriptor {
    Descriptor {
        media_type: media_type.to_string(),
        digest: sha256(data),
        size: data.len() as u64,
        artifact_type: None,
        annotations: None,
        urls: None,
        platform: None,
    }
}

pub(crate) async fn push_blob(
    store: &Store,
    repo: &RepositoryName,
    media_type: &str,
    data: &[u8],
) -> Descriptor {
    let d = descriptor(media_type, data);
    let size = store
        .put_blob(repo, &d.digest, body(data), None)
        .await
        .expect("put blob");
    assert_eq!(size, data.len() as u64);
    d
}

/// An image manifest's bytes, parsed the way the registry parses a PUT.
pub(crate) fn image_manifest(
    config: &Descriptor,
    layers: &[Descriptor],
    subject: Option<&Descriptor>,
    artifact_type: Option<&str>,
    note: &str,
) -> (Bytes, Manifest) {
    let mut json = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config,
        "layers": layers,
        "annotations": { "org.example.note": note },
    });
    if let Some(subject) = subject {
        json["subject"] = serde_json::to_value(subject).unwrap();
    }
    if let Some(artifact_type) = artifact_type {
        json["artifactType"] = artifact_type.into();
    }
    let bytes = Bytes::from(serde_json::to_vec(&json).unwrap());
    let manifest = Manifest::parse(Some(OCI_MANIFEST), &bytes).expect("valid manifest");
    (bytes, manifest)
}

/// Pushes a config and a layer, and an image manifest over them under the tag (or, for
/// `None`, under its digest). `note` makes the manifest (and its layer) unique.
async fn push_image(
    store: &Store,
    repo: &RepositoryName,
    tag_name: Option<&str>,
    extra_tags: &[&str],
    note: &str,
) -> (Descriptor, Bytes) {
    let config = push_blob(
        store,
        repo,
        CONFIG,
        b"{\"architecture\":\"amd64\",\"os\":\"linux\"}",
    )
    .await;
    let layer = push_blob(store, repo, LAYER, format!("layer of {note}").as_bytes()).await;
    let (bytes, manifest) = image_manifest(&config, &[layer], None, None, note);
    let reference = match tag_name {
        Some(t) => Reference::Tag(tag(t)),
        None => Reference::Digest(sha256(&bytes)),
    };
    let extra: Vec<Tag> = extra_tags.iter().map(|t| tag(t)).collect();
    let digest = store
        .put_manifest(repo, &reference, &extra, bytes.clone(), &manifest, &[])
        .await
        .expect("put manifest");
    assert_eq!(digest, sha256(&bytes));
    (descriptor(OCI_MANIFEST, &bytes), bytes)
}

// ---------------------------------------------------------------------------------------
// Blobs

pub async fn blob_put_and_read_whole_and_by_ranges(store: Store) {
    let r = repo("library/blobs");
    let content = data(300_001, 1);
    let d = push_blob(&store, &r, LAYER, &content).await;
    let size = content.len() as u64;

    let stat = store.stat_blob(&r, &d.digest).await.unwrap().expect("stat");
    assert_eq!(stat.size, size);
    assert_eq!(read(&store, &r, &d.digest, None).await.unwrap(), content);

    let cases: &[(ByteRange, std::ops::Range<usize>)] = &[
        (
            ByteRange::From {
                start: 0,
                end: Some(0),
            },
            0..1,
        ),
        (
            ByteRange::From {
                start: 0,
                end: Some(9),
            },
            0..10,
        ),
        (
            ByteRange::From {
                start: 1000,
                end: Some(65_999),
            },
            1000..66_000,
        ),
        (
            ByteRange::From {
                start: 299_000,
                end: None,
            },
            299_000..300_001,
        ),
        (
            ByteRange::From {
                start: 5,
                end: Some(10_000_000),
            },
            5..300_001,
        ),
        (ByteRange::Suffix(10), 299_991..300_001),
        (ByteRange::Suffix(1_000_000), 0..300_001),
    ];
    for (range, want) in cases {
        let body = store
            .read_blob(&r, &d.digest, Some(*range))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(body.total_size, size);
        assert_eq!(body.range, want.start as u64..want.end as u64, "{range:?}");
        let got = read(&store, &r, &d.digest, Some(*range)).await.unwrap();
        assert!(got == content[want.clone()], "content of {range:?}");
    }
    for unsatisfiable in [
        ByteRange::From {
            start: size,
            end: None,
        },
        ByteRange::From {
            start: 10,
            end: Some(9),
        },
        ByteRange::Suffix(0),
    ] {
        assert!(
            read(&store, &r, &d.digest, Some(unsatisfiable))
                .await
                .is_none(),
            "{unsatisfiable:?} selects nothing"
        );
    }

    // Another repository does not see it, and an unknown digest is unknown.
    let other = repo("library/other");
    assert!(matches!(
        store.read_blob(&other, &d.digest, None).await,
        Err(StorageError::BlobUnknown(_))
    ));
    assert!(store.stat_blob(&other, &d.digest).await.unwrap().is_none());
    assert!(matches!(
        store.read_blob(&r, &sha256(b"never pushed"), None).await,
        Err(StorageError::BlobUnknown(_))
    ));

    // Pushing the same content again is harmless; the empty blob is a blob too.
    assert_eq!(
        store
            .put_blob(&r, &d.digest, pieces(&content, 4096), None)
            .await
            .unwrap(),
        size
    );
    let e = push_blob(&store, &r, LAYER, b"").await;
    assert_eq!(
        store.stat_blob(&r, &e.digest).await.unwrap().unwrap().size,
        0
    );
    assert_eq!(read(&store, &r, &e.digest, None).await.unwrap(), b"");
    assert!(
        keys(&store, "uploads").await.is_empty(),
        "monolithic pushes leave no upload objects"
    );
}

pub async fn chunked_upload_with_multipart_chunks(store: Store) {
    let r = repo("chunked");
    // Chunk sizes: tiny, 1 MiB, 9 MiB (above the 8 MiB part size, so the part object is
    // written as a real multipart upload), 3 bytes; then a last chunk with the PUT.
    let sizes = [1, MIB, 9 * MIB, 3, 1000];
    let content = data(sizes.iter().sum(), 2);
    let digest = sha256(&content);

    let upload = store.start_upload(&r, Algorithm::Sha256).await.unwrap();
    assert_eq!(upload.size, 0);
    let mut offset = 0;
    for &size in &sizes[..sizes.len() - 1] {
        let chunk = &content[offset..offset + size];
        // Bodies arrive from the network in small pieces.
        let state = store
            .append_upload(
                &r,
                &upload.id,
                Some(offset as u64),
                pieces(chunk, 64 * 1024),
                None,
            )
            .await
            .unwrap();
        offset += size;
        assert_eq!(state.size, offset as u64);
    }
    let last = &content[offset..];
    let size = store
        .finish_upload(
            &r,
            &upload.id,
            &digest,
            Some(offset as u64),
            body(last),
            None,
        )
        .await
        .unwrap();
    assert_eq!(size, content.len() as u64);
    assert!(read(&store, &r, &digest, None).await.unwrap() == content);
    assert!(
        keys(&store, "uploads").await.is_empty(),
        "a finished upload leaves nothing behind"
    );
    assert!(matches!(
        store.upload_status(&r, &upload.id).await,
        Err(StorageError::UploadUnknown(_))
    ));

    // An upload that never received a byte makes the empty blob.
    let upload = store.start_upload(&r, Algorithm::Sha256).await.unwrap();
    let nothing = sha256(b"");
    assert_eq!(
        store
            .finish_upload(&r, &upload.id, &nothing, Some(0), empty(), None)
            .await
            .unwrap(),
        0
    );
    assert_eq!(read(&store, &r, &nothing, None).await.unwrap(), b"");

    // A single-chunk upload finished by an empty PUT, with no Content-Range at all.
    let small = data(70_000, 3);
    let upload = store.start_upload(&r, Algorithm::Sha256).await.unwrap();
    store
        .append_upload(&r, &upload.id, None, body(&small), None)
        .await
        .unwrap();
    store
        .finish_upload(&r, &upload.id, &sha256(&small), None, empty(), None)
        .await
        .unwrap();
    assert_eq!(
        read(&store, &r, &sha256(&small), None).await.unwrap(),
        small
    );
}

pub async fn upload_status_resumes_after_append(store: Store) {
    let r = repo("resume/me");
    let content = data(250_000, 4);
    let upload = store.start_upload(&r, Algorithm::Sha256).await.unwrap();
    let status = store.upload_status(&r, &upload.id).await.unwrap();
    assert_eq!((status.id.as_str(), status.size), (upload.id.as_str(), 0));

    store
        .append_upload(&r, &upload.id, Some(0), body(&content[..100_000]), None)
        .await
        .unwrap();
    let status = store.upload_status(&r, &upload.id).await.unwrap();
    assert_eq!(status.size, 100_000);
    assert_eq!(status.repository, "resume/me");

    // The session lives in the store: another process on the same store (a restart, or
    // another replica) picks it up where it stopped.
    let replica = store.another_process();
    assert_eq!(
        replica.upload_status(&r, &upload.id).await.unwrap().size,
        100_000
    );
    let state = replica
        .append_upload(
            &r,
            &upload.id,
            Some(100_000),
            body(&content[100_000..200_000]),
            None,
        )
        .await
        .unwrap();
    assert_eq!(state.size, 200_000);
    assert_eq!(
        store.upload_status(&r, &upload.id).await.unwrap().size,
        200_000
    );

    // Only its repository can see the session; made-up ids name nothing.
    for (other_repo, id) in [
        (repo("resume/other"), upload.id.as_str()),
        (r.clone(), "00000000-0000-0000-0000-000000000000"),
        (r.clone(), "../state"),
    ] {
        assert!(matches!(
            store.upload_status(&other_repo, id).await,
            Err(StorageError::UploadUnknown(_))
        ));
    }

    store
        .finish_upload(
            &r,
            &upload.id,
            &sha256(&content),
            Some(200_000),
            body(&content[200_000..]),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        read(&store, &r, &sha256(&content), None).await.unwrap(),
        content
    );
}

pub async fn out_of_order_chunk_is_rejected_and_upload_stays_usable(store: Store) {
    let r = repo("ordering");
    let content = data(3000, 5);
    let upload = store.start_upload(&r, Algorithm::Sha256).await.unwrap();
    store
        .append_upload(&r, &upload.id, Some(0), body(&content[..1000]), None)
        .await
        .unwrap();
    for wrong in [0, 500, 999, 1001, 5000] {
        let err = store
            .append_upload(
                &r,
                &upload.id,
                Some(wrong),
                body(&content[1000..2000]),
                None,
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, StorageError::UploadOutOfOrder { expected: 1000, got } if got == wrong),
            "chunk at {wrong}: {err}"
        );
    }
    let err = store
        .finish_upload(
            &r,
            &upload.id,
            &sha256(&content),
            Some(1500),
            body(&content[1000..]),
            None,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::UploadOutOfOrder {
                expected: 1000,
                got: 1500
            }
        ),
        "{err}"
    );

    // Nothing of the rejected chunks was kept.
    assert_eq!(
        store.upload_status(&r, &upload.id).await.unwrap().size,
        1000
    );
    store
        .append_upload(&r, &upload.id, Some(1000), body(&content[1000..2000]), None)
        .await
        .unwrap();
    store
        .finish_upload(
            &r,
            &upload.id,
            &sha256(&content),
            Some(2000),
            body(&content[2000..]),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        read(&store, &r, &sha256(&content), None).await.unwrap(),
        content
    );
    assert!(keys(&store, "uploads").await.is_empty());
}

pub async fn wrong_digest_is_rejected_and_leaves_nothing(store: Store) {
    let r = repo("mismatch");
    let content = data(9 * MIB + 17, 6);
    let actual = sha256(&content);
    let claimed = sha256(b"something else");

    // Chunked.
    let upload = store.start_upload(&r, Algorithm::Sha256).await.unwrap();
    store
        .append_upload(
            &r,
            &upload.id,
            Some(0),
            pieces(&content[..5 * MIB], MIB),
            None,
        )
        .await
        .unwrap();
    let err = store
        .finish_upload(
            &r,
            &upload.id,
            &claimed,
            Some(5 * MIB as u64),
            pieces(&content[5 * MIB..], MIB),
            None,
        )
        .await
        .unwrap_err();
    match &err {
        StorageError::DigestMismatch {
            expected,
            actual: got,
        } => {
            assert_eq!(expected, &claimed);
            assert_eq!(got, &actual);
        }
        other => panic!("expected DigestMismatch, got {other}"),
    }
    for d in [&claimed, &actual] {
        assert!(store.stat_blob(&r, d).await.unwrap().is_none());
        assert!(matches!(
            store.read_blob(&r, d, None).await,
            Err(StorageError::BlobUnknown(_))
        ));
        assert_eq!(
            store.mount_blob(&repo("elsewhere"), d, None).await.unwrap(),
            None
        );
    }
    assert!(matches!(
        store.upload_status(&r, &upload.id).await,
        Err(StorageError::UploadUnknown(_))
    ));
    assert_eq!(
        keys(&store, "").await,
        Vec::<String>::new(),
        "nothing at all is stored"
    );

    // Monolithic.
    let err = store
        .put_blob(&r, &claimed, pieces(&content, MIB), None)
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::DigestMismatch { .. }), "{err}");
    assert!(store.stat_blob(&r, &claimed).await.unwrap().is_none());
    assert_eq!(
        keys(&store, "").await,
        Vec::<String>::new(),
        "nothing at all is stored"
    );
}

pub async fn upload_finished_with_another_algorithm(store: Store) {
    let r = repo("algorithms");
    let content = data(2 * MIB + 5, 7);
    // Hashing as sha256 while receiving, then asked for sha512: the parts are read back.
    let upload = store.start_upload(&r, Algorithm::Sha256).await.unwrap();
    store
        .append_upload(&r, &upload.id, Some(0), body(&content[..MIB]), None)
        .await
        .unwrap();
    let sha512 = Digest::of(Algorithm::Sha512, &content);
    store
        .finish_upload(
            &r,
            &upload.id,
            &sha512,
            Some(MIB as u64),
            body(&content[MIB..]),
            None,
        )
        .await
        .unwrap();
    assert_eq!(read(&store, &r, &sha512, None).await.unwrap(), content);

    // A sha512 session from the start.
    let upload = store.start_upload(&r, Algorithm::Sha512).await.unwrap();
    let other = data(1000, 8);
    store
        .finish_upload(
            &r,
            &upload.id,
            &Digest::of(Algorithm::Sha512, &other),
            Some(0),
            body(&other),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        read(&store, &r, &Digest::of(Algorithm::Sha512, &other), None)
            .await
            .unwrap(),
        other
    );
    assert!(keys(&store, "uploads").await.is_empty());
}

pub async fn cancel_removes_the_session(store: Store) {
    let r = repo("cancel");
    let content = data(100_000, 9);
    let upload = store.start_upload(&r, Algorithm::Sha256).await.unwrap();
    store
        .append_upload(&r, &upload.id, Some(0), body(&content[..50_000]), None)
        .await
        .unwrap();
    store
        .append_upload(&r, &upload.id, Some(50_000), body(&content[50_000..]), None)
        .await
        .unwrap();
    assert!(!keys(&store, "uploads").await.is_empty());

    // Not from another repository.
    assert!(matches!(
        store.cancel_upload(&repo("cancel/other"), &upload.id).await,
        Err(StorageError::UploadUnknown(_))
    ));
    store.cancel_upload(&r, &upload.id).await.unwrap();
    assert!(matches!(
        store.upload_status(&r, &upload.id).await,
        Err(StorageError::UploadUnknown(_))
    ));
    assert!(matches!(
        store
            .append_upload(&r, &upload.id, Some(100_000), body(b"more"), None)
            .await,
        Err(StorageError::UploadUnknown(_))
    ));
    assert!(matches!(
        store
            .finish_upload(&r, &upload.id, &sha256(&content), None, empty(), None)
            .await,
        Err(StorageError::UploadUnknown(_))
    ));
    assert!(matches!(
        store.cancel_upload(&r, &upload.id).await,
        Err(StorageError::UploadUnknown(_))
    ));
    assert_eq!(
        keys(&store, "").await,
        Vec::<String>::new(),
        "nothing at all is stored"
    );
}

pub async fn abandoned_uploads_expire_and_fresh_ones_stay(store: Store) {
    let r = repo("expiry");
    let content = data(100_000, 11);
    let abandoned = store.start_upload(&r, Algorithm::Sha256).await.unwrap();
    store
        .append_upload(&r, &abandoned.id, Some(0), body(&content), None)
        .await
        .unwrap();
    let other = store.start_upload(&r, Algorithm::Sha256).await.unwrap();

    // Both were written just now: a week's expiry keeps them.
    let week = std::time::Duration::from_secs(7 * 24 * 3600);
    assert_eq!(store.expire_uploads(week).await.unwrap(), 0);
    store.upload_status(&r, &abandoned.id).await.unwrap();

    // With no grace at all, every idle session goes, its parts with it.
    assert_eq!(
        store
            .expire_uploads(std::time::Duration::ZERO)
            .await
            .unwrap(),
        2
    );
    for id in [&abandoned.id, &other.id] {
        assert!(matches!(
            store.upload_status(&r, id).await,
            Err(StorageError::UploadUnknown(_))
        ));
    }
    assert_eq!(keys(&store, "uploads").await, Vec::<String>::new());
}

pub async fn mount_from_another_repository(store: Store) {
    let (a, b, c, d) = (
        repo("mount/a"),
        repo("mount/b"),
        repo("mount/c"),
        repo("mount/d"),
    );
    let content = data(123_456, 10);
    let blob = push_blob(&store, &a, LAYER, &content).await;

    assert_eq!(
        store.mount_blob(&b, &blob.digest, Some(&a)).await.unwrap(),
        Some(blob.size)
    );
    assert_eq!(read(&store, &b, &blob.digest, None).await.unwrap(), content);
    // Not from a repository that does not have it, and not a blob nobody has.
    assert_eq!(
        store.mount_blob(&c, &blob.digest, Some(&d)).await.unwrap(),
        None
    );
    assert!(store.stat_blob(&c, &blob.digest).await.unwrap().is_none());
    let unknown = sha256(b"unknown");
    assert_eq!(
        store.mount_blob(&c, &unknown, Some(&a)).await.unwrap(),
        None
    );
    assert_eq!(store.mount_blob(&c, &unknown, None).await.unwrap(), None);
    // Without `from`, from anywhere in the store.
    assert_eq!(
        store.mount_blob(&c, &blob.digest, None).await.unwrap(),
        Some(blob.size)
    );
    assert_eq!(read(&store, &c, &blob.digest, None).await.unwrap(), content);
    // Mounting links; the content is stored once.
    assert_eq!(content_keys(&store).await.len(), 1);
}

pub async fn delete_blob_removes_only_that_link(store: Store) {
    let (a, b) = (repo("delete/a"), repo("delete/b"));
    let content = data(10_000, 11);
    let blob = push_blob(&store, &a, LAYER, &content).await;
    store.mount_blob(&b, &blob.digest, Some(&a)).await.unwrap();

    assert!(
        store.delete_blob(&a, &blob.digest).await.unwrap(),
        "a had it"
    );
    assert!(store.stat_blob(&a, &blob.digest).await.unwrap().is_none());
    assert!(matches!(
        store.read_blob(&a, &blob.digest, None).await,
        Err(StorageError::BlobUnknown(_))
    ));
    assert!(
        !store.delete_blob(&a, &blob.digest).await.unwrap(),
        "a no longer has it"
    );
    assert!(
        !store.delete_blob(&a, &sha256(b"never")).await.unwrap(),
        "never had it"
    );
    assert_eq!(read(&store, &b, &blob.digest, None).await.unwrap(), content);
    // Pushing it again brings it back.
    push_blob(&store, &a, LAYER, &content).await;
    assert_eq!(read(&store, &a, &blob.digest, None).await.unwrap(), content);
}

// ---------------------------------------------------------------------------------------
// Manifests, tags, repositories, referrers

pub async fn manifest_with_missing_blobs_is_rejected_and_stores_nothing(store: Store) {
    let r = repo("missing/blobs");
    let config = descriptor(CONFIG, b"{}");
    let layer = descriptor(LAYER, b"layer");
    let (bytes, manifest) =
        image_manifest(&config, std::slice::from_ref(&layer), None, None, "missing");
    let manifest_digest = sha256(&bytes);

    let put = |reference: &str| {
        let reference: Reference = reference.parse().unwrap();
        let (store, r, bytes, manifest) =
            (store.clone(), r.clone(), bytes.clone(), manifest.clone());
        async move {
            store
                .put_manifest(&r, &reference, &[tag("also")], bytes, &manifest, &[])
                .await
        }
    };
    let err = put("v1").await.unwrap_err();
    assert!(matches!(err, StorageError::ManifestBlobUnknown(_)), "{err}");

    // With the config pushed, the layer is still missing and is the one named.
    push_blob(&store, &r, CONFIG, b"{}").await;
    let err = put("v1").await.unwrap_err();
    assert!(
        matches!(&err, StorageError::ManifestBlobUnknown(d) if d == &layer.digest),
        "{err}"
    );
    let err = put(&manifest_digest.to_string()).await.unwrap_err();
    assert!(
        matches!(&err, StorageError::ManifestBlobUnknown(d) if d == &layer.digest),
        "{err}"
    );

    // A blob in another repository does not count.
    push_blob(&store, &repo("missing/elsewhere"), LAYER, b"layer").await;
    assert!(matches!(
        put("v1").await,
        Err(StorageError::ManifestBlobUnknown(_))
    ));

    assert!(store.resolve_tag(&r, &tag("v1")).await.unwrap().is_none());
    assert_eq!(store.list_tags(&r).await.unwrap(), Some(vec![]));
    assert!(
        store
            .get_manifest(&r, &Reference::Digest(manifest_digest.clone()))
            .await
            .unwrap()
            .is_none()
    );
    let stored = keys(&store, "").await;
    assert!(
        stored
            .iter()
            .all(|k| !k.contains("/tags/") && !k.contains("/manifests/")),
        "no tag or manifest link: {stored:?}"
    );
    assert!(!stored.contains(&format!("blobs/sha256/{}", manifest_digest.hex())));

    // An index whose child manifest is missing is refused the same way.
    let child = descriptor(OCI_MANIFEST, &bytes);
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [child],
    }))
    .unwrap();
    let parsed = Manifest::parse(Some(OCI_INDEX), &index).unwrap();
    let err = store
        .put_manifest(
            &r,
            &Reference::Tag(tag("index")),
            &[],
            index.into(),
            &parsed,
            &[],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StorageError::ManifestBlobUnknown(d) if d == &child.digest),
        "{err}"
    );
}

pub async fn manifest_by_tag_and_by_digest(store: Store) {
    let r = repo("manifests/app");
    let (m, bytes) = push_image(&store, &r, Some("v1"), &["latest", "stable"], "roundtrip").await;
    for reference in ["v1", "latest", "stable", &m.digest.to_string()] {
        let reference: Reference = reference.parse().unwrap();
        let got = store
            .get_manifest(&r, &reference)
            .await
            .unwrap()
            .expect("manifest");
        assert_eq!(got.digest, m.digest, "{reference}");
        assert_eq!(got.media_type, OCI_MANIFEST);
        assert_eq!(
            got.bytes, bytes,
            "the stored bytes are exactly the pushed ones"
        );
        let stat = store.stat_manifest(&r, &reference).await.unwrap().unwrap();
        assert_eq!((stat.digest, stat.size), (m.digest.clone(), m.size));
    }
    assert!(
        store
            .get_manifest(&r, &Reference::Tag(tag("v2")))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .get_manifest(&repo("manifests/other"), &Reference::Tag(tag("v1")))
            .await
            .unwrap()
            .is_none()
    );

    // By digest only: no tag appears.
    let (untagged, _) = push_image(&store, &r, None, &[], "untagged").await;
    let got = store
        .get_manifest(&r, &Reference::Digest(untagged.digest.clone()))
        .await
        .unwrap();
    assert_eq!(got.map(|g| g.digest), Some(untagged.digest));
    assert_eq!(
        store.list_tags(&r).await.unwrap(),
        Some(vec!["latest".to_string(), "stable".into(), "v1".into()])
    );

    // Retagging moves the tag.
    let (m3, _) = push_image(&store, &r, Some("v1"), &[], "retagged").await;
    assert_eq!(
        store
            .resolve_tag(&r, &tag("v1"))
            .await
            .unwrap()
            .unwrap()
            .digest,
        m3.digest
    );
    assert_eq!(
        store
            .resolve_tag(&r, &tag("latest"))
            .await
            .unwrap()
            .unwrap()
            .digest,
        m.digest
    );
    // Pushing the same manifest again is idempotent.
    let (again, _) = push_image(&store, &r, Some("latest"), &[], "roundtrip").await;
    assert_eq!(again.digest, m.digest);
}

pub async fn manifest_pushed_by_a_wrong_digest_is_refused(store: Store) {
    let r = repo("manifests/digest");
    let config = push_blob(&store, &r, CONFIG, b"{}").await;
    let (bytes, manifest) = image_manifest(&config, &[], None, None, "by digest");
    let wrong = sha256(b"not the manifest");
    let err = store
        .put_manifest(
            &r,
            &Reference::Digest(wrong.clone()),
            &[],
            bytes.clone(),
            &manifest,
            &[],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StorageError::DigestMismatch { expected, actual } if expected == &wrong && actual == &sha256(&bytes)),
        "{err}"
    );
    assert!(
        keys(&store, "")
            .await
            .iter()
            .all(|k| !k.contains("/manifests/"))
    );
}

pub async fn tags_are_listed_sorted(store: Store) {
    let r = repo("tags/sorted");
    let pushed = [
        "v10", "latest", "v2", "B", "_x", "1.0", "a-b", "a.b", "a_b", "v1",
    ];
    for (i, t) in pushed.iter().enumerate() {
        push_image(&store, &r, Some(t), &[], &format!("tag {i}")).await;
    }
    let mut want: Vec<String> = pushed.iter().map(|t| t.to_string()).collect();
    want.sort();
    assert_eq!(store.list_tags(&r).await.unwrap(), Some(want));
    assert_eq!(store.list_tags(&repo("tags/unknown")).await.unwrap(), None);
    // A repository with blobs but no tags exists, with no tags.
    let bare = repo("tags/bare");
    push_blob(&store, &bare, LAYER, b"x").await;
    assert_eq!(store.list_tags(&bare).await.unwrap(), Some(vec![]));
}

pub async fn repositories_include_nested_names(store: Store) {
    assert_eq!(
        store.list_repositories().await.unwrap(),
        Vec::<String>::new()
    );
    let names = ["a/b/c", "a", "a/b", "z-last", "team.x/app_1", "a/b/c/d/e"];
    for (i, name) in names.iter().enumerate() {
        push_image(&store, &repo(name), Some("v1"), &[], &format!("repo {i}")).await;
    }
    // One with only a blob counts too.
    push_blob(&store, &repo("blob/only"), LAYER, b"b").await;
    let mut want: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    want.push("blob/only".into());
    want.sort();
    assert_eq!(store.list_repositories().await.unwrap(), want);
    for name in &want {
        assert!(
            store.repository_exists(&repo(name)).await.unwrap(),
            "{name}"
        );
    }
    assert!(!store.repository_exists(&repo("a/b/c/d")).await.unwrap());
    // Names that nest do not share tags.
    assert_eq!(
        store.list_tags(&repo("a/b")).await.unwrap(),
        Some(vec!["v1".to_string()])
    );
}

pub async fn delete_manifest_by_digest_removes_its_tags(store: Store) {
    let r = repo("delete/manifests");
    let (one, _) = push_image(&store, &r, Some("one"), &["also-one", "latest"], "first").await;
    let (two, _) = push_image(&store, &r, Some("two"), &[], "second").await;

    assert!(
        store
            .delete_manifest(&r, &Reference::Digest(one.digest.clone()))
            .await
            .unwrap()
    );
    assert_eq!(
        store.list_tags(&r).await.unwrap(),
        Some(vec!["two".to_string()])
    );
    for reference in ["one", "also-one", "latest", &one.digest.to_string()] {
        let reference: Reference = reference.parse().unwrap();
        assert!(
            store.get_manifest(&r, &reference).await.unwrap().is_none(),
            "{reference}"
        );
        assert!(
            store.stat_manifest(&r, &reference).await.unwrap().is_none(),
            "{reference}"
        );
    }
    assert!(
        !store
            .delete_manifest(&r, &Reference::Digest(one.digest.clone()))
            .await
            .unwrap(),
        "already deleted"
    );
    // The other manifest is untouched.
    let got = store
        .get_manifest(&r, &Reference::Tag(tag("two")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.digest, two.digest);

    // Deleting a tag leaves the manifest.
    assert!(
        store
            .delete_manifest(&r, &Reference::Tag(tag("two")))
            .await
            .unwrap()
    );
    assert!(
        !store
            .delete_manifest(&r, &Reference::Tag(tag("two")))
            .await
            .unwrap(),
        "tag already gone"
    );
    assert!(
        !store
            .delete_manifest(&r, &Reference::Tag(tag("never")))
            .await
            .unwrap(),
        "never a tag"
    );
    assert_eq!(store.list_tags(&r).await.unwrap(), Some(vec![]));
    assert!(
        store
            .get_manifest(&r, &Reference::Digest(two.digest))
            .await
            .unwrap()
            .is_some()
    );
}

/// A store keeps manifest bodies in memory; another process writing the same storage (a
/// replica, or the operator deleting a repository) must still be seen at once.
pub async fn changes_by_another_process_are_seen_at_once(store: Store) {
    let r = repo("shared/app");
    let (first, first_bytes) = push_image(&store, &r, Some("v1"), &[], "first").await;
    let by_tag = Reference::Tag(tag("v1"));
    let get = |reference: Reference| {
        let store = store.clone();
        let r = r.clone();
        async move { store.get_manifest(&r, &reference).await.unwrap() }
    };
    assert_eq!(get(by_tag.clone()).await.unwrap().bytes, first_bytes);

    let other = store.another_process();
    let (second, second_bytes) = push_image(&other, &r, Some("v1"), &[], "second").await;
    let got = get(by_tag.clone()).await.expect("the moved tag");
    assert_eq!(
        (got.digest, got.bytes),
        (second.digest.clone(), second_bytes)
    );

    assert!(
        other
            .delete_manifest(&r, &Reference::Digest(first.digest.clone()))
            .await
            .unwrap()
    );
    assert!(get(Reference::Digest(first.digest.clone())).await.is_none());
    assert!(
        store
            .stat_manifest(&r, &Reference::Digest(first.digest))
            .await
            .unwrap()
            .is_none()
    );

    assert!(other.delete_manifest(&r, &by_tag).await.unwrap());
    assert!(get(by_tag.clone()).await.is_none());
    assert!(
        get(Reference::Digest(second.digest.clone()))
            .await
            .is_some()
    );

    other.delete_repository(&r).await.unwrap();
    assert!(get(Reference::Digest(second.digest)).await.is_none());
}

pub async fn referrers_index_lists_manifests_with_a_subject(store: Store) {
    let r = repo("referrers/app");
    let (subject, _) = push_image(&store, &r, Some("v1"), &[], "the subject").await;
    let empty_config = push_blob(&store, &r, OCI_EMPTY_JSON, b"{}").await;

    // An artifact with artifactType, and one whose type comes from its config.
    let sig = push_blob(
        &store,
        &r,
        "application/vnd.example.signature",
        b"signature",
    )
    .await;
    let (sbom_bytes, sbom) = image_manifest(
        &empty_config,
        &[sig],
        Some(&subject),
        Some("application/vnd.example.sbom"),
        "sbom",
    );
    let sbom_digest = store
        .put_manifest(
            &r,
            &Reference::Digest(sha256(&sbom_bytes)),
            &[],
            sbom_bytes.clone(),
            &sbom,
            &[],
        )
        .await
        .unwrap();
    let typed_config = push_blob(&store, &r, "application/vnd.example.config", b"{\"k\":1}").await;
    let (other_bytes, other) = image_manifest(&typed_config, &[], Some(&subject), None, "other");
    let other_digest = store
        .put_manifest(
            &r,
            &Reference::Tag(tag("other")),
            &[],
            other_bytes.clone(),
            &other,
            &[],
        )
        .await
        .unwrap();

    let found = store.referrers(&r, &subject.digest).await.unwrap();
    let mut want = [
        (
            sbom_digest.clone(),
            "application/vnd.example.sbom",
            sbom_bytes.len(),
            "sbom",
        ),
        (
            other_digest.clone(),
            "application/vnd.example.config",
            other_bytes.len(),
            "other",
        ),
    ];
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(found.len(), 2, "{found:?}");
    for (d, (digest, artifact_type, size, note)) in found.iter().zip(want) {
        assert_eq!(d.digest, digest);
        assert_eq!(d.media_type, OCI_MANIFEST);
        assert_eq!(d.size, size as u64);
        assert_eq!(d.artifact_type.as_deref(), Some(artifact_type));
        let annotations = d.annotations.as_ref().expect("annotations");
        assert_eq!(
            annotations.get("org.example.note").map(String::as_str),
            Some(note)
        );
    }

    // Other subjects and other repositories have none.
    assert!(store.referrers(&r, &sbom_digest).await.unwrap().is_empty());
    assert!(
        store
            .referrers(&repo("referrers/other"), &subject.digest)
            .await
            .unwrap()
            .is_empty()
    );

    // Deleting a referrer takes it out of the index.
    assert!(
        store
            .delete_manifest(&r, &Reference::Digest(sbom_digest))
            .await
            .unwrap()
    );
    let found = store.referrers(&r, &subject.digest).await.unwrap();
    assert_eq!(
        found.iter().map(|d| &d.digest).collect::<Vec<_>>(),
        vec![&other_digest]
    );
}

pub async fn concurrent_tag_pushes_leave_exactly_one_whole_manifest(store: Store) {
    const ITERATIONS: usize = 40;
    let r = repo("race/tag");
    let latest = tag("latest");
    let config = push_blob(&store, &r, CONFIG, b"{}").await;
    let make = |note: String| image_manifest(&config, &[], None, None, &note);
    let (first, first_manifest) = make("initial".into());
    store
        .put_manifest(
            &r,
            &Reference::Tag(latest.clone()),
            &[],
            first,
            &first_manifest,
            &[],
        )
        .await
        .unwrap();

    // A reader polls the tag throughout: it must always find a manifest, whole.
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let reader = tokio::spawn({
        let (store, r, latest, stop, reads) = (
            store.clone(),
            r.clone(),
            latest.clone(),
            stop.clone(),
            reads.clone(),
        );
        async move {
            while !stop.load(Ordering::Relaxed) {
                let got = store
                    .get_manifest(&r, &Reference::Tag(latest.clone()))
                    .await
                    .unwrap()
                    .expect("the tag never disappears while being overwritten");
                assert_eq!(
                    sha256(&got.bytes),
                    got.digest,
                    "the bytes are the tagged manifest's"
                );
                Manifest::parse(Some(&got.media_type), &got.bytes).expect("a whole manifest");
                // Nor does a listing ever show a half-written tag (a staging file, say).
                let tags = store.list_tags(&r).await.unwrap();
                assert_eq!(tags, Some(vec!["latest".to_string()]), "tags while pushing");
                reads.fetch_add(1, Ordering::Relaxed);
            }
        }
    });

    for i in 0..ITERATIONS {
        let pushes: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|writer| {
                let (bytes, manifest) = make(format!("iteration {i} writer {writer}"));
                let (store, r, latest) = (store.clone(), r.clone(), latest.clone());
                let expected = sha256(&bytes);
                let push = tokio::spawn(async move {
                    store
                        .put_manifest(&r, &Reference::Tag(latest), &[], bytes, &manifest, &[])
                        .await
                        .unwrap()
                });
                (expected, push)
            })
            .collect();
        let mut candidates = Vec::new();
        for (expected, push) in pushes {
            assert_eq!(push.await.unwrap(), expected);
            candidates.push(expected);
        }
        let got = store
            .get_manifest(&r, &Reference::Tag(latest.clone()))
            .await
            .unwrap()
            .expect("tagged");
        assert!(
            candidates.contains(&got.digest),
            "iteration {i}: the tag holds one of the two pushes"
        );
        assert_eq!(sha256(&got.bytes), got.digest);
        // Both revisions are stored whichever won the tag.
        for d in &candidates {
            assert!(store.manifest_link(&r, d).await.unwrap().is_some());
        }
    }
    stop.store(true, Ordering::Relaxed);
    reader.await.expect("reader saw only whole manifests");
    assert!(
        reads.load(Ordering::Relaxed) > 0,
        "the reader ran during the pushes"
    );
    assert_eq!(
        store.list_tags(&r).await.unwrap(),
        Some(vec!["latest".to_string()])
    );
}

pub async fn large_blob_streams_out_with_the_right_digest(store: Store) {
    const SIZE: usize = 64 * MIB;
    let r = repo("large/blob");
    let content = data(SIZE, 12);
    let digest = sha256(&content);
    let size = store
        .put_blob(&r, &digest, pieces(&content, 256 * 1024), None)
        .await
        .unwrap();
    assert_eq!(size, SIZE as u64);

    // Streamed out and hashed as it arrives, never held whole by the test.
    let blob = store.read_blob(&r, &digest, None).await.unwrap().unwrap();
    assert_eq!(
        (blob.total_size, blob.range.clone()),
        (SIZE as u64, 0..SIZE as u64)
    );
    let mut hasher = sha2::Sha256::new();
    let mut received = 0usize;
    let mut chunks = 0usize;
    let mut stream = blob.stream;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("blob chunk");
        hasher.update(&chunk);
        received += chunk.len();
        chunks += 1;
    }
    assert_eq!(received, SIZE);
    assert_eq!(
        format!("sha256:{}", hex::encode(hasher.finalize())),
        digest.to_string()
    );
    assert!(chunks > 1, "the body is streamed, not one buffer");

    // A range across an 8 MiB part boundary.
    let span = 8 * MIB - 1000..8 * MIB + 1000;
    let range = ByteRange::From {
        start: span.start as u64,
        end: Some(span.end as u64 - 1),
    };
    assert!(read(&store, &r, &digest, Some(range)).await.unwrap() == content[span]);
    let tail = read(&store, &r, &digest, Some(ByteRange::Suffix(5)))
        .await
        .unwrap();
    assert_eq!(tail, &content[SIZE - 5..]);
    if store.is_local() {
        assert_eq!(
            keys(&store, "blobs").await,
            vec![format!("blobs/sha256/{}", digest.hex())]
        );
    } else {
        // On S3 the bytes stay in the upload's one multipart object, indexed by digest.
        assert_eq!(
            keys(&store, "blob-index").await,
            vec![format!("blob-index/sha256/{}", digest.hex())]
        );
        let data = keys(&store, "blob-data").await;
        assert!(data.len() == 1 && data[0].ends_with("/blob"), "{data:?}");
        assert!(keys(&store, "blobs").await.is_empty());
    }
    assert!(keys(&store, "uploads").await.is_empty());
}

/// Sanity check of the helpers themselves (not run per backend).
#[test]
fn pieces_and_data_are_deterministic() {
    assert_eq!(data(1000, 1), data(1000, 1));
    assert_ne!(data(1000, 1), data(1000, 2));
    let collected: Vec<Bytes> =
        futures::executor::block_on(pieces(b"abcdefg", 3).try_collect()).unwrap();
    assert_eq!(
        collected,
        vec![Bytes::from("abc"), Bytes::from("def"), Bytes::from("g")]
    );
    let set: BTreeSet<_> = (0..100).map(|s| data(8, s)).collect();
    assert_eq!(set.len(), 100);
}

/// Requests naming upload sessions that do not exist (random, or a flood) are refused
/// and leave no per-session state behind; a real session's lock goes when it is done.
pub async fn requests_for_unknown_upload_sessions_leave_no_locks(store: Store) {
    let r = repo("team/locks");
    let calls = (0..500).map(|n| {
        let store = store.clone();
        let r = r.clone();
        async move {
            let id = format!("00000000-0000-4000-8000-{n:012}");
            store.append_upload(&r, &id, None, body(b"x"), None).await
        }
    });
    for result in futures::future::join_all(calls).await {
        assert!(
            matches!(result, Err(StorageError::UploadUnknown(_))),
            "{result:?}"
        );
    }
    assert_eq!(store.uploads_in_use(), 0);
    let session = store.start_upload(&r, Algorithm::Sha256).await.unwrap();
    store
        .append_upload(&r, &session.id, None, body(b"abc"), None)
        .await
        .unwrap();
    assert_eq!(store.uploads_in_use(), 0, "released after the request");
    store
        .finish_upload(&r, &session.id, &sha256(b"abc"), None, empty(), None)
        .await
        .unwrap();
    assert_eq!(store.uploads_in_use(), 0);
}

/// An immutable tag is written create-only: of 50 concurrent pushes of one new tag
/// with different manifests exactly one lands, the tag holds it, and pushing that same
/// manifest again is accepted.
pub async fn concurrent_creates_of_one_immutable_tag_leave_exactly_one_winner(store: Store) {
    let r = repo("race/immutable");
    let release = tag("v1.0.0");
    let config = push_blob(&store, &r, CONFIG, b"{}").await;
    let pushes: Vec<_> = (0..50)
        .map(|n| {
            let (bytes, manifest) = image_manifest(&config, &[], None, None, &format!("push {n}"));
            let (store, r, release) = (store.clone(), r.clone(), release.clone());
            tokio::spawn(async move {
                let result = store
                    .put_manifest(
                        &r,
                        &Reference::Tag(release.clone()),
                        &[],
                        bytes.clone(),
                        &manifest,
                        std::slice::from_ref(&release),
                    )
                    .await;
                (result, bytes, manifest)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for push in pushes {
        let (result, bytes, manifest) = push.await.unwrap();
        match result {
            Ok(digest) => winners.push((digest, bytes, manifest)),
            Err(StorageError::TagTaken { tag, .. }) => assert_eq!(tag, release),
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one push of the release lands");
    let (digest, bytes, manifest) = winners.pop().unwrap();
    let tagged = store.resolve_tag(&r, &release).await.unwrap().unwrap();
    assert_eq!(tagged.digest, digest, "the tag holds the winner's manifest");
    let again = store
        .put_manifest(
            &r,
            &Reference::Tag(release.clone()),
            &[],
            bytes,
            &manifest,
            std::slice::from_ref(&release),
        )
        .await;
    assert_eq!(
        again.unwrap(),
        digest,
        "the same manifest again is idempotent"
    );
}
