//! Bearer tokens: compact JWTs signed with HMAC-SHA256 by berth's own key, as the
//! Docker token specification describes them (`access` lists what was granted).
//! Only berth verifies them, so a symmetric key is enough.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use super::key::SigningKey;

pub const ISSUER: &str = "berth";

/// What a token grants on one resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceActions {
    #[serde(rename = "type")]
    pub resource_type: String,
    pub name: String,
    pub actions: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// Presented on registry requests.
    Access,
    /// Exchanged at the token endpoint for new access tokens.
    Refresh,
}

/// How the subject was authenticated, so a token is re-checked against the right source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Subject {
    Anonymous,
    User,
    ServiceAccount,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub nbf: i64,
    pub iat: i64,
    pub jti: String,
    #[serde(default)]
    pub access: Vec<ResourceActions>,
    pub kind: TokenKind,
    pub subject: Subject,
    /// For refresh tokens of users: a fingerprint of the password hash they were
    /// issued under, so changing the password revokes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pwf: Option<String>,
}

impl Claims {
    /// Whether the token grants `action` on the repository `name`.
    pub fn grants(&self, resource_type: &str, name: &str, action: &str) -> bool {
        self.access.iter().any(|a| {
            a.resource_type == resource_type
                && a.name == name
                && a.actions.iter().any(|x| x == action || x == "*")
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is malformed")]
    Malformed,
    #[error("the token's signature is not berth's")]
    BadSignature,
    #[error("the token expired; get a new one")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token was issued for service {0:?}, not this registry")]
    WrongAudience(String),
    #[error("a {0:?} token cannot be used here")]
    WrongKind(TokenKind),
}

const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

pub fn encode(key: &SigningKey, claims: &Claims) -> String {
    let header = URL_SAFE_NO_PAD.encode(HEADER);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialize"));
    let signing_input = format!("{header}.{payload}");
    let signature = URL_SAFE_NO_PAD.encode(key.sign_bytes(signing_input.as_bytes()));
    format!("{signing_input}.{signature}")
}

/// Verifies signature, audience, validity window and kind; returns the claims.
pub fn decode(
    key: &SigningKey,
    token: &str,
    audience: &str,
    kind: TokenKind,
    now: i64,
) -> Result<Claims, TokenError> {
    use subtle::ConstantTimeEq as _;
    let (signing_input, signature) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
    let (header, payload) = signing_input.split_once('.').ok_or(TokenError::Malformed)?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| TokenError::Malformed)?;
    let expected = key.sign_bytes(signing_input.as_bytes());
    if !bool::from(signature.ct_eq(&expected)) {
        return Err(TokenError::BadSignature);
    }
    // Only berth's own header is accepted: no algorithm negotiation to abuse.
    if URL_SAFE_NO_PAD.decode(header).ok().as_deref() != Some(HEADER.as_bytes()) {
        return Err(TokenError::Malformed);
    }
    let payload = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| TokenError::Malformed)?;
    let claims: Claims = serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
    if claims.iss != ISSUER {
        return Err(TokenError::Malformed);
    }
    if claims.aud != audience {
        return Err(TokenError::WrongAudience(claims.aud));
    }
    if now >= claims.exp {
        return Err(TokenError::Expired);
    }
    // A little leeway for clocks of replicas that disagree slightly.
    if now + 30 < claims.nbf {
        return Err(TokenError::NotYetValid);
    }
    if claims.kind != kind {
        return Err(TokenError::WrongKind(claims.kind));
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(now: i64) -> Claims {
        Claims {
            iss: ISSUER.into(),
            sub: "alice".into(),
            aud: "berth".into(),
            exp: now + 300,
            nbf: now,
            iat: now,
            jti: "1".into(),
            access: vec![ResourceActions {
                resource_type: "repository".into(),
                name: "team-a/web".into(),
                actions: vec!["pull".into()],
            }],
            kind: TokenKind::Access,
            subject: Subject::User,
            pwf: None,
        }
    }

    #[test]
    fn a_token_round_trips_and_grants_what_it_lists() {
        let key = SigningKey::generate();
        let token = encode(&key, &claims(1000));
        let back = decode(&key, &token, "berth", TokenKind::Access, 1100).unwrap();
        assert!(back.grants("repository", "team-a/web", "pull"));
        assert!(!back.grants("repository", "team-a/web", "push"));
        assert!(!back.grants("repository", "team-a/other", "pull"));
    }

    #[test]
    fn expired_forged_or_misdirected_tokens_are_refused() {
        let key = SigningKey::generate();
        let token = encode(&key, &claims(1000));
        assert_eq!(
            decode(&key, &token, "berth", TokenKind::Access, 1300),
            Err(TokenError::Expired)
        );
        assert_eq!(
            decode(
                &SigningKey::generate(),
                &token,
                "berth",
                TokenKind::Access,
                1100
            ),
            Err(TokenError::BadSignature)
        );
        assert!(matches!(
            decode(&key, &token, "other", TokenKind::Access, 1100),
            Err(TokenError::WrongAudience(_))
        ));
        assert_eq!(
            decode(&key, &token, "berth", TokenKind::Refresh, 1100),
            Err(TokenError::WrongKind(TokenKind::Access))
        );
        // A payload swapped under the same signature does not verify.
        let mut forged = claims(1000);
        forged.access[0].actions.push("push".into());
        let forged_payload = encode(&key, &forged);
        let parts: Vec<&str> = token.split('.').collect();
        let forged_parts: Vec<&str> = forged_payload.split('.').collect();
        let spliced = format!("{}.{}.{}", parts[0], forged_parts[1], parts[2]);
        assert_eq!(
            decode(&key, &spliced, "berth", TokenKind::Access, 1100),
            Err(TokenError::BadSignature)
        );
    }
}
