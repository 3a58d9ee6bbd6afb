//! Garbage collection, as part of the storage suite: what it deletes, what it keeps, and
//! that pushes running at the same time never lose a blob. Every function runs on each
//! backend (see `main.rs`).

use std::sync::Arc;
use std::time::Duration;

use berth::oci::{Digest, Manifest, OCI_INDEX, OCI_MANIFEST, Reference, RepositoryName, Tag};
use berth::storage::{GcOptions, StorageError, Store};
use bytes::Bytes;

use crate::suite::{
    CONFIG, LAYER, content_keys, data, descriptor, image_manifest, keys, push_blob, read, repo,
    sha256, tag,
};

/// Collects everything unreferenced at once: no grace period, no untagged delay.
const NOW: GcOptions = GcOptions {
    grace: Duration::ZERO,
    untagged_delay: Duration::ZERO,
    marker_duration: Duration::from_secs(30),
    pause_before_content: Duration::ZERO,
};

/// Pushes an image of one config and the given layers under `tag_name`.
async fn push(store: &Store, r: &RepositoryName, tag_name: &str, layers: &[&[u8]]) -> Digest {
    let config = push_blob(
        store,
        r,
        CONFIG,
        format!("{{\"t\":\"{tag_name}\"}}").as_bytes(),
    )
    .await;
    let mut descriptors = Vec::new();
    for layer in layers {
        descriptors.push(push_blob(store, r, LAYER, layer).await);
    }
    let (bytes, manifest) = image_manifest(&config, &descriptors, None, None, tag_name);
    store
        .put_manifest(
            r,
            &Reference::Tag(tag(tag_name)),
            &[],
            bytes,
            &manifest,
            &[],
        )
        .await
        .expect("put manifest")
}

/// Every tag of `r` pulls completely: its manifest, and every blob it references,
/// whose bytes hash to their digest.
async fn assert_every_tag_pulls(store: &Store, r: &RepositoryName) {
    for t in store.list_tags(r).await.unwrap().unwrap_or_default() {
        let reference = Reference::Tag(t.parse::<Tag>().unwrap());
        let stored = store
            .get_manifest(r, &reference)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("tag {t} has no manifest"));
        let manifest = Manifest::parse(Some(&stored.media_type), &stored.bytes).unwrap();
        let mut blobs: Vec<Digest> = manifest.config.iter().map(|c| c.digest.clone()).collect();
        if manifest.media_type == OCI_INDEX {
            for child in &manifest.references {
                let child = store
                    .get_manifest(r, &Reference::Digest(child.digest.clone()))
                    .await
                    .unwrap()
                    .unwrap_or_else(|| panic!("index {t} lost child {}", child.digest));
                let child = Manifest::parse(Some(&child.media_type), &child.bytes).unwrap();
                blobs.extend(child.config.iter().map(|c| c.digest.clone()));
                blobs.extend(child.references.iter().map(|l| l.digest.clone()));
            }
        } else {
            blobs.extend(manifest.references.iter().map(|l| l.digest.clone()));
        }
        for digest in blobs {
            let bytes = read(store, r, &digest, None)
                .await
                .unwrap_or_else(|| panic!("tag {t}: blob {digest} does not read"));
            assert_eq!(sha256(&bytes), digest, "tag {t}: blob {digest} is torn");
        }
    }
}

