//! Checking what a caller presents as a password: the user's own password (argon2,
//! remembered briefly once verified so clients that send Basic auth on every request
//! do not pay for argon2 each time), or a credential berth derived for the user with
//! `berth login-command`: long-lived, or temporary with an expiry.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jiff::Timestamp;
use sha2::{Digest as _, Sha256};

use super::key::SigningKey;
use super::users::User;

/// Prefix of a long-lived derived credential.
const LONG_LIVED: &str = "berth-l1.";
/// Prefix of a temporary derived credential.
const TEMPORARY: &str = "berth-t1.";

/// How long a verified password is remembered.
const REMEMBER: Duration = Duration::from_secs(300);
/// Bound on remembered passwords, so a flood of distinct guesses cannot grow memory.
const REMEMBER_MAX: usize = 10_000;

pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    Ok(Argon2::default()
        .hash_password(password.as_bytes())?
        .to_string())
}

/// The argon2 hash of a password given in plain text in a user Secret. Its salt comes
/// from the user name, so reloading the Secret gives the same hash, and the credentials
/// derived from it (which sign the hash) keep working until the password changes.
pub fn hash_plain_password(
    user: &str,
    password: &str,
) -> Result<String, argon2::password_hash::Error> {
    let salt = Sha256::new()
        .chain_update(b"berth user salt\0")
        .chain_update(user.as_bytes())
        .finalize();
    Ok(Argon2::default()
        .hash_password_with_salt(password.as_bytes(), &salt[..16])?
        .to_string())
}

pub fn verify_password(password: &str, hash: &str) -> bool {
    Argon2::default()
        .verify_password(password.as_bytes(), hash)
        .is_ok()
}

/// Why a presented password is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("wrong password or credential for user {0:?}")]
    Wrong(String),
    #[error(
        "the temporary credential of user {user:?} expired at {expired}; get a new one with `berth login-command --temporary`"
    )]
    Expired { user: String, expired: Timestamp },
}

/// Verifies passwords and derived credentials.
pub struct Verifier {
    key: SigningKey,
    remembered: Mutex<HashMap<[u8; 32], Instant>>,
}

impl Verifier {
    pub fn new(key: SigningKey) -> Self {
        Verifier {
            key,
            remembered: Mutex::new(HashMap::new()),
        }
    }

    /// The long-lived credential of `user`. It stays valid until the user's password
    /// changes (the password hash is part of what is signed), so changing the password
    /// revokes it.
    pub fn long_lived(&self, user: &User) -> String {
        let mac = self
            .key
            .sign(&["long-lived", &user.name, &user.password_hash]);
        format!("{LONG_LIVED}{}", URL_SAFE_NO_PAD.encode(mac))
    }

    /// A temporary credential of `user` that expires at `until`.
    pub fn temporary(&self, user: &User, until: Timestamp) -> String {
        let expiry = until.as_second().to_string();
        let mac = self
            .key
            .sign(&["temporary", &user.name, &user.password_hash, &expiry]);
        format!("{TEMPORARY}{expiry}.{}", URL_SAFE_NO_PAD.encode(mac))
    }

    /// Checks `presented` against `user`'s password and derived credentials.
    pub fn check(
        &self,
        user: &User,
        presented: &str,
        now: Timestamp,
    ) -> Result<(), CredentialError> {
        let wrong = || CredentialError::Wrong(user.name.clone());
        if let Some(mac) = presented.strip_prefix(LONG_LIVED) {
            let expected = self
                .key
                .sign(&["long-lived", &user.name, &user.password_hash]);
            return decode_and_compare(mac, &expected)
                .then_some(())
                .ok_or_else(wrong);
        }
        if let Some(rest) = presented.strip_prefix(TEMPORARY) {
            let (expiry, mac) = rest.split_once('.').ok_or_else(wrong)?;
            let expected = self
                .key
                .sign(&["temporary", &user.name, &user.password_hash, expiry]);
            if !decode_and_compare(mac, &expected) {
                return Err(wrong());
            }
            let expired = expiry
                .parse::<i64>()
                .ok()
                .and_then(|s| Timestamp::from_second(s).ok())
                .ok_or_else(wrong)?;
            return if now < expired {
                Ok(())
            } else {
                Err(CredentialError::Expired {
                    user: user.name.clone(),
                    expired,
                })
            };
        }
        self.check_password(user, presented)
    }

