//! Every object key berth writes, in one place.
//!
//! ```text
//! blobs/<alg>/<hex>                                    content (blobs and manifests), shared by all repositories
//! repositories/<repo>/blobs/<alg>/<hex>                link: this repository may serve that blob
//! repositories/<repo>/manifests/<alg>/<hex>            link: a manifest revision (JSON ManifestLink)
//! repositories/<repo>/tags/<tag>                       tag pointer (JSON TagLink), replaced atomically
//! repositories/<repo>/referrers/<alg>/<hex>/<alg>-<hex> descriptor of a manifest whose subject is <alg>:<hex>
//! blob-index/<alg>/<hex>                              where a blob committed on S3 lives (JSON BlobIndex: data key, size);
//!                                                      written once, create-only, after its bytes were verified
//! blob-data/<id>/blob                                  the bytes of upload session <id>, completed in place (S3 multipart)
//! blob-data/<id>/<offset>-<write>                      a chunk under 5 MiB staged by session <id> (too small for a part)
//! uploads/<id>/state                                   upload session (JSON UploadState)
//! uploads/<id>/parts/<offset>-<write>                  the bytes of one PATCH/PUT, starting at <offset>; <write>
//!                                                      is unique per request, so racing requests never share a part
//! sync/<rule>/since                                    when a SyncRule was first seen (standalone)
//! pulls/<repo>/<replica>                               pull counts per manifest digest, written by one replica only (JSON PullCounts)
//! auth/signing-key                                     the key that signs tokens, shared by every replica (created once)
//! events/<micros>-<writer>-<seq>                       one push announced to the other replicas (JSON PushRecord),
//!                                                      create-only; <micros> orders the log, pruned by the leader
//! leader/lease                                         which `berth serve` replica leads (JSON BucketLease), If-Match
//! gc/sweep                                             the garbage collection running or last run (JSON SweepMarker),
//!                                                      If-Match; never deleted (see `sweep_marker.rs`)
//! readiness-probe/                                     never written: listed by /readyz to prove the store answers
//! ```
//!
//! Only `blobs/` and `repositories/` hold registry content: listings, the catalog and
//! garbage collection never look at `auth/`, `events/`, `leader/` or `gc/`.
//!
//! `<repo>` is the repository name with `/` written as `+` (a character names cannot
//! contain), so the catalog is one delimited listing of `repositories/` rather than a
//! walk over every object, and a repository's keys never nest inside another's.

use object_store::path::Path;

use crate::oci::{Digest, RepositoryName, Tag};

