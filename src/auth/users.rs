//! berth's users as the registry knows them: a name, an argon2 password hash, and
//! whether the user administers berth. Where they come from (Kubernetes Secrets, in a
//! cluster or in the config folder) is read in [`crate::config::user_secrets`]; this
//! module knows no Kubernetes type.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use sha2::{Digest as _, Sha256};

use super::passwords::{self, HashError};

/// One user as berth authenticates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    /// An argon2 PHC string (`$argon2id$...`).
    pub password_hash: String,
    /// What identifies the current password, for the credentials and tokens that must
    /// die with it: the hash itself when one was given, or a digest of the plain
    /// password, which (unlike its hash, salted anew at every load) stays the same
    /// when the same password is loaded again. Only ever used under berth's MAC key.
    pub revision: String,
    pub admin: bool,
}

/// Why a user cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("data.username {0:?} is not a valid user name (1 to 253 characters, no ':' or spaces)")]
    InvalidName(String),
    #[error("has neither data.passwordHash nor data.password")]
    NoPassword,
    #[error("data.passwordHash: {0}")]
    BadHash(HashError),
    #[error("data.{0} is not UTF-8")]
    NotText(&'static str),
    #[error("hashing data.password failed: {0}")]
    Hashing(HashError),
}

pub fn valid_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && !name.contains(':')
        && !name.chars().any(|c| c.is_whitespace() || c.is_control())
}

impl User {
    /// A user whose password is given as an argon2 hash (within berth's cost limits).
    pub fn with_hash(name: &str, hash: &str, admin: bool) -> Result<User, UserError> {
        if !valid_user_name(name) {
            return Err(UserError::InvalidName(name.to_string()));
        }
        let hash = hash.trim();
        passwords::check_hash(hash).map_err(UserError::BadHash)?;
        Ok(User {
            name: name.to_string(),
            password_hash: hash.to_string(),
            revision: hash.to_string(),
            admin,
        })
    }

    /// A user whose password is given in plain text: it is hashed at once (with a
    /// random salt) and only the hash is kept.
    pub fn with_password(name: &str, password: &str, admin: bool) -> Result<User, UserError> {
        if !valid_user_name(name) {
            return Err(UserError::InvalidName(name.to_string()));
        }
        let password_hash = passwords::hash_password(password).map_err(UserError::Hashing)?;
        let revision = hex::encode(
            Sha256::new()
                .chain_update(b"berth password revision\0")
                .chain_update(name.as_bytes())
                .chain_update([0])
                .chain_update(password.as_bytes())
                .finalize(),
        );
        Ok(User {
            name: name.to_string(),
            password_hash,
            revision: format!("plain:{revision}"),
            admin,
        })
    }
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

    #[test]
    fn a_plain_password_is_kept_only_as_a_salted_hash_that_verifies() {
        let user = User::with_password("alice", "correct horse", true).unwrap();
        assert!(user.password_hash.starts_with("$argon2id$"));
        assert!(!user.password_hash.contains("correct"));
        assert!(passwords::verify_password(
            "correct horse",
            &user.password_hash
        ));
        let again = User::with_password("alice", "correct horse", true).unwrap();
        assert_ne!(
            user.password_hash, again.password_hash,
            "a new salt each time"
        );
        assert_eq!(
            user.revision, again.revision,
            "the same password, the same revision"
        );
        let other = User::with_password("alice", "battery staple", true).unwrap();
        assert_ne!(user.revision, other.revision);
    }

    #[test]
    fn bad_names_and_hashes_are_refused() {
        assert!(matches!(
            User::with_password("a:b", "x", false),
            Err(UserError::InvalidName(_))
        ));
        assert!(matches!(
            User::with_hash("carol", "plain", false),
            Err(UserError::BadHash(_))
        ));
    }
}
