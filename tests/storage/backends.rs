//! The backends the suite runs on, each giving a test an empty `Store` of its own.

use std::sync::Arc;

use berth::storage::{StorageLocation, Store};
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::prefix::PrefixStore;

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
        store: Store::new(s3_objects(server, &prefix)),
        _dir: None,
    })
}

/// The bucket's objects under `prefix`, as berth sees them for `s3://bucket/prefix`.
///
/// Each test builds its own client: a pooled HTTP connection belongs to the runtime that
/// opened it, and every `#[tokio::test]` has its own runtime. The settings are those
/// `StorageLocation::open` reads from `AWS_*` (exercised by the end-to-end test);
/// setting process environment from parallel tests would race.
pub fn s3_objects(server: &MinioServer, prefix: &str) -> Arc<dyn ObjectStore> {
    let s3 = AmazonS3Builder::new()
        .with_endpoint(&server.endpoint)
        .with_allow_http(true)
        .with_region(REGION)
        .with_access_key_id(ACCESS_KEY)
        .with_secret_access_key(SECRET_KEY)
        .with_bucket_name(&server.bucket)
        .build()
        .expect("S3 client for MinIO");
    Arc::new(PrefixStore::new(s3, prefix))
}
