//! OpenSSH `known_hosts` text, as a Trigger's Secret carries it: the host keys berth
//! trusts for SSH remotes. berth never learns a key on first use: a host the text does
//! not name, or names with other keys, is refused.
//!
//! Understood: host patterns (`host`, `[host]:port`, `*`/`?` wildcards, `!negation`,
//! comma-separated lists), hashed names (`|1|salt|hash`, as `ssh-keyscan -H` writes),
//! and the `@revoked` marker. `@cert-authority` lines are skipped: berth checks plain
//! host keys only.

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use russh::keys::ssh_key::{Algorithm, PublicKey};

#[derive(Debug, thiserror::Error)]
#[error("known_hosts line {line}: {detail}")]
pub struct KnownHostsError {
    pub line: usize,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    None,
    Revoked,
    CertAuthority,
}

#[derive(Debug, Clone)]
struct Entry {
    line: usize,
    marker: Marker,
    patterns: String,
    key: PublicKey,
}

/// The parsed text.
#[derive(Debug, Clone, Default)]
pub struct KnownHosts {
    entries: Vec<Entry>,
}

/// What the text says of a host's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Trusted,
    /// No line names the host.
    Unknown,
    /// Lines name the host, with other keys (these lines).
    Mismatch(Vec<usize>),
    /// The key is marked `@revoked` (on this line).
    Revoked(usize),
}

impl KnownHosts {
    pub fn parse(text: &str) -> Result<KnownHosts, KnownHostsError> {
        let mut entries = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let raw = raw.trim();
            if raw.is_empty() || raw.starts_with('#') {
                continue;
            }
            let mut fields = raw.split_whitespace();
            let mut first = fields.next().unwrap_or_default();
            let marker = match first {
                "@revoked" => Marker::Revoked,
                "@cert-authority" => Marker::CertAuthority,
                m if m.starts_with('@') => {
                    return Err(KnownHostsError {
                        line,
                        detail: format!("unknown marker {m}"),
                    });
                }
                _ => Marker::None,
            };
            if marker != Marker::None {
                first = fields.next().unwrap_or_default();
            }
            let (Some(_kind), Some(encoded)) = (fields.next(), fields.next()) else {
                return Err(KnownHostsError {
                    line,
                    detail: "expected `hosts key-type base64-key`".into(),
                });
            };
            let key =
                russh::keys::parse_public_key_base64(encoded).map_err(|e| KnownHostsError {
                    line,
                    detail: format!("the key does not parse: {e}"),
                })?;
            entries.push(Entry {
                line,
                marker,
                patterns: first.to_string(),
                key,
            });
        }
        Ok(KnownHosts { entries })
    }

    /// The name known_hosts lists a host by: `host`, or `[host]:port` off port 22
    /// (lower case, as ssh looks it up).
    fn name(host: &str, port: u16) -> String {
        let host = host.to_lowercase();
        if port == 22 {
            host
        } else {
            format!("[{host}]:{port}")
        }
    }

    fn naming<'a>(&'a self, host: &str, port: u16) -> impl Iterator<Item = &'a Entry> {
        let name = Self::name(host, port);
        self.entries
            .iter()
            .filter(move |e| e.marker != Marker::CertAuthority && matches(&e.patterns, &name))
    }

    /// Whether `key` is the key of `host:port`.
    pub fn check(&self, host: &str, port: u16, key: &PublicKey) -> Verdict {
        let mut others = Vec::new();
        let mut trusted = false;
        for entry in self.naming(host, port) {
            let same = entry.key.key_data() == key.key_data();
            match (entry.marker, same) {
                (Marker::Revoked, true) => return Verdict::Revoked(entry.line),
                (Marker::Revoked, false) => {}
                (_, true) => trusted = true,
                (_, false) => others.push(entry.line),
            }
        }
        // A revoked key anywhere in the file is refused for every host.
        if let Some(e) = self
            .entries
            .iter()
            .find(|e| e.marker == Marker::Revoked && e.key.key_data() == key.key_data())
        {
            return Verdict::Revoked(e.line);
        }
        match (trusted, others.is_empty()) {
            (true, _) => Verdict::Trusted,
            (false, true) => Verdict::Unknown,
            (false, false) => Verdict::Mismatch(others),
        }
    }

    /// The host key algorithms to offer `host:port`, those of its listed keys first:
    /// a server holding several keys then shows the one berth can check.
    pub fn preferred_algorithms(&self, host: &str, port: u16, all: &[Algorithm]) -> Vec<Algorithm> {
        let listed: Vec<Algorithm> = self
            .naming(host, port)
            .filter(|e| e.marker == Marker::None)
            .map(|e| e.key.algorithm())
            .collect();
        let known = |a: &Algorithm| {
            listed.iter().any(|l| match (l, a) {
                (Algorithm::Rsa { .. }, Algorithm::Rsa { .. }) => true,
                (l, a) => l == a,
            })
        };
        let (mut first, rest): (Vec<_>, Vec<_>) = all.iter().cloned().partition(known);
        first.extend(rest);
        first
    }
}