pub async fn gc_frees_what_no_tag_reaches_and_keeps_the_rest(store: Store) {
    let r = repo("gc/app");
    let shared = data(50_000, 1);
    let only_old = data(70_000, 2);
    let child_layer = data(30_000, 3);

    let kept = push(&store, &r, "v1", &[&shared]).await;
    let old = push(&store, &r, "v0", &[&shared, &only_old]).await;

    // An index tagged `multi` whose child manifest has no tag of its own.
    let config = push_blob(&store, &r, CONFIG, b"{\"child\":true}").await;
    let layer = push_blob(&store, &r, LAYER, &child_layer).await;
    let (child_bytes, child) = image_manifest(&config, &[layer], None, None, "child");
    let child_digest = sha256(&child_bytes);
    store
        .put_manifest(
            &r,
            &Reference::Digest(child_digest.clone()),
            &[],
            child_bytes.clone(),
            &child,
            &[],
        )
        .await
        .unwrap();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [descriptor(OCI_MANIFEST, &child_bytes)],
    }))
    .unwrap();
    let index_manifest = Manifest::parse(Some(OCI_INDEX), &index).unwrap();
    store
        .put_manifest(
            &r,
            &Reference::Tag(tag("multi")),
            &[],
            Bytes::from(index),
            &index_manifest,
            &[],
        )
        .await
        .unwrap();

    // A signature of v1 (a referrer, untagged): kept because its subject is.
    let sig_config = push_blob(&store, &r, CONFIG, b"{\"sig\":1}").await;
    let v1 = store
        .get_manifest(&r, &Reference::Digest(kept.clone()))
        .await
        .unwrap()
        .unwrap();
    let subject = descriptor(OCI_MANIFEST, &v1.bytes);
    let (sig_bytes, sig) = image_manifest(
        &sig_config,
        &[],
        Some(&subject),
        Some("application/x.sig"),
        "sig",
    );
    let sig_digest = sha256(&sig_bytes);
    store
        .put_manifest(
            &r,
            &Reference::Digest(sig_digest.clone()),
            &[],
            sig_bytes,
            &sig,
            &[],
        )
        .await
        .unwrap();

    // v0 goes, by digest, as a client deletes an image.
    assert!(
        store
            .delete_manifest(&r, &Reference::Digest(old.clone()))
            .await
            .unwrap()
    );
    let before = content_keys(&store).await.len();

    let report = store.collect_garbage(&NOW).await.unwrap();

    assert_eq!(
        report.manifests_deleted, 0,
        "v0's revision link went with the delete"
    );
    assert_eq!(
        report.blob_links_deleted, 2,
        "v0's config and its own layer: {report:?}"
    );
    assert_eq!(
        report.blobs_deleted, 3,
        "v0's manifest, config and layer: {report:?}"
    );
    let old_manifest_len =
        report.bytes_freed - only_old.len() as u64 - b"{\"t\":\"v0\"}".len() as u64;
    assert!(
        old_manifest_len > 100 && old_manifest_len < 2_000,
        "{report:?}"
    );
    assert_eq!(content_keys(&store).await.len(), before - 3);
    assert!(matches!(
        store.read_blob(&r, &sha256(&only_old), None).await,
        Err(StorageError::BlobUnknown(_))
    ));
    assert_every_tag_pulls(&store, &r).await;
    for d in [&child_digest, &sig_digest] {
        assert!(
            store
                .get_manifest(&r, &Reference::Digest(d.clone()))
                .await
                .unwrap()
                .is_some(),
            "{d} is reachable and must stay"
        );
    }
    assert_eq!(store.referrers(&r, &kept).await.unwrap().len(), 1);

    // A second run finds nothing more.
    let again = store.collect_garbage(&NOW).await.unwrap();
    assert_eq!(
        (
            again.blobs_deleted,
            again.manifests_deleted,
            again.blob_links_deleted
        ),
        (0, 0, 0)
    );

    // Once every tag is gone, every byte comes back.
    for t in ["v1", "multi"] {
        store
            .delete_manifest(&r, &Reference::Tag(tag(t)))
            .await
            .unwrap();
    }
    let last = store.collect_garbage(&NOW).await.unwrap();
    assert_eq!(
        last.manifests_deleted, 4,
        "v1, index, child, signature: {last:?}"
    );
    assert_eq!(content_keys(&store).await, Vec::<String>::new());
    assert_eq!(keys(&store, "blob-data").await, Vec::<String>::new());
    assert_eq!(keys(&store, "repositories").await, Vec::<String>::new());
}

