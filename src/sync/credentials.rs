//! Credentials for a remote from a Secret's data, in the two shapes users have:
//! `kubernetes.io/dockerconfigjson` (what `kubectl create secret docker-registry` and
//! `docker login` produce, used as is) and `username`/`password` keys
//! (`kubernetes.io/basic-auth`, or Opaque). Works on the data alone, so the operator
//! (Secrets from the API) and standalone mode (Secrets from the config folder) share it.

use std::collections::BTreeMap;

use base64::Engine as _;

use super::client::Credentials;

pub const DOCKER_CONFIG_JSON: &str = "kubernetes.io/dockerconfigjson";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    #[error("its .dockerconfigjson is not valid JSON: {0}")]
    DockerConfig(String),
    #[error("its .dockerconfigjson has no entry for {0}")]
    NoEntry(String),
    #[error("the entry for {0} has neither username/password nor auth")]
    EmptyEntry(String),
    #[error("it has no {0:?} key (expected username and password, or .dockerconfigjson)")]
    MissingKey(&'static str),
    #[error("key {0:?} is not UTF-8")]
    NotUtf8(String),
}

/// The host (with port) of a registry URL, as docker config files key their entries.
pub fn registry_host(url: &str) -> String {
    url::Url::parse(url)
        .ok()
        .and_then(|u| {
            let host = u.host_str()?.to_string();
            Some(match u.port() {
                Some(p) => format!("{host}:{p}"),
                None => host,
            })
        })
        .unwrap_or_else(|| url.to_string())
}

/// Credentials for `remote_url` from a Secret of `secret_type` with `data`.
pub fn from_secret_data(
    secret_type: Option<&str>,
    data: &BTreeMap<String, Vec<u8>>,
    remote_url: &str,
) -> Result<Credentials, CredentialsError> {
    let text = |key: &str| -> Result<Option<String>, CredentialsError> {
        data.get(key)
            .map(|v| {
                String::from_utf8(v.clone()).map_err(|_| CredentialsError::NotUtf8(key.into()))
            })
            .transpose()
    };
    if secret_type == Some(DOCKER_CONFIG_JSON) || data.contains_key(".dockerconfigjson") {
        let json =
            text(".dockerconfigjson")?.ok_or(CredentialsError::MissingKey(".dockerconfigjson"))?;
        return from_docker_config(&json, remote_url);
    }
    let username = text("username")?.ok_or(CredentialsError::MissingKey("username"))?;
    let password = text("password")?.ok_or(CredentialsError::MissingKey("password"))?;
    Ok(Credentials { username, password })
}

/// The entry of a docker config file for the remote's host (keys may be bare hosts or URLs).
pub fn from_docker_config(json: &str, remote_url: &str) -> Result<Credentials, CredentialsError> {
    #[derive(serde::Deserialize)]
    struct Config {
        #[serde(default)]
        auths: BTreeMap<String, Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        username: Option<String>,
        password: Option<String>,
        auth: Option<String>,
    }
    let config: Config =
        serde_json::from_str(json).map_err(|e| CredentialsError::DockerConfig(e.to_string()))?;
    let host = registry_host(remote_url);
    let (key, entry) = config
        .auths
        .iter()
        .find(|(k, _)| registry_host(k) == host || k.as_str() == host)
        .ok_or_else(|| CredentialsError::NoEntry(host.clone()))?;
    if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
        return Ok(Credentials {
            username: u.clone(),
            password: p.clone(),
        });
    }
    let decoded = entry
        .auth
        .as_deref()
        .and_then(|a| {
            base64::engine::general_purpose::STANDARD
                .decode(a.trim())
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| CredentialsError::EmptyEntry(key.clone()))?;
    let (username, password) = decoded
        .split_once(':')
        .ok_or_else(|| CredentialsError::EmptyEntry(key.clone()))?;
    Ok(Credentials {
        username: username.into(),
        password: password.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_entries_are_found_by_host_and_port() {
        let json = r#"{"auths":{"https://other.example.com":{"auth":"eDp5"},"127.0.0.1:5001":{"auth":"YWxpY2U6czNjcjN0"}}}"#;
        let c = from_docker_config(json, "http://127.0.0.1:5001").unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("alice", "s3cr3t")
        );
        let c = from_docker_config(json, "https://other.example.com").unwrap();
        assert_eq!(c.username, "x");
        assert_eq!(
            from_docker_config(json, "http://127.0.0.1:5002"),
            Err(CredentialsError::NoEntry("127.0.0.1:5002".into()))
        );
    }

    #[test]
    fn basic_auth_secrets_need_both_keys() {
        let mut data = BTreeMap::new();
        data.insert("username".to_string(), b"bob".to_vec());
        assert_eq!(
            from_secret_data(Some("kubernetes.io/basic-auth"), &data, "http://x"),
            Err(CredentialsError::MissingKey("password"))
        );
        data.insert("password".to_string(), b"pw".to_vec());
        assert_eq!(
            from_secret_data(None, &data, "http://x").unwrap().password,
            "pw"
        );
    }
}
