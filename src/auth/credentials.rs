//! Credentials berth derives for a user with `berth login-command` (long-lived, or
//! temporary with an expiry), checked with a MAC and never with argon2, and the short
//! memory of passwords verified moments ago, so clients that send Basic auth on every
//! request do not pay for argon2 each time. Password hashes themselves are in
//! [`super::passwords`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// Why a presented derived credential is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// Deliberately the same words as a wrong password: nothing tells what was wrong.
    #[error("wrong user name or password")]
    Wrong,
    #[error(
        "the temporary credential of user {user:?} expired at {expired}; get a new one with `berth login-command --temporary`"
    )]
    Expired { user: String, expired: Timestamp },
}

/// Whether `presented` has the form of a credential berth derives (it is then checked
/// only as one, with its MAC).
pub fn is_derived(presented: &str) -> bool {
    presented.starts_with(LONG_LIVED) || presented.starts_with(TEMPORARY)
}

/// Derives and checks credentials, and remembers verified passwords.
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
    /// changes (the password's revision is part of what is signed), so changing the
    /// password revokes it.
    pub fn long_lived(&self, user: &User) -> String {
        let mac = self.key.sign(&["long-lived", &user.name, &user.revision]);
        format!("{LONG_LIVED}{}", URL_SAFE_NO_PAD.encode(mac))
    }

    /// A temporary credential of `user` that expires at `until`.
    pub fn temporary(&self, user: &User, until: Timestamp) -> String {
        let expiry = until.as_second().to_string();
        let mac = self
            .key
            .sign(&["temporary", &user.name, &user.revision, &expiry]);
        format!("{TEMPORARY}{expiry}.{}", URL_SAFE_NO_PAD.encode(mac))
    }

    /// Checks a derived credential of `user`: `Ok(None)` for a long-lived one,
    /// `Ok(Some(expiry))` for a temporary one. Only a MAC and a comparison: cheap
    /// enough for the request task.
    pub fn check_derived(
        &self,
        user: &User,
        presented: &str,
        now: Timestamp,
    ) -> Result<Option<Timestamp>, CredentialError> {
        if let Some(mac) = presented.strip_prefix(LONG_LIVED) {
            let expected = self.key.sign(&["long-lived", &user.name, &user.revision]);
            return decode_and_compare(mac, &expected)
                .then_some(None)
                .ok_or(CredentialError::Wrong);
        }
        let rest = presented
            .strip_prefix(TEMPORARY)
            .ok_or(CredentialError::Wrong)?;
        let (expiry, mac) = rest.split_once('.').ok_or(CredentialError::Wrong)?;
        let expected = self
            .key
            .sign(&["temporary", &user.name, &user.revision, expiry]);
        if !decode_and_compare(mac, &expected) {
            return Err(CredentialError::Wrong);
        }
        let expired = expiry
            .parse::<i64>()
            .ok()
            .and_then(|s| Timestamp::from_second(s).ok())
            .ok_or(CredentialError::Wrong)?;
        if now < expired {
            Ok(Some(expired))
        } else {
            Err(CredentialError::Expired {
                user: user.name.clone(),
                expired,
            })
        }
    }

    /// Whether `presented` is `user`'s password as verified in the last few minutes: a
    /// hash and a map lookup, cheap enough for the request task (no argon2).
    pub fn remembers(&self, user: &User, presented: &str) -> bool {
        let fingerprint = Self::fingerprint(user, presented);
        let remembered = self.remembered.lock().expect("credential cache poisoned");
        remembered
            .get(&fingerprint)
            .is_some_and(|until| Instant::now() < *until)
    }

    /// Remembers that `presented` is `user`'s password, for a few minutes.
    pub fn remember(&self, user: &User, presented: &str) {
        let now = Instant::now();
        let mut remembered = self.remembered.lock().expect("credential cache poisoned");
        if remembered.len() >= REMEMBER_MAX {
            remembered.retain(|_, until| now < *until);
            if remembered.len() >= REMEMBER_MAX {
                remembered.clear();
            }
        }
        remembered.insert(Self::fingerprint(user, presented), now + REMEMBER);
    }

    fn fingerprint(user: &User, presented: &str) -> [u8; 32] {
        // The revision is part of the key: a changed password forgets what was remembered.
        Sha256::new()
            .chain_update(user.name.as_bytes())
            .chain_update([0])
            .chain_update(user.revision.as_bytes())
            .chain_update([0])
            .chain_update(presented.as_bytes())
            .finalize()
            .into()
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

    fn user(password: &str) -> User {
        User::with_password("alice", password, false).unwrap()
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn a_verified_password_is_remembered_for_that_user_only() {
        let v = Verifier::new(SigningKey::generate());
        let alice = user("s3cret");
        assert!(!v.remembers(&alice, "s3cret"));
        v.remember(&alice, "s3cret");
        assert!(v.remembers(&alice, "s3cret"));
        assert!(!v.remembers(&alice, "guess"));
        let changed = user("new");
        assert!(!v.remembers(&changed, "s3cret"), "a new password forgets");
    }

    #[test]
    fn a_long_lived_credential_works_until_the_password_changes() {
        let v = Verifier::new(SigningKey::generate());
        let alice = user("s3cret");
        let credential = v.long_lived(&alice);
        let now = at("2030-01-01T00:00:00Z");
        assert_eq!(v.check_derived(&alice, &credential, now), Ok(None));
        // Reloading the same plain password (a new random salt) keeps it valid.
        assert_eq!(v.check_derived(&user("s3cret"), &credential, now), Ok(None));
        assert_eq!(
            v.check_derived(&user("new"), &credential, now),
            Err(CredentialError::Wrong)
        );
    }

    #[test]
    fn a_temporary_credential_expires() {
        let v = Verifier::new(SigningKey::generate());
        let alice = user("s3cret");
        let until = at("2026-11-23T06:00:00Z");
        let credential = v.temporary(&alice, until);
        assert_eq!(
            v.check_derived(&alice, &credential, at("2026-11-23T05:59:59Z")),
            Ok(Some(until))
        );
        assert!(matches!(
            v.check_derived(&alice, &credential, at("2026-11-23T06:00:00Z")),
            Err(CredentialError::Expired { .. })
        ));
        let tampered = credential.replacen("berth-t1.17", "berth-t1.27", 1);
        assert_eq!(
            v.check_derived(&alice, &tampered, at("2026-11-23T05:00:00Z")),
            Err(CredentialError::Wrong)
        );
    }

    #[test]
    fn another_key_does_not_accept_the_credential() {
        let alice = user("s3cret");
        let credential = Verifier::new(SigningKey::generate()).long_lived(&alice);
        let other = Verifier::new(SigningKey::generate());
        assert_eq!(
            other.check_derived(&alice, &credential, at("2026-11-23T00:00:00Z")),
            Err(CredentialError::Wrong)
        );
    }
}