    /// Whether `presented` is `user`'s password as verified in the last few minutes: a
    /// hash and a map lookup, cheap enough for the request task (no argon2).
    pub fn remembers(&self, user: &User, presented: &str) -> bool {
        self.remembers_fingerprint(&Self::fingerprint(user, presented))
    }

    fn remembers_fingerprint(&self, fingerprint: &[u8; 32]) -> bool {
        let remembered = self.remembered.lock().expect("credential cache poisoned");
        remembered
            .get(fingerprint)
            .is_some_and(|until| Instant::now() < *until)
    }

    fn fingerprint(user: &User, presented: &str) -> [u8; 32] {
        // The hash is part of the key: a changed password forgets what was remembered.
        Sha256::new()
            .chain_update(user.name.as_bytes())
            .chain_update([0])
            .chain_update(user.password_hash.as_bytes())
            .chain_update([0])
            .chain_update(presented.as_bytes())
            .finalize()
            .into()
    }

    fn check_password(&self, user: &User, presented: &str) -> Result<(), CredentialError> {
        let fingerprint = Self::fingerprint(user, presented);
        if self.remembers_fingerprint(&fingerprint) {
            return Ok(());
        }
        let now = Instant::now();
        if !verify_password(presented, &user.password_hash) {
            return Err(CredentialError::Wrong(user.name.clone()));
        }
        let mut remembered = self.remembered.lock().expect("credential cache poisoned");
        if remembered.len() >= REMEMBER_MAX {
            remembered.retain(|_, until| now < *until);
            if remembered.len() >= REMEMBER_MAX {
                remembered.clear();
            }
        }
        remembered.insert(fingerprint, now + REMEMBER);
        Ok(())
    }
}

fn decode_and_compare(encoded: &str, expected: &[u8]) -> bool {
    use subtle::ConstantTimeEq as _;
    URL_SAFE_NO_PAD
        .decode(encoded)
        .is_ok_and(|mac| mac.ct_eq(expected).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> User {
        User {
            name: "alice".into(),
            password_hash: hash_password("s3cret").unwrap(),
            admin: false,
        }
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn the_password_verifies_and_a_wrong_one_does_not() {
        let v = Verifier::new(SigningKey::generate());
        let alice = user();
        let now = at("2026-11-23T00:00:00Z");
        assert_eq!(v.check(&alice, "s3cret", now), Ok(()));
        assert_eq!(v.check(&alice, "s3cret", now), Ok(()), "remembered");
        assert!(v.check(&alice, "guess", now).is_err());
    }

    #[test]
    fn a_long_lived_credential_works_until_the_password_changes() {
        let v = Verifier::new(SigningKey::generate());
        let alice = user();
        let credential = v.long_lived(&alice);
        let now = at("2030-01-01T00:00:00Z");
        assert_eq!(v.check(&alice, &credential, now), Ok(()));
        let changed = User {
            password_hash: hash_password("new").unwrap(),
            ..alice
        };
        assert!(v.check(&changed, &credential, now).is_err());
    }

    #[test]
    fn a_temporary_credential_expires() {
        let v = Verifier::new(SigningKey::generate());
        let alice = user();
        let credential = v.temporary(&alice, at("2026-11-23T06:00:00Z"));
        assert_eq!(
            v.check(&alice, &credential, at("2026-11-23T05:59:59Z")),
            Ok(())
        );
        assert!(matches!(
            v.check(&alice, &credential, at("2026-11-23T06:00:00Z")),
            Err(CredentialError::Expired { .. })
        ));
        let tampered = credential.replacen("berth-t1.17", "berth-t1.27", 1);
        assert!(matches!(
            v.check(&alice, &tampered, at("2026-11-23T05:00:00Z")),
            Err(CredentialError::Wrong(_))
        ));
    }

    #[test]
    fn another_key_does_not_accept_the_credential() {
        let alice = user();
        let credential = Verifier::new(SigningKey::generate()).long_lived(&alice);
        let other = Verifier::new(SigningKey::generate());
        assert!(
            other
                .check(&alice, &credential, at("2026-11-23T00:00:00Z"))
                .is_err()
        );
    }
}
