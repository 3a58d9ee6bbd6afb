//! The storage configuration file (`--storage-config FILE`): where registry content
//! lives, with the S3 settings written down instead of spread over `AWS_*` variables.
//!
//! ```yaml
//! s3:
//!   bucket: registry
//!   prefix: berth              # optional
//!   region: eu-west-1          # optional; AWS_REGION otherwise
//!   endpoint: http://minio:9000
//!   allowHttp: true
//!   accessKeyId: berth
//!   secretAccessKeyFile: /var/run/secrets/s3/secret   # or secretAccessKey
//! ```
//!
//! or `filesystem: {path: /var/lib/berth}` (relative paths are relative to the file).
//! A setting the file leaves out is taken from the `AWS_*` variables, as with
//! `--storage s3://…`; a setting it names wins over them.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::backend::{S3Settings, StorageLocation};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read storage configuration {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("storage configuration {path} is invalid: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("cannot read the S3 secret key file {path} named in {config}: {source}")]
    ReadSecret {
        path: PathBuf,
        config: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The file's shape: exactly one backend. (A struct of options rather than an enum:
/// serde_yaml spells enums as YAML tags, `!s3`, which nobody writes by hand.)
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StorageConfig {
    filesystem: Option<FilesystemConfig>,
    s3: Option<S3Config>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FilesystemConfig {
    path: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct S3Config {
    bucket: String,
    #[serde(default)]
    prefix: String,
    region: Option<String>,
    endpoint: Option<String>,
    allow_http: Option<bool>,
    virtual_hosted_style: Option<bool>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    secret_access_key_file: Option<PathBuf>,
    session_token: Option<String>,
}

/// Reads the storage configuration at `path`.
pub fn load(path: &Path) -> Result<StorageLocation, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

/// Parses a storage configuration; `path` names the file in errors and anchors
/// relative paths.
pub fn parse(text: &str, path: &Path) -> Result<StorageLocation, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let config: StorageConfig = serde_yaml::from_str(text).map_err(|e| {
        invalid(format!(
            "{e} (expected `filesystem: {{path: DIR}}` or `s3: {{bucket: NAME, ...}}`)"
        ))
    })?;
    let folder = path.parent().unwrap_or(Path::new("."));
    match (config.filesystem, config.s3) {
        (Some(_), Some(_)) => Err(invalid(
            "both filesystem and s3 are set; keep the one berth should use".into(),
        )),
        (None, None) => Err(invalid(
            "it names no storage: expected `filesystem: {path: DIR}` or `s3: {bucket: NAME, ...}`"
                .into(),
        )),
        (Some(fs), None) => {
            if fs.path.as_os_str().is_empty() {
                return Err(invalid("filesystem.path is empty".into()));
            }
            Ok(StorageLocation::Local(folder.join(fs.path)))
        }
        (None, Some(s3)) => {
            if s3.bucket.is_empty() || s3.bucket.contains('/') {
                return Err(invalid(format!(
                    "s3.bucket {:?} is not a bucket name",
                    s3.bucket
                )));
            }
            let secret_access_key = match (s3.secret_access_key, s3.secret_access_key_file) {
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        "s3.secretAccessKey and s3.secretAccessKeyFile are both set; keep one"
                            .into(),
                    ));
                }
                (Some(key), None) => Some(key),
                (None, Some(file)) => {
                    let file = folder.join(file);
                    let key = std::fs::read_to_string(&file).map_err(|source| {
                        ConfigError::ReadSecret {
                            path: file.clone(),
                            config: path.to_path_buf(),
                            source,
                        }
                    })?;
                    Some(key.trim_end_matches(['\r', '\n']).to_string())
                }
                (None, None) => None,
            };
            if s3.access_key_id.is_some() != secret_access_key.is_some() {
                return Err(invalid(
                    "s3.accessKeyId and a secret access key go together: set both or neither"
                        .into(),
                ));
            }
            Ok(StorageLocation::S3(Box::new(S3Settings {
                bucket: s3.bucket,
                prefix: s3.prefix.trim_matches('/').to_string(),
                region: s3.region,
                endpoint: s3.endpoint,
                allow_http: s3.allow_http,
                virtual_hosted_style: s3.virtual_hosted_style,
                access_key_id: s3.access_key_id,
                secret_access_key,
                session_token: s3.session_token,
            })))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_at(text: &str) -> Result<StorageLocation, ConfigError> {
        parse(text, Path::new("/etc/berth/storage.yaml"))
    }

    #[test]
    fn a_filesystem_path_is_relative_to_the_file() {
        assert_eq!(
            parse_at("filesystem: {path: data}").unwrap(),
            StorageLocation::Local("/etc/berth/data".into())
        );
        assert_eq!(
            parse_at("filesystem: {path: /srv/berth}").unwrap(),
            StorageLocation::Local("/srv/berth".into())
        );
    }

    #[test]
    fn s3_settings_are_read_and_the_rest_is_left_to_the_environment() {
        let location = parse_at(
            "s3:\n  bucket: registry\n  prefix: /team/berth/\n  endpoint: http://127.0.0.1:9000\n  allowHttp: true\n",
        )
        .unwrap();
        let StorageLocation::S3(s3) = location else {
            panic!("not S3: {location:?}")
        };
        assert_eq!(s3.bucket, "registry");
        assert_eq!(s3.prefix, "team/berth");
        assert_eq!(s3.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(s3.allow_http, Some(true));
        assert_eq!(s3.region, None);
        assert_eq!(s3.access_key_id, None);
    }

    #[test]
    fn the_secret_key_can_come_from_a_file_beside_the_configuration() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), "s3cr3t\n").unwrap();
        let config = dir.path().join("storage.yaml");
        let location = parse(
            "s3: {bucket: b, accessKeyId: berth, secretAccessKeyFile: secret}",
            &config,
        )
        .unwrap();
        let StorageLocation::S3(s3) = location else {
            panic!("not S3")
        };
        assert_eq!(s3.secret_access_key.as_deref(), Some("s3cr3t"));

        let missing = parse(
            "s3: {bucket: b, accessKeyId: berth, secretAccessKeyFile: nowhere}",
            &config,
        )
        .unwrap_err()
        .to_string();
        assert!(missing.contains("nowhere"), "{missing}");
    }

    #[test]
    fn mistakes_are_named() {
        let cases = [
            ("s3: {bucket: b, endpont: http://x}", "endpont"),
            ("gcs: {bucket: b}", "gcs"),
            ("{}", "names no storage"),
            ("filesystem: {path: d}\ns3: {bucket: b}", "keep the one"),
            ("s3: {prefix: x}", "bucket"),
            ("s3: {bucket: a/b}", "not a bucket name"),
            ("s3: {bucket: b, accessKeyId: k}", "set both or neither"),
            (
                "s3: {bucket: b, accessKeyId: k, secretAccessKey: s, secretAccessKeyFile: f}",
                "keep one",
            ),
            ("filesystem: {path: ''}", "empty"),
        ];
        for (text, expected) in cases {
            let error = parse_at(text).unwrap_err().to_string();
            assert!(
                error.contains(expected) && error.contains("/etc/berth/storage.yaml"),
                "{text}: {error}"
            );
        }
    }
}
