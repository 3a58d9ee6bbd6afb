//! The credential in a pull Secret: it signs in as the user, but only to pull (what the
//! user may pull, nothing more), and only until it expires. A pull Secret is readable
//! by anyone who can read Secrets in its namespace, so it must not carry the user's full
//! credential. It is derived like `login-command`'s, by berth's signing key over the
//! user's password hash, so changing the password revokes it too.
//!
//! Replicas must write the same Secret at the same time, so the credential is a
//! function of the time window: each window of [`ROTATE_EVERY`] has one credential,
//! valid for [`LIFETIME`] from the window's start. The operator's periodic sync
//! rewrites it when the window turns, well before it expires.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jiff::{SignedDuration, Timestamp};

use super::key::SigningKey;
use super::users::User;

/// Prefix of a pull-only credential.
pub const PREFIX: &str = "berth-p1.";
/// How long a pull credential is valid from the start of its window.
pub const LIFETIME: SignedDuration = SignedDuration::from_hours(7 * 24);
/// How often the credential in a pull Secret changes: half its lifetime, so a Secret
/// rewritten late still holds a valid credential for days.
pub const ROTATE_EVERY: SignedDuration = SignedDuration::from_hours(7 * 12);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PullCredentialError {
    #[error("wrong pull credential for user {0:?}")]
    Wrong(String),
    #[error(
        "the pull credential of user {user:?} expired at {expired}: berth rewrites pull Secrets every 3.5 days, check that the operator runs"
    )]
    Expired { user: String, expired: Timestamp },
}

/// Whether `presented` is meant as a pull credential (and must be checked as one).
pub fn is_pull_credential(presented: &str) -> bool {
    presented.starts_with(PREFIX)
}

/// The credential for `user`'s pull Secrets at `now`: the same on every replica
/// within one rotation window.
pub fn issue(key: &SigningKey, user: &User, now: Timestamp) -> String {
    let every = ROTATE_EVERY.as_secs();
    let window_start = now.as_second().div_euclid(every) * every;
    let expiry = (window_start + LIFETIME.as_secs()).to_string();
    let mac = key.sign(&["pull-only", &user.name, &user.revision, &expiry]);
    format!("{PREFIX}{expiry}.{}", URL_SAFE_NO_PAD.encode(mac))
}

/// Checks a pull credential of `user`; a caller it signs in may only pull.
pub fn verify(
    key: &SigningKey,
    user: &User,
    presented: &str,
    now: Timestamp,
) -> Result<(), PullCredentialError> {
    let wrong = || PullCredentialError::Wrong(user.name.clone());
    let rest = presented.strip_prefix(PREFIX).ok_or_else(wrong)?;
    let (expiry, mac) = rest.split_once('.').ok_or_else(wrong)?;
    let expected = key.sign(&["pull-only", &user.name, &user.revision, expiry]);
    let matches = URL_SAFE_NO_PAD.decode(mac).is_ok_and(|mac| {
        use subtle::ConstantTimeEq as _;
        mac.ct_eq(&expected).into()
    });
    if !matches {
        return Err(wrong());
    }
    let expired = expiry
        .parse::<i64>()
        .ok()
        .and_then(|s| Timestamp::from_second(s).ok())
        .ok_or_else(wrong)?;
    if now < expired {
        Ok(())
    } else {
        Err(PullCredentialError::Expired {
            user: user.name.clone(),
            expired,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice(hash: &str) -> User {
        User {
            name: "alice".into(),
            password_hash: hash.into(),
            revision: hash.into(),
            admin: false,
        }
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn replicas_issue_the_same_credential_within_a_window_and_a_new_one_after() {
        let key = SigningKey::generate();
        let now = at("2026-12-04T10:00:00Z");
        let first = issue(&key, &alice("h"), now);
        assert_eq!(
            first,
            issue(&key, &alice("h"), now + SignedDuration::from_secs(60))
        );
        assert_ne!(first, issue(&key, &alice("h"), now + ROTATE_EVERY));
    }

    #[test]
    fn a_credential_is_valid_for_days_after_its_successor_is_issued_then_expires() {
        let key = SigningKey::generate();
        let now = at("2026-12-04T10:00:00Z");
        let credential = issue(&key, &alice("h"), now);
        assert_eq!(verify(&key, &alice("h"), &credential, now), Ok(()));
        // Replaced at the latest ROTATE_EVERY after it was issued, it still works then...
        let replaced = now + ROTATE_EVERY;
        assert_eq!(verify(&key, &alice("h"), &credential, replaced), Ok(()));
        // ...and never beyond its lifetime.
        assert!(matches!(
            verify(&key, &alice("h"), &credential, now + LIFETIME),
            Err(PullCredentialError::Expired { .. })
        ));
    }

    #[test]
    fn another_password_another_user_or_a_changed_expiry_are_refused() {
        let key = SigningKey::generate();
        let now = at("2026-12-04T10:00:00Z");
        let credential = issue(&key, &alice("h"), now);
        assert!(verify(&key, &alice("changed"), &credential, now).is_err());
        let bob = User {
            name: "bob".into(),
            ..alice("h")
        };
        assert!(verify(&key, &bob, &credential, now).is_err());
        let (expiry, mac) = credential[PREFIX.len()..].split_once('.').unwrap();
        let later: i64 = expiry.parse::<i64>().unwrap() + 86400;
        let stretched = format!("{PREFIX}{later}.{mac}");
        assert!(verify(&key, &alice("h"), &stretched, now).is_err());
        assert!(verify(&SigningKey::generate(), &alice("h"), &credential, now).is_err());
    }
}