/// Whether a comma-separated pattern list matches `name`: one positive pattern
/// matches and no negated one does.
fn matches(patterns: &str, name: &str) -> bool {
    let mut positive = false;
    for pattern in patterns.split(',') {
        if let Some(negated) = pattern.strip_prefix('!') {
            if wildcard(negated, name) {
                return false;
            }
        } else if pattern.starts_with("|1|") {
            positive |= hashed(pattern, name);
        } else {
            positive |= wildcard(pattern, name);
        }
    }
    positive
}

/// `|1|base64(salt)|base64(HMAC-SHA1(salt, name))`.
fn hashed(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.trim_start_matches("|1|").split('|');
    let b64 = base64::engine::general_purpose::STANDARD;
    let (Some(Ok(salt)), Some(Ok(hash))) = (
        parts.next().map(|s| b64.decode(s)),
        parts.next().map(|h| b64.decode(h)),
    ) else {
        return false;
    };
    let Ok(mac) = Hmac::<sha1::Sha1>::new_from_slice(&salt) else {
        return false;
    };
    mac.chain_update(name.as_bytes())
        .verify_slice(&hash)
        .is_ok()
}

/// `*` (any run) and `?` (any one character), case-insensitively, as ssh does.
fn wildcard(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    let n: Vec<char> = name.to_lowercase().chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    // Two real ed25519 public keys (ssh-keygen -t ed25519).
    const A: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";
    const B: &str = "AAAAC3NzaC1lZDI1NTE5AAAAICL+Qs42FTKzSRSyOO4CfhOSf8zBxlRsnB92PjiJCDH5";

    fn key(encoded: &str) -> PublicKey {
        russh::keys::parse_public_key_base64(encoded).unwrap()
    }

    #[test]
    fn a_listed_key_is_trusted_and_another_key_for_the_host_is_a_mismatch() {
        let hosts = KnownHosts::parse(&format!(
            "# comment\n\ngit.example.com,10.0.0.1 ssh-ed25519 {A}\n[git.example.com]:2222 ssh-ed25519 {B} a comment\n"
        ))
        .unwrap();
        assert_eq!(
            hosts.check("git.example.com", 22, &key(A)),
            Verdict::Trusted
        );
        assert_eq!(hosts.check("10.0.0.1", 22, &key(A)), Verdict::Trusted);
        assert_eq!(
            hosts.check("git.example.com", 22, &key(B)),
            Verdict::Mismatch(vec![3])
        );
        assert_eq!(
            hosts.check("git.example.com", 2222, &key(B)),
            Verdict::Trusted
        );
        assert_eq!(
            hosts.check("git.example.com", 2222, &key(A)),
            Verdict::Mismatch(vec![4])
        );
        assert_eq!(
            hosts.check("other.example.com", 22, &key(A)),
            Verdict::Unknown
        );
    }

    #[test]
    fn wildcards_negation_hashed_names_and_revoked_keys() {
        // `ssh-keygen -H` of "git.example.com" with this salt.
        let salt = [7u8; 20];
        let mac = Hmac::<sha1::Sha1>::new_from_slice(&salt)
            .unwrap()
            .chain_update(b"git.example.com")
            .finalize()
            .into_bytes();
        let b64 = base64::engine::general_purpose::STANDARD;
        let hashed = format!("|1|{}|{}", b64.encode(salt), b64.encode(mac));
        let hosts = KnownHosts::parse(&format!(
            "{hashed} ssh-ed25519 {A}\n*.corp.example,!bad.corp.example ssh-ed25519 {B}\n@revoked * ssh-ed25519 {B}\n"
        ))
        .unwrap();
        assert_eq!(
            hosts.check("git.example.com", 22, &key(A)),
            Verdict::Trusted
        );
        assert_eq!(
            hosts.check("GIT.example.com", 22, &key(A)),
            Verdict::Trusted
        );
        assert_eq!(
            hosts.check("git.example.org", 22, &key(A)),
            Verdict::Unknown
        );
        assert_eq!(
            hosts.check("bad.corp.example", 22, &key(A)),
            Verdict::Unknown
        );
        // B is listed for *.corp.example but revoked everywhere.
        assert_eq!(
            hosts.check("a.corp.example", 22, &key(B)),
            Verdict::Revoked(3)
        );
    }

    #[test]
    fn malformed_lines_are_refused_with_their_number() {
        let e = KnownHosts::parse(&format!("ok ssh-ed25519 {A}\njust-a-host\n")).unwrap_err();
        assert_eq!(e.line, 2);
        let e = KnownHosts::parse("h ssh-ed25519 not-base64!\n").unwrap_err();
        assert!(e.detail.contains("does not parse"), "{e}");
    }

    #[test]
    fn the_listed_algorithm_is_offered_first() {
        let hosts = KnownHosts::parse(&format!("h ssh-ed25519 {A}\n")).unwrap();
        let all = [Algorithm::Rsa { hash: None }, Algorithm::Ed25519];
        assert_eq!(
            hosts.preferred_algorithms("h", 22, &all),
            [Algorithm::Ed25519, Algorithm::Rsa { hash: None }]
        );
    }
}
