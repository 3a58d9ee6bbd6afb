//! The backends the suite runs on, each giving a test an empty `Store` of its own.

use std::sync::Arc;

use berth::storage::{S3Settings, StorageLocation, Store};
use object_store::ObjectStore;

use crate::minio_server::{self, ACCESS_KEY, MinioServer, REGION, SECRET_KEY};

/// A store and whatever must outlive it.
pub struct TestStore {
    pub store: Store,
    _dir: Option<tempfile::TempDir>,
}

/// A fresh directory, opened the way `berth serve --storage DIR` opens it.
pub fn local() -> TestStore {
    let dir = tempfile::tempdir().expect("temp dir");
    let location = StorageLocation::Local(dir.path().join("data"));
    TestStore {
        store: Store::open(&location).expect("open local storage"),
        _dir: Some(dir),
    }
}

/// A fresh prefix in the shared MinIO bucket, or `None` when MinIO is not installed.
pub fn minio(test: &str) -> Option<TestStore> {
    let server = minio_server::shared()?;
    let prefix = format!("suite/{test}-{}", uuid::Uuid::new_v4().simple());
    Some(TestStore {
        store: Store::open(&s3_location(server, &prefix)).expect("open S3 storage"),
        _dir: None,
    })
}

/// `s3://bucket/prefix` on the test server, with every setting spelled out.
pub fn s3_location(server: &MinioServer, prefix: &str) -> StorageLocation {
    StorageLocation::S3(Box::new(S3Settings {
        bucket: server.bucket.clone(),
        prefix: prefix.to_string(),
        region: Some(REGION.into()),
        endpoint: Some(server.endpoint.clone()),
        allow_http: Some(true),
        access_key_id: Some(ACCESS_KEY.into()),
        secret_access_key: Some(SECRET_KEY.into()),
        ..S3Settings::default()
    }))
}

/// The bucket's objects under `prefix`, opened as berth opens `s3://bucket/prefix`
/// with every setting spelled out (as a `--storage-config` file does).
///
/// Each test builds its own client: a pooled HTTP connection belongs to the runtime that
/// opened it, and every `#[tokio::test]` has its own runtime. Setting process
/// environment (`AWS_*`) from parallel tests would race; the end-to-end test covers it.
pub fn s3_objects(server: &MinioServer, prefix: &str) -> Arc<dyn ObjectStore> {
    s3_location(server, prefix)
        .open()
        .expect("S3 client for MinIO")
}
