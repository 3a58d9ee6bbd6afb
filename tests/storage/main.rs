//! One storage suite, run unchanged on every backend (as CNCF distribution's driver
//! test suites are): the local filesystem, and a real MinIO server on loopback.
//!
//! Each function in `suite.rs` gets a fresh, empty `Store`; `storage_suite!` below
//! expands every one of them into `local::NAME` and `minio::NAME` tests, so
//! `cargo test --test storage local::` or `minio::` runs one backend. The MinIO tests
//! share one server per test process, each under its own key prefix (see
//! `minio_server.rs`, which also makes sure the server dies with the process).
//! `e2e.rs` runs the real `berth serve` on MinIO over HTTP.
//!
//! Without a MinIO binary (scripts/build-peers.sh builds one) the MinIO tests skip
//! loudly, or fail when CI=true.

#[path = "../common/mod.rs"]
mod common;

mod backends;
mod e2e;
mod gc;
mod in_place;
mod leader;
mod minio_server;
mod redirects;
mod replicas;
mod sigv4;
mod suite;
mod sweep;

macro_rules! storage_suite {
    ($($test:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let backend = crate::backends::local();
                    crate::suites::$test(backend.store.clone()).await;
                }
            )*
        }

        mod minio {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let Some(backend) = crate::backends::minio(stringify!($test)) else {
                        return;
                    };
                    crate::suites::$test(backend.store.clone()).await;
                }
            )*
        }
    };
}

/// The suite's functions, wherever they are written.
mod suites {
    pub use crate::gc::*;
    pub use crate::suite::*;
}

storage_suite! {
    gc_frees_what_no_tag_reaches_and_keeps_the_rest,
    gc_keeps_fresh_uploads_and_untagged_manifests_within_their_delay,
    pushes_that_reuse_deleted_layers_survive_concurrent_gc,
    blob_put_and_read_whole_and_by_ranges,
    chunked_upload_with_multipart_chunks,
    upload_status_resumes_after_append,
    out_of_order_chunk_is_rejected_and_upload_stays_usable,
    wrong_digest_is_rejected_and_leaves_nothing,
    upload_finished_with_another_algorithm,
    cancel_removes_the_session,
    abandoned_uploads_expire_and_fresh_ones_stay,
    mount_from_another_repository,
    delete_blob_removes_only_that_link,
    manifest_with_missing_blobs_is_rejected_and_stores_nothing,
    manifest_by_tag_and_by_digest,
    manifest_pushed_by_a_wrong_digest_is_refused,
    tags_are_listed_sorted,
    repositories_include_nested_names,
    delete_manifest_by_digest_removes_its_tags,
    changes_by_another_process_are_seen_at_once,
    referrers_index_lists_manifests_with_a_subject,
    concurrent_tag_pushes_leave_exactly_one_whole_manifest,
    large_blob_streams_out_with_the_right_digest,
    requests_for_unknown_upload_sessions_leave_no_locks,
    concurrent_creates_of_one_immutable_tag_leave_exactly_one_winner,
}

/// What only a directory on disk can show.
mod local_disk {
    use berth::oci::{Algorithm, Digest};
    use berth::storage::{StorageLocation, Store};

    fn entries(dir: &std::path::Path) -> Vec<String> {
        match std::fs::read_dir(dir) {
            Ok(rd) => rd
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    #[tokio::test]
    async fn finished_uploads_leave_no_folder_and_old_empty_folders_are_not_counted_as_expired() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let store = Store::open(&StorageLocation::Local(data.clone())).unwrap();
        let repo = "team/app".parse().unwrap();
        let content = b"some layer".to_vec();
        let digest = Digest::of(Algorithm::Sha256, &content);

        // A monolithic upload, and a chunked one.
        let one =
            futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(content.clone()))]);
        store.put_blob(&repo, &digest, one, None).await.unwrap();
        let session = store.start_upload(&repo, Algorithm::Sha256).await.unwrap();
        let chunk =
            futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(content.clone()))]);
        store
            .append_upload(&repo, &session.id, Some(0), chunk, None)
            .await
            .unwrap();
        let none = futures::stream::iter(Vec::<Result<bytes::Bytes, std::io::Error>>::new());
        store
            .finish_upload(&repo, &session.id, &digest, None, none, None)
            .await
            .unwrap();
        assert_eq!(entries(&data.join("uploads")), Vec::<String>::new());

        // An empty folder may be a session whose first file is being written: kept
        // while younger than the expiry...
        std::fs::create_dir_all(data.join("uploads/0b7e8c1e-old/parts")).unwrap();
        let week = std::time::Duration::from_secs(7 * 24 * 3600);
        assert_eq!(store.expire_uploads(week).await.unwrap(), 0);
        assert_eq!(entries(&data.join("uploads")), ["0b7e8c1e-old"]);
        // ...and once older (as those an older version left behind), removed without
        // counting as an expired session.
        assert_eq!(
            store
                .expire_uploads(std::time::Duration::ZERO)
                .await
                .unwrap(),
            0
        );
        assert_eq!(entries(&data.join("uploads")), Vec::<String>::new());
    }
}