pub async fn gc_keeps_fresh_uploads_and_untagged_manifests_within_their_delay(store: Store) {
    let r = repo("gc/fresh");
    // Layers uploaded for a manifest not pushed yet.
    let waiting = push_blob(&store, &r, LAYER, &data(10_000, 4)).await;
    // A manifest pushed by digest only (untagged), just now.
    let config = push_blob(&store, &r, CONFIG, b"{}").await;
    let layer = push_blob(&store, &r, LAYER, &data(10_000, 5)).await;
    let (bytes, manifest) = image_manifest(&config, &[layer], None, None, "untagged");
    let untagged = sha256(&bytes);
    store
        .put_manifest(
            &r,
            &Reference::Digest(untagged.clone()),
            &[],
            bytes,
            &manifest,
            &[],
        )
        .await
        .unwrap();

    let defaults = store.collect_garbage(&GcOptions::default()).await.unwrap();
    assert_eq!(
        defaults.blobs_deleted + defaults.manifests_deleted + defaults.blob_links_deleted,
        0
    );
    assert!(read(&store, &r, &waiting.digest, None).await.is_some());

    // Past the untagged delay (but within the grace period) the manifest goes; its
    // blobs stay for the grace period.
    let delay_only = GcOptions {
        grace: Duration::from_secs(3600),
        untagged_delay: Duration::ZERO,
        ..GcOptions::default()
    };
    let report = store.collect_garbage(&delay_only).await.unwrap();
    assert_eq!(report.manifests_deleted, 1);
    assert_eq!(report.blobs_deleted, 0, "{report:?}");
    assert!(
        store
            .get_manifest(&r, &Reference::Digest(untagged))
            .await
            .unwrap()
            .is_none()
    );
    assert!(read(&store, &r, &waiting.digest, None).await.is_some());

    let report = store.collect_garbage(&NOW).await.unwrap();
    assert_eq!(
        report.blobs_deleted, 4,
        "manifest, config, both layers: {report:?}"
    );
}

/// Images that reuse the layers of deleted ones (content older than the grace period,
/// so only the sweep's claims protect it) are pushed while collections run, round after
/// round: every tag must still pull whole.
pub async fn pushes_that_reuse_deleted_layers_survive_concurrent_gc(store: Store) {
    let r = repo("gc/race");
    // S3 keeps modification times in whole seconds.
    let (rounds, grace) = if store.is_local() {
        (10, Duration::from_millis(1000))
    } else {
        (4, Duration::from_secs(3))
    };
    let options = GcOptions {
        grace,
        untagged_delay: Duration::ZERO,
        ..GcOptions::default()
    };
    // Many layers, so the sweep's deletes and the pushes' links interleave.
    const LAYERS: usize = 48;
    const PUSHERS: usize = 4;
    let layers: Arc<Vec<Vec<u8>>> =
        Arc::new((0..LAYERS).map(|i| data(4_000, 100 + i as u64)).collect());
    let mut reclaimed = 0;
    for round in 0..rounds {
        // An image whose layers become garbage, old enough to be collected...
        let doomed = format!("doomed-{round}");
        let all: Vec<&[u8]> = layers.iter().map(Vec::as_slice).collect();
        push(&store, &r, &doomed, &all).await;
        store
            .delete_manifest(&r, &Reference::Tag(tag(&doomed)))
            .await
            .unwrap();
        tokio::time::sleep(grace + Duration::from_millis(100)).await;

        // ...and pushes that link them again while a collection runs.
        let pushers: Vec<_> = (0..PUSHERS)
            .map(|p| {
                let (store, r, layers) = (store.clone(), r.clone(), layers.clone());
                tokio::spawn(async move {
                    let share = LAYERS / 2;
                    let from = p * (LAYERS - share) / (PUSHERS - 1);
                    let mine: Vec<&[u8]> = layers[from..from + share]
                        .iter()
                        .map(Vec::as_slice)
                        .collect();
                    push(&store, &r, &format!("r{round}-p{p}"), &mine).await;
                    let other = repo(&format!("gc/mounted-{p}"));
                    let digest = sha256(&layers[from]);
                    if store
                        .mount_blob(&other, &digest, Some(&r))
                        .await
                        .unwrap()
                        .is_none()
                    {
                        store
                            .put_blob(&other, &digest, crate::suite::body(&layers[from]), None)
                            .await
                            .unwrap();
                    }
                    let bytes = read(&store, &other, &digest, None)
                        .await
                        .expect("a mounted blob reads");
                    assert_eq!(sha256(&bytes), digest);
                })
            })
            .collect();
        let report = loop {
            match store.collect_garbage(&options).await {
                Ok(report) => break report,
                Err(StorageError::SweepRunning) => tokio::task::yield_now().await,
                Err(e) => panic!("gc failed: {e}"),
            }
        };
        reclaimed += report.blobs_deleted;
        for p in pushers {
            p.await.expect("a push failed");
        }
        assert_every_tag_pulls(&store, &r).await;
    }
    assert!(
        reclaimed >= rounds as u64,
        "each round's doomed manifest and config go"
    );
    assert_eq!(
        store.list_tags(&r).await.unwrap().unwrap().len(),
        rounds * PUSHERS
    );
}
