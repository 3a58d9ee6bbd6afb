//! What a trigger matches: the tags that fire it, the host names that mean "this
//! registry" in a workload's image, and the containers it updates.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::api::{ImageReference, TagMatch, TagMatchMode};

/// Which pushed tags fire a trigger, compiled once.
#[derive(Debug, Clone)]
pub enum TagFilter {
    All,
    List(Vec<String>),
    Regex(regex::Regex),
}

impl TagFilter {
    /// The filter of `spec.tags`; a regular expression must match the whole tag.
    pub fn new(tags: &TagMatch) -> Result<Self, regex::Error> {
        Ok(match tags.mode {
            TagMatchMode::All => TagFilter::All,
            TagMatchMode::List => TagFilter::List(tags.names.clone().unwrap_or_default()),
            TagMatchMode::Regex => {
                let source = tags.regex.as_deref().unwrap_or("$^");
                TagFilter::Regex(regex::Regex::new(&format!("^(?:{source})$"))?)
            }
        })
    }

    pub fn matches(&self, tag: &str) -> bool {
        match self {
            TagFilter::All => true,
            TagFilter::List(names) => names.iter().any(|n| n == tag),
            TagFilter::Regex(re) => re.is_match(tag),
        }
    }
}

/// The host names (`host[:port]`) under which this registry appears in workload images,
/// e.g. `berth.berth-system.svc:5000` or `registry.example.com`. A trigger without a
/// container name updates the containers whose image names one of them; the first is
/// written into images that name none of them yet.
#[derive(Debug, Clone, Default)]
pub struct RegistryHosts(Arc<[String]>);

impl RegistryHosts {
    pub fn new(hosts: impl IntoIterator<Item = String>) -> Self {
        let mut unique: Vec<String> = Vec::new();
        for host in hosts {
            let host = host.trim().to_ascii_lowercase();
            if !host.is_empty() && !unique.contains(&host) {
                unique.push(host);
            }
        }
        RegistryHosts(unique.into())
    }

    /// For a registry listening on `addr` with no host names given: the address itself,
    /// and `localhost:PORT` and `127.0.0.1:PORT` when it listens on loopback or on every
    /// interface (an unspecified address never appears in an image, so it comes last).
    pub fn for_listen_address(addr: SocketAddr) -> Self {
        let port = addr.port();
        let ip = addr.ip();
        let mut hosts = Vec::new();
        if !ip.is_unspecified() {
            hosts.push(addr.to_string());
        }
        if ip.is_loopback() || ip.is_unspecified() {
            hosts.push(format!("localhost:{port}"));
            hosts.push(format!("127.0.0.1:{port}"));
        }
        if ip.is_unspecified() {
            hosts.push(addr.to_string());
        }
        RegistryHosts::new(hosts)
    }

    pub fn contains(&self, host: &str) -> bool {
        self.0.iter().any(|h| h.eq_ignore_ascii_case(host))
    }

    /// The host written into an image that does not name one of ours yet.
    pub fn primary(&self) -> &str {
        self.0.first().map_or("localhost:5000", String::as_str)
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

/// An image reference as Kubernetes and container runtimes read it:
/// `[host/]path[:tag][@digest]`, where the first component is a host only when it has
/// a `.` or a `:`, or is `localhost` (otherwise `team/app` would be Docker Hub's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageName<'a> {
    pub host: Option<&'a str>,
    pub path: &'a str,
    pub tag: Option<&'a str>,
    pub digest: Option<&'a str>,
}

pub fn parse_image(image: &str) -> ImageName<'_> {
    let (rest, digest) = match image.rsplit_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (image, None),
    };
    let (host, name) = match rest.split_once('/') {
        Some((first, name))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (Some(first), name)
        }
        _ => (None, rest),
    };
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    let (path, tag) = match name[last_slash..].rfind(':') {
        Some(i) => (&name[..last_slash + i], Some(&name[last_slash + i + 1..])),
        None => (name, None),
    };
    ImageName {
        host,
        path,
        tag,
        digest,
    }
}

/// The image a trigger writes: `host/repository:tag@digest`, or `host/repository:tag`.
pub fn image_for(
    host: &str,
    repository: &str,
    tag: &str,
    digest: &str,
    reference: ImageReference,
) -> String {
    match reference {
        ImageReference::Digest => format!("{host}/{repository}:{tag}@{digest}"),
        ImageReference::Tag => format!("{host}/{repository}:{tag}"),
    }
}

/// A container a trigger updates, and the registry host to write into its image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selected {
    pub container: String,
    pub image: String,
    pub host: String,
}

