use std::fmt;
use std::str::FromStr;

/// Longest repository name berth accepts. Clients limit `host/name` to 255 characters,
/// so a longer name could never be pulled anyway.
pub const MAX_NAME_LEN: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("repository name is empty")]
    Empty,
    #[error("repository name is longer than {MAX_NAME_LEN} characters")]
    TooLong,
    #[error(
        "repository name {name:?} is invalid: path component {component:?} must be lowercase letters and digits, separated by '.', '_', '__' or dashes"
    )]
    BadComponent { name: String, component: String },
}

/// A repository name such as `library/nginx` or `team-a/tools/builder`, validated
/// against the spec's grammar:
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepositoryName(Box<str>);

impl RepositoryName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first path component: the registry namespace (organisation) the repository lives in.
    pub fn namespace(&self) -> &str {
        self.0.split('/').next().unwrap_or(&self.0)
    }
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: one '.', one '_', exactly '__', or any number of '-'.
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || i >= b.len() || !alnum(b[i]) {
            return false;
        }
    }
    true
}

impl FromStr for RepositoryName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong);
        }
        for component in s.split('/') {
            if !valid_component(component) {
                return Err(NameError::BadComponent {
                    name: s.to_string(),
                    component: component.to_string(),
                });
            }
        }
        Ok(RepositoryName(s.into()))
    }
}

impl fmt::Display for RepositoryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RepositoryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RepositoryName({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_names_from_the_spec_grammar() {
        for ok in [
            "a",
            "library/nginx",
            "team-a/tools/builder",
            "a.b_c__d---e/f0",
            "conformance/test",
        ] {
            assert!(ok.parse::<RepositoryName>().is_ok(), "{ok:?} was rejected");
        }
    }

    #[test]
    fn rejects_traversal_case_and_empty_segments() {
        for bad in [
            "",
            "..",
            "a/../b",
            "a/./b",
            "Upper/case",
            "a//b",
            "/a",
            "a/",
            "a___b",
            "a_.b",
            "-a",
            "a-",
            "a%2e%2e",
            "a b",
            &"a".repeat(256),
        ] {
            assert!(
                bad.parse::<RepositoryName>().is_err(),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn namespace_is_first_component() {
        let n: RepositoryName = "team-a/tools/builder".parse().unwrap();
        assert_eq!(n.namespace(), "team-a");
    }
}
