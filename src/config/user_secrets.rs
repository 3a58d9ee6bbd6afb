//! Users declared as Kubernetes Secrets labelled `berth.dev/user`, in the cluster or
//! as documents in the config folder: `username` (default: the Secret's name),
//! `passwordHash` (argon2) or `password` (plain text, hashed at once so it is never
//! held as is), and `admin: "true"` for administrators.

use k8s_openapi::api::core::v1::Secret;

use crate::auth::users::{User, UserError};

/// The label that makes a Secret a berth user.
pub const USER_LABEL: &str = "berth.dev/user";

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

/// Reads a user from its Secret.
pub fn user_from_secret(secret: &Secret) -> Result<User, UserError> {
    let name = field(secret, "username")?
        .or_else(|| secret.metadata.name.clone())
        .unwrap_or_default();
    let admin = field(secret, "admin")?.is_some_and(|v| v.trim() == "true");
    match (field(secret, "passwordHash")?, field(secret, "password")?) {
        (Some(hash), _) => User::with_hash(&name, &hash, admin),
        (None, Some(password)) => User::with_password(&name, &password, admin),
        (None, None) => {
            // The name is still checked first: it is the more basic mistake.
            if !crate::auth::users::valid_user_name(&name) {
                return Err(UserError::InvalidName(name));
            }
            Err(UserError::NoPassword)
        }
    }
}

/// Whether a Secret declares a berth user.
pub fn is_user_secret(secret: &Secret) -> bool {
    secret
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(USER_LABEL))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::passwords::verify_password;
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
        assert!(verify_password("correct horse", &user.password_hash));
        assert!(!verify_password("wrong", &user.password_hash));
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