/// The containers (name, image) a trigger updates: the named one, or every one whose
/// image is `repository` on one of `hosts`. An image already on one of our hosts keeps
/// its host; any other image gets the primary one. `Err` says why there is none.
pub fn select_containers(
    containers: &[(String, String)],
    container: Option<&str>,
    repository: &str,
    hosts: &RegistryHosts,
) -> Result<Vec<Selected>, String> {
    let host_of = |image: &str| match parse_image(image).host {
        Some(h) if hosts.contains(h) => h.to_string(),
        _ => hosts.primary().to_string(),
    };
    let selected: Vec<Selected> = containers
        .iter()
        .filter(|(name, image)| match container {
            Some(wanted) => name == wanted,
            None => {
                let parsed = parse_image(image);
                parsed.path == repository && parsed.host.is_some_and(|h| hosts.contains(h))
            }
        })
        .map(|(name, image)| Selected {
            container: name.clone(),
            image: image.clone(),
            host: host_of(image),
        })
        .collect();
    if selected.is_empty() {
        return Err(match container {
            Some(wanted) => format!("it has no container named {wanted:?}"),
            None => format!(
                "none of its containers uses {repository} on this registry ({})",
                hosts.as_slice().join(", ")
            ),
        });
    }
    Ok(selected)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(mode: TagMatchMode, names: Option<&[&str]>, regex: Option<&str>) -> TagMatch {
        TagMatch {
            mode,
            names: names.map(|n| n.iter().map(|s| s.to_string()).collect()),
            regex: regex.map(str::to_string),
        }
    }

    #[test]
    fn a_regex_must_match_the_whole_tag() {
        let filter = TagFilter::new(&tags(TagMatchMode::Regex, None, Some(r"v[0-9]+"))).unwrap();
        assert!(filter.matches("v12"));
        assert!(!filter.matches("v12-rc1"), "anchored at the end");
        assert!(!filter.matches("dev-v12"), "anchored at the start");
        let alternation = TagFilter::new(&tags(TagMatchMode::Regex, None, Some("a|b"))).unwrap();
        assert!(!alternation.matches("ab"), "alternatives are grouped");
        assert!(TagFilter::new(&tags(TagMatchMode::Regex, None, Some("("))).is_err());
    }

    #[test]
    fn list_and_all_filters() {
        let list =
            TagFilter::new(&tags(TagMatchMode::List, Some(&["stable", "v1"]), None)).unwrap();
        assert!(list.matches("stable") && list.matches("v1") && !list.matches("v2"));
        assert!(
            TagFilter::new(&tags(TagMatchMode::All, None, None))
                .unwrap()
                .matches("anything")
        );
    }

    #[test]
    fn image_references_split_like_the_runtimes_do() {
        let parsed = parse_image("registry.test:5000/team-a/web:v1@sha256:abc");
        assert_eq!(
            parsed,
            ImageName {
                host: Some("registry.test:5000"),
                path: "team-a/web",
                tag: Some("v1"),
                digest: Some("sha256:abc"),
            }
        );
        assert_eq!(parse_image("team-a/web:v1").host, None, "Docker Hub");
        assert_eq!(parse_image("localhost/web").host, Some("localhost"));
        let no_tag = parse_image("127.0.0.1:5000/web");
        assert_eq!((no_tag.path, no_tag.tag), ("web", None));
        assert_eq!(parse_image("nginx").path, "nginx");
    }

    #[test]
    fn default_hosts_follow_the_listen_address() {
        let loopback = RegistryHosts::for_listen_address("127.0.0.1:5000".parse().unwrap());
        assert_eq!(loopback.as_slice(), ["127.0.0.1:5000", "localhost:5000"]);
        let any = RegistryHosts::for_listen_address("0.0.0.0:5000".parse().unwrap());
        assert_eq!(any.primary(), "localhost:5000");
        assert!(any.contains("127.0.0.1:5000"));
        let explicit = RegistryHosts::new(["Berth.Test".to_string(), "berth.test".to_string()]);
        assert_eq!(explicit.as_slice(), ["berth.test"]);
    }

    #[test]
    fn containers_are_selected_by_name_or_by_repository_on_our_hosts() {
        let hosts = RegistryHosts::new(["berth.test".to_string()]);
        let containers = vec![
            ("web".to_string(), "berth.test/team-a/web:v1".to_string()),
            ("proxy".to_string(), "docker.io/team-a/web:v1".to_string()),
            ("side".to_string(), "berth.test/team-a/side:v1".to_string()),
            ("placeholder".to_string(), "nginx".to_string()),
        ];
        let by_repo = select_containers(&containers, None, "team-a/web", &hosts).unwrap();
        assert_eq!(
            by_repo.len(),
            1,
            "another registry's team-a/web is not ours"
        );
        assert_eq!(by_repo[0].container, "web");
        let named = select_containers(&containers, Some("placeholder"), "team-a/web", &hosts);
        assert_eq!(
            named.unwrap()[0].host,
            "berth.test",
            "gets our primary host"
        );
        let missing = select_containers(&containers, Some("db"), "team-a/web", &hosts);
        assert!(missing.unwrap_err().contains("\"db\""));
        let none = select_containers(&containers, None, "team-a/api", &hosts);
        assert!(none.unwrap_err().contains("team-a/api"));
    }

    #[test]
    fn images_pin_the_digest_by_default() {
        let digest = "sha256:0123";
        assert_eq!(
            image_for("h:1", "a/b", "v1", digest, ImageReference::Digest),
            "h:1/a/b:v1@sha256:0123"
        );
        assert_eq!(
            image_for("h:1", "a/b", "v1", digest, ImageReference::Tag),
            "h:1/a/b:v1"
        );
    }
}