const REPO_SEPARATOR: char = '+';

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key<'a> {
    Blob(&'a Digest),
    /// Where a blob committed in place lives.
    BlobIndex(&'a Digest),
    /// An upload session's multipart object.
    BlobData(&'a str),
    /// A small chunk an upload session staged: session, offset, write id.
    BlobStaged(&'a str, u64, &'a str),
    /// Every object an upload session wrote in place.
    BlobDataDir(&'a str),
    /// Every in-place object.
    BlobDataAll,
    BlobIndexAll,
    BlobLink(&'a RepositoryName, &'a Digest),
    ManifestLink(&'a RepositoryName, &'a Digest),
    ManifestLinks(&'a RepositoryName),
    BlobLinks(&'a RepositoryName),
    ReferrersAll(&'a RepositoryName),
    Tag(&'a RepositoryName, &'a Tag),
    Tags(&'a RepositoryName),
    Referrer {
        repo: &'a RepositoryName,
        subject: &'a Digest,
        referrer: &'a Digest,
    },
    Referrers(&'a RepositoryName, &'a Digest),
    Repository(&'a RepositoryName),
    Repositories,
    UploadState(&'a str),
    /// A part: session, offset, and the id of the request that wrote it (empty for
    /// parts written before parts had one).
    UploadPart(&'a str, u64, &'a str),
    UploadParts(&'a str),
    Upload(&'a str),
    Uploads,
    SyncSince(&'a str),
    /// One replica's pull counts of a repository.
    PullCounts(&'a RepositoryName, &'a str),
    /// Every replica's pull counts of a repository.
    PullCountsAll(&'a RepositoryName),
    SigningKey,
    /// One push record: its time (microseconds since the epoch), writer and sequence.
    PushRecord(i64, &'a str, u64),
    PushRecords,
    LeaderLease,
    SweepMarker,
    /// An empty prefix whose listing proves the store answers (see `probe.rs`).
    Probe,
}

/// Digits of a push record's time, so keys sort as their times do.
const RECORD_TIME_DIGITS: usize = 20;

fn repo_dir(repo: &RepositoryName) -> String {
    format!("repositories/{}", repo.as_str().replace('/', "+"))
}

impl Key<'_> {
    pub fn path(&self) -> Path {
        let s = match self {
            Key::Blob(d) => format!("blobs/{}/{}", d.algorithm(), d.hex()),
            Key::BlobIndex(d) => format!("blob-index/{}/{}", d.algorithm(), d.hex()),
            Key::BlobData(id) => format!("blob-data/{id}/blob"),
            Key::BlobStaged(id, offset, write) => format!("blob-data/{id}/{offset:020}-{write}"),
            Key::BlobDataDir(id) => format!("blob-data/{id}"),
            Key::BlobDataAll => "blob-data".to_string(),
            Key::BlobIndexAll => "blob-index".to_string(),
            Key::BlobLink(r, d) => format!("{}/blobs/{}/{}", repo_dir(r), d.algorithm(), d.hex()),
            Key::ManifestLink(r, d) => {
                format!("{}/manifests/{}/{}", repo_dir(r), d.algorithm(), d.hex())
            }
            Key::ManifestLinks(r) => format!("{}/manifests", repo_dir(r)),
            Key::BlobLinks(r) => format!("{}/blobs", repo_dir(r)),
            Key::ReferrersAll(r) => format!("{}/referrers", repo_dir(r)),
            Key::Tag(r, t) => format!("{}/tags/{}", repo_dir(r), t.as_str()),
            Key::Tags(r) => format!("{}/tags", repo_dir(r)),
            Key::Referrer {
                repo,
                subject,
                referrer,
            } => format!(
                "{}/referrers/{}/{}/{}-{}",
                repo_dir(repo),
                subject.algorithm(),
                subject.hex(),
                referrer.algorithm(),
                referrer.hex()
            ),
            Key::Referrers(r, s) => {
                format!("{}/referrers/{}/{}", repo_dir(r), s.algorithm(), s.hex())
            }
            Key::Repository(r) => repo_dir(r),
            Key::Repositories => "repositories".to_string(),
            Key::UploadState(id) => format!("uploads/{id}/state"),
            // Zero-padded so parts list in byte order.
            Key::UploadPart(id, offset, "") => format!("uploads/{id}/parts/{offset:020}"),
            Key::UploadPart(id, offset, write) => {
                format!("uploads/{id}/parts/{offset:020}-{write}")
            }
            Key::UploadParts(id) => format!("uploads/{id}/parts"),
            Key::Upload(id) => format!("uploads/{id}"),
            Key::Uploads => "uploads".to_string(),
            Key::SyncSince(rule) => format!("sync/{rule}/since"),
            Key::PullCounts(r, replica) => {
                format!("pulls/{}/{replica}", r.as_str().replace('/', "+"))
            }
            Key::PullCountsAll(r) => format!("pulls/{}", r.as_str().replace('/', "+")),
            Key::SigningKey => "auth/signing-key".to_string(),
            Key::PushRecord(micros, writer, seq) => {
                format!("events/{}-{writer}-{seq:08}", push_record_time(*micros))
            }
            Key::PushRecords => "events".to_string(),
            Key::LeaderLease => "leader/lease".to_string(),
            Key::SweepMarker => "gc/sweep".to_string(),
            Key::Probe => "readiness-probe".to_string(),
        };
        Path::from(s)
    }
}

/// The first part of a push record's name: its time, zero-padded to sort in order (a
/// time before 1970 counts as 1970). Also what a listing starts after.
pub fn push_record_time(micros: i64) -> String {
    format!("{:0width$}", micros.max(0), width = RECORD_TIME_DIGITS)
}

/// The time and writer in a push record's name (`<micros>-<writer>-<seq>`).
pub fn parse_push_record(name: &str) -> Option<(i64, &str)> {
    let (time, rest) = name.split_once('-')?;
    let (writer, _seq) = rest.rsplit_once('-')?;
    Some((time.parse().ok()?, writer))
}

/// Turns a directory name under `repositories/` back into the repository name.
pub fn repository_from_dir(dir: &str) -> Option<RepositoryName> {
    dir.replace(REPO_SEPARATOR, "/").parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_has_a_stable_path() {
        let repo: RepositoryName = "team-a/app".parse().unwrap();
        let tag: Tag = "v1".parse().unwrap();
        let d: Digest = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
        let s: Digest = format!("sha512:{}", "cd".repeat(64)).parse().unwrap();
        let cases = [
            (Key::Blob(&d), format!("blobs/sha256/{}", d.hex())),
            (
                Key::BlobLink(&repo, &d),
                format!("repositories/team-a+app/blobs/sha256/{}", d.hex()),
            ),
            (
                Key::ManifestLink(&repo, &d),
                format!("repositories/team-a+app/manifests/sha256/{}", d.hex()),
            ),
            (
                Key::Tag(&repo, &tag),
                "repositories/team-a+app/tags/v1".into(),
            ),
            (
                Key::Referrer {
                    repo: &repo,
                    subject: &s,
                    referrer: &d,
                },
                format!(
                    "repositories/team-a+app/referrers/sha512/{}/sha256-{}",
                    s.hex(),
                    d.hex()
                ),
            ),
            (Key::BlobIndex(&d), format!("blob-index/sha256/{}", d.hex())),
            (Key::BlobData("u1"), "blob-data/u1/blob".into()),
            (
                Key::BlobStaged("u1", 42, "w7"),
                "blob-data/u1/00000000000000000042-w7".into(),
            ),
            (
                Key::PullCounts(&repo, "berth-0"),
                "pulls/team-a+app/berth-0".into(),
            ),
            (
                Key::UploadPart("u1", 42, ""),
                "uploads/u1/parts/00000000000000000042".into(),
            ),
            (
                Key::UploadPart("u1", 42, "w7"),
                "uploads/u1/parts/00000000000000000042-w7".into(),
            ),
            (Key::SigningKey, "auth/signing-key".into()),
            (
                Key::PushRecord(1_700_000_000_000_000, "w1a2", 3),
                "events/00001700000000000000-w1a2-00000003".into(),
            ),
            (Key::LeaderLease, "leader/lease".into()),
            (Key::SweepMarker, "gc/sweep".into()),
        ];
        for (key, want) in cases {
            assert_eq!(key.path().as_ref(), want, "{key:?}");
        }
        assert_eq!(repository_from_dir("team-a+app"), Some(repo));
    }

    #[test]
    fn push_record_names_sort_by_time_and_give_back_their_writer() {
        let early = Key::PushRecord(999, "b", 0).path();
        let late = Key::PushRecord(1_000, "a", 0).path();
        assert!(early.as_ref() < late.as_ref());
        let name = late.filename().unwrap();
        assert_eq!(parse_push_record(name), Some((1_000, "a")));
        assert_eq!(parse_push_record("garbage"), None);
    }
}
