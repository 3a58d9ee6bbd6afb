//! `berth login-command`: a ready `docker login` line with a credential derived for
//! one user, long-lived or temporary, so nobody copies the user's own password around.

use std::time::Duration;

use jiff::Timestamp;

use super::credentials::Verifier;
use super::key::SigningKey;
use super::users::User;

/// The credential and when it stops working (never, for a long-lived one).
pub fn credential(
    key: &SigningKey,
    user: &User,
    temporary: Option<Duration>,
) -> (String, Option<Timestamp>) {
    let verifier = Verifier::new(key.clone());
    match temporary {
        None => (verifier.long_lived(user), None),
        Some(valid_for) => {
            let until = Timestamp::now()
                + jiff::SignedDuration::try_from(valid_for).unwrap_or(jiff::SignedDuration::MAX);
            (verifier.temporary(user, until), Some(until))
        }
    }
}

/// `docker login -u USER -p CREDENTIAL REGISTRY`.
pub fn docker_login_line(registry: &str, user: &str, credential: &str) -> String {
    format!("docker login -u {user} -p {credential} {registry}")
}
