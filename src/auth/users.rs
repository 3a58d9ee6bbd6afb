//! berth's users. In a cluster each user is a Kubernetes Secret labelled
//! `berth.dev/user`; standalone, the same Secret documents sit in the config folder.
//! Either way only a password *hash* is kept in memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::Secret;

/// The label that makes a Secret a berth user.
pub const USER_LABEL: &str = "berth.dev/user";

/// One user as berth authenticates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    /// An argon2 PHC string (`$argon2id$...`).
    pub password_hash: String,
    pub admin: bool,
}

/// Why a user Secret cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("data.username {0:?} is not a valid user name (1 to 253 characters, no ':' or spaces)")]
    InvalidName(String),
    #[error("has neither data.passwordHash nor data.password")]
    NoPassword,
    #[error("data.passwordHash is not an argon2 hash (make one with `berth hash-password`): {0}")]
    BadHash(String),
    #[error("data.{0} is not UTF-8")]
    NotText(&'static str),
    #[error("hashing data.password failed: {0}")]
    Hashing(String),
}

fn field(secret: &Secret, key: &'static str) -> Result<Option<String>, UserError> {
    if let Some(text) = secret.string_data.as_ref().and_then(|d| d.get(key)) {
        return Ok(Some(text.clone()));
    }
    match secret.data.as_ref().and_then(|d| d.get(key)) {
        None => Ok(None),
        Some(bytes) => String::from_utf8(bytes.0.clone())
            .map(Some)
            .map_err(|_| UserError::NotText(key)),
    }
}

pub fn valid_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && !name.contains(':')
        && !name.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Reads a user from its Secret: `username` (default: the Secret's name), `passwordHash`
/// (argon2), or `password` (plain text, hashed here so it is never held as is),
/// and `admin: "true"` for administrators.
pub fn user_from_secret(secret: &Secret) -> Result<User, UserError> {
    let name = field(secret, "username")?
        .or_else(|| secret.metadata.name.clone())
        .unwrap_or_default();
    if !valid_user_name(&name) {
        return Err(UserError::InvalidName(name));
    }
    let password_hash = match (field(secret, "passwordHash")?, field(secret, "password")?) {
        (Some(hash), _) => {
            let hash = hash.trim().to_string();
            argon2::PasswordHash::new(&hash).map_err(|e| UserError::BadHash(e.to_string()))?;
            hash
        }
        (None, Some(password)) => super::credentials::hash_plain_password(&name, &password)
            .map_err(|e| UserError::Hashing(e.to_string()))?,
        (None, None) => return Err(UserError::NoPassword),
    };
    let admin = field(secret, "admin")?.is_some_and(|v| v.trim() == "true");
    Ok(User {
        name,
        password_hash,
        admin,
    })
}

/// Whether a Secret declares a berth user.
pub fn is_user_secret(secret: &Secret) -> bool {
    secret
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(USER_LABEL))
}

/// All users, by name.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    users: HashMap<String, User>,
}

impl Directory {
    pub fn new(users: impl IntoIterator<Item = User>) -> Self {
        Directory {
            users: users.into_iter().map(|u| (u.name.clone(), u)).collect(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// The live directory: request handlers read it, the config watcher replaces it.
#[derive(Clone)]
pub struct Users {
    directory: Arc<RwLock<Arc<Directory>>>,
    loaded: Arc<AtomicBool>,
}

impl Default for Users {
    /// No users, and nothing more to wait for.
    fn default() -> Self {
        Users {
            directory: Arc::default(),
            loaded: Arc::new(AtomicBool::new(true)),
        }
    }
}

impl Users {
    /// No users until the first [`replace`](Self::replace); readiness waits for it.
    pub fn pending() -> Self {
        let users = Users::default();
        users.loaded.store(false, Ordering::SeqCst);
        users
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::SeqCst)
    }

    pub fn current(&self) -> Arc<Directory> {
        self.directory.read().expect("users lock poisoned").clone()
    }

    pub fn replace(&self, directory: Directory) {
        *self.directory.write().expect("users lock poisoned") = Arc::new(directory);
        self.loaded.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn secret(name: &str, data: &[(&str, &str)]) -> Secret {
        Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                labels: Some(BTreeMap::from([(USER_LABEL.to_string(), "true".into())])),
                ..Default::default()
            },
            string_data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn a_plain_password_is_kept_only_as_a_hash_that_verifies() {
        let user = user_from_secret(&secret(
            "alice",
            &[("password", "correct horse"), ("admin", "true")],
        ))
        .unwrap();
        assert_eq!(user.name, "alice");
        assert!(user.admin);
        assert!(user.password_hash.starts_with("$argon2"));
        assert!(super::super::credentials::verify_password(
            "correct horse",
            &user.password_hash
        ));
        assert!(!super::super::credentials::verify_password(
            "wrong",
            &user.password_hash
        ));
    }

    #[test]
    fn the_username_key_overrides_the_secret_name() {
        let user = user_from_secret(&secret(
            "berth-user-bob",
            &[("username", "bob"), ("password", "pw")],
        ))
        .unwrap();
        assert_eq!(user.name, "bob");
        assert!(!user.admin);
    }

    #[test]
    fn a_user_without_password_or_with_a_bad_hash_is_refused() {
        assert_eq!(
            user_from_secret(&secret("carol", &[])),
            Err(UserError::NoPassword)
        );
        assert!(matches!(
            user_from_secret(&secret("carol", &[("passwordHash", "plain")])),
            Err(UserError::BadHash(_))
        ));
        assert!(matches!(
            user_from_secret(&secret("a:b", &[("password", "x")])),
            Err(UserError::InvalidName(_))
        ));
    }
}
