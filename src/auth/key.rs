//! The secret key that signs tokens and derived credentials. Every replica must hold
//! the same key: in a cluster it lives in a Secret, standalone in a file (created on
//! first start, readable only by its owner).

use std::path::Path;
use std::sync::Arc;

use hmac::{KeyInit as _, Mac as _};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Length of a generated key, in bytes.
pub const KEY_LEN: usize = 32;

#[derive(Clone)]
pub struct SigningKey(Arc<Vec<u8>>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the signing key in {path} is shorter than {KEY_LEN} bytes")]
    TooShort { path: String },
    #[error("reading or creating the signing key {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

impl SigningKey {
    pub fn generate() -> Self {
        let mut bytes = vec![0u8; KEY_LEN];
        getrandom::fill(&mut bytes).expect("the operating system provides randomness");
        SigningKey(Arc::new(bytes))
    }

    pub fn from_bytes(bytes: Vec<u8>) -> Option<Self> {
        (bytes.len() >= KEY_LEN).then(|| SigningKey(Arc::new(bytes)))
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// Loads the key from `path`, creating it first if it does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        let shown = path.display().to_string();
        let io = |source| KeyError::Io {
            path: shown.clone(),
            source,
        };
        match std::fs::read(path) {
            Ok(bytes) => {
                return Self::from_bytes(bytes).ok_or(KeyError::TooShort {
                    path: shown.clone(),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let key = Self::generate();
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        // Written aside and linked into place, so two processes starting together
        // agree on one key and nobody reads half of it.
        let staging = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4()));
        {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&staging)
                .map_err(io)?;
            file.write_all(key.bytes()).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        let linked = std::fs::hard_link(&staging, path);
        let _ = std::fs::remove_file(&staging);
        match linked {
            Ok(()) => Ok(key),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::load_or_create(path),
            Err(e) => Err(io(e)),
        }
    }

    /// HMAC-SHA256 over `parts`, each length-prefixed so no two lists of parts sign alike.
    pub fn sign(&self, parts: &[&str]) -> Vec<u8> {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length");
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        mac.finalize().into_bytes().to_vec()
    }

    /// HMAC-SHA256 over raw bytes (for JWT signatures).
    pub fn sign_bytes(&self, data: &[u8]) -> Vec<u8> {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(data);
        mac.finalize().into_bytes().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_is_created_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth/signing-key");
        let first = SigningKey::load_or_create(&path).unwrap();
        let second = SigningKey::load_or_create(&path).unwrap();
        assert_eq!(first.bytes(), second.bytes());
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn signatures_separate_their_parts() {
        let key = SigningKey::generate();
        assert_ne!(key.sign(&["ab", "c"]), key.sign(&["a", "bc"]));
    }
}
