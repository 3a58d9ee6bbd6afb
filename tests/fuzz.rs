//! Generated-input tests for every parser that reads what a client (or an operator's
//! file) sends: 10,000 inputs per parser and run, both arbitrary text and near-valid
//! input (a valid value with one mutation). Each must answer with a value or a typed
//! error, never a panic; where a value prints back, parsing the print gives it again;
//! where the spec gives a grammar, the spec's regular expression is the oracle.

use std::path::Path;

use berth::auth::key::SigningKey;
use berth::auth::scope::Scope;
use berth::auth::token::{self, Claims, ResourceActions, Subject, TokenKind};
use berth::oci::{Algorithm, Digest, Manifest, Reference, RepositoryName, Tag};
use berth::registry::content_range::ChunkRange;
use berth::storage::{ByteRange, Hasher};
use proptest::prelude::*;
use proptest::test_runner::Config;

/// 10,000 cases per parser; `BERTH_FUZZ_CASES` asks for more (or fewer, to explore).
fn config() -> Config {
    let cases = std::env::var("BERTH_FUZZ_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(10_000);
    Config {
        cases,
        // Failures are reported with their minimal input; nothing is written to disk.
        failure_persistence: None,
        ..Config::default()
    }
}

/// The spec's grammar for repository names (distribution-spec, "Pulling manifests").
const NAME_GRAMMAR: &str =
    r"^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$";
const TAG_GRAMMAR: &str = r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$";
/// The digests berth accepts: the spec's registered algorithms with their exact lengths.
const DIGEST_GRAMMAR: &str = r"^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$";

/// Whether `s` is in `grammar`; each grammar is compiled once per run.
fn matches(grammar: &'static str, s: &str) -> bool {
    use std::collections::HashMap;
    use std::sync::{LazyLock, Mutex};
    static COMPILED: LazyLock<Mutex<HashMap<&'static str, regex::Regex>>> =
        LazyLock::new(Mutex::default);
    let mut compiled = COMPILED.lock().unwrap();
    compiled
        .entry(grammar)
        .or_insert_with(|| regex::Regex::new(grammar).unwrap())
        .is_match(s)
}

/// `valid` with the byte at `at` (modulo its length) replaced by `with`, or `with`
/// inserted when `insert`.
fn mutate(valid: &str, at: usize, with: char, insert: bool) -> String {
    let chars: Vec<char> = valid.chars().collect();
    if chars.is_empty() {
        return with.to_string();
    }
    let at = at % chars.len();
    let mut out = chars.clone();
    if insert {
        out.insert(at, with);
    } else {
        out[at] = with;
    }
    out.into_iter().collect()
}

/// Characters that matter to the grammars, and some that never should.
fn interesting_char() -> impl Strategy<Value = char> {
    prop_oneof![
        prop::sample::select(vec![
            '/', ':', '.', '_', '-', '@', ' ', '+', ',', '=', 'A', 'z', '0', '9', '\0', 'é', '\n',
        ]),
        any::<char>(),
    ]
}

fn valid_name() -> impl Strategy<Value = String> {
    r"[a-z0-9]{1,8}((\.|_|__|-{1,3})[a-z0-9]{1,8}){0,2}(/[a-z0-9]{1,8}((\.|_|__|-{1,3})[a-z0-9]{1,8}){0,2}){0,3}"
}

fn hex_of(len: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(b"0123456789abcdef".to_vec()), len)
        .prop_map(|b| String::from_utf8(b).unwrap())
}

fn valid_digest() -> impl Strategy<Value = String> {
    prop_oneof![
        hex_of(64).prop_map(|h| format!("sha256:{h}")),
        hex_of(128).prop_map(|h| format!("sha512:{h}")),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn repository_names_follow_the_spec_grammar_and_round_trip(
        text in prop_oneof![
            any::<String>(),
            valid_name(),
            (valid_name(), any::<usize>(), interesting_char(), any::<bool>())
                .prop_map(|(v, at, c, ins)| mutate(&v, at, c, ins)),
        ]
    ) {
        let parsed = text.parse::<RepositoryName>();
        let expected = text.len() <= 255 && matches(NAME_GRAMMAR, &text);
        prop_assert_eq!(parsed.is_ok(), expected, "{:?}", text);
        if let Ok(name) = parsed {
            prop_assert_eq!(name.to_string(), text.clone());
            prop_assert_eq!(name.to_string().parse::<RepositoryName>().unwrap(), name);
        }
    }

    #[test]
    fn tags_and_references_follow_the_spec_grammar_and_round_trip(
        text in prop_oneof![
            any::<String>(),
            TAG_GRAMMAR.trim_start_matches('^').trim_end_matches('$'),
            valid_digest(),
            (prop_oneof![valid_digest().boxed(), "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,20}".boxed()],
             any::<usize>(), interesting_char(), any::<bool>())
                .prop_map(|(v, at, c, ins)| mutate(&v, at, c, ins)),
        ]
    ) {
        let tag = text.parse::<Tag>();
        prop_assert_eq!(tag.is_ok(), matches(TAG_GRAMMAR, &text), "{:?}", text);
        let reference = text.parse::<Reference>();
        let expected = matches(TAG_GRAMMAR, &text) || matches(DIGEST_GRAMMAR, &text);
        prop_assert_eq!(reference.is_ok(), expected, "{:?}", text);
        if let Ok(reference) = reference {
            prop_assert_eq!(reference.to_string(), text.clone());
            prop_assert_eq!(reference.to_string().parse::<Reference>().unwrap(), reference);
        }
    }

    #[test]
    fn digests_are_exactly_the_supported_algorithms_with_canonical_hex(
        text in prop_oneof![
            any::<String>(),
            valid_digest(),
            "[a-z0-9+._-]{1,8}:[a-zA-Z0-9=_-]{1,140}",
            (valid_digest(), any::<usize>(), interesting_char(), any::<bool>())
                .prop_map(|(v, at, c, ins)| mutate(&v, at, c, ins)),
        ]
    ) {
        let parsed = text.parse::<Digest>();
        prop_assert_eq!(parsed.is_ok(), matches(DIGEST_GRAMMAR, &text), "{:?}", text);
        if let Ok(digest) = parsed {
            prop_assert_eq!(digest.to_string(), text.clone());
            prop_assert_eq!(digest.to_string().parse::<Digest>().unwrap(), digest);
        }
    }

    #[test]
    fn range_headers_parse_resolve_and_round_trip_without_overflow(
        text in prop_oneof![
            any::<String>(),
            (any::<u64>(), any::<u64>()).prop_map(|(a, b)| format!("bytes={a}-{b}")),
            any::<u64>().prop_map(|a| format!("bytes={a}-")),
            any::<u64>().prop_map(|n| format!("bytes=-{n}")),
            "bytes=[0-9]{0,30}-[0-9]{0,30}",
            "bytes=[0-9 ,+-]{0,12}",
        ],
        size in prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>(), 0u64..1000],
    ) {
        if let Ok(Some(range)) = ByteRange::parse(&text) {
            prop_assert_eq!(ByteRange::parse(&range.to_string()), Ok(Some(range)));
            if let Some(selected) = range.resolve(size) {
                prop_assert!(selected.start < selected.end, "{:?} of {}", range, size);
                prop_assert!(selected.end <= size, "{:?} of {}", range, size);
            }
        }
    }

    #[test]
    fn content_ranges_are_never_empty_or_wrapped_and_round_trip(
        text in prop_oneof![
            any::<String>(),
            (any::<u64>(), any::<u64>()).prop_map(|(a, b)| format!("{a}-{b}")),
            (any::<u64>(), any::<u64>()).prop_map(|(a, b)| format!("bytes {a}-{b}/*")),
            "[0-9]{0,30}-[0-9]{0,30}",
            "[0-9 +/*-]{0,12}",
        ]
    ) {
        if let Ok(range) = ChunkRange::parse(&text) {
            prop_assert!(range.start() <= range.end());
            prop_assert_ne!(range.len(), 0);
            prop_assert_eq!(range.len() - 1, range.end() - range.start());
            prop_assert_eq!(ChunkRange::parse(&range.to_string()), Ok(range));
        }
    }

    #[test]
    fn token_scopes_parse_and_round_trip(
        text in prop_oneof![
            any::<String>(),
            "(repository|registry|[a-z]{0,5}):[a-z0-9/:._-]{0,20}:[a-z*,]{0,15}",
            "[:,a-z]{0,12}",
        ]
    ) {
        if let Some(scope) = Scope::parse(&text) {
            prop_assert!(!scope.resource_type.is_empty() && !scope.name.is_empty());
            prop_assert!(scope.actions.iter().all(|a| !a.is_empty()));
            prop_assert_eq!(Scope::parse(&scope.render()), Some(scope));
        }
    }
}

fn manifest_json(index: bool, layers: &[(u64, String)], media_type: bool) -> String {
    let descriptors: Vec<serde_json::Value> = layers
        .iter()
        .map(|(size, hex)| {
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": format!("sha256:{hex}"),
                "size": size,
            })
        })
        .collect();
    let mut body = if index {
        serde_json::json!({ "schemaVersion": 2, "manifests": descriptors })
    } else {
        serde_json::json!({
            "schemaVersion": 2,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": format!("sha256:{}", "a".repeat(64)),
                "size": 2,
            },
            "layers": descriptors,
        })
    };
    if media_type {
        body["mediaType"] = if index {
            "application/vnd.oci.image.index.v1+json".into()
        } else {
            "application/vnd.oci.image.manifest.v1+json".into()
        };
    }
    body.to_string()
}

fn layers() -> impl Strategy<Value = Vec<(u64, String)>> {
    prop::collection::vec((any::<u64>(), hex_of(64)), 0..4)
}

/// A byte-level mutation of `body`: replace, insert or delete one byte.
fn mutate_bytes(body: &[u8], at: usize, with: u8, how: u8) -> Vec<u8> {
    let mut out = body.to_vec();
    if out.is_empty() {
        return vec![with];
    }
    let at = at % out.len();
    match how % 3 {
        0 => out[at] = with,
        1 => out.insert(at, with),
        _ => {
            out.remove(at);
        }
    }
    out
}

fn content_type() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some(
            "application/vnd.oci.image.manifest.v1+json".to_string()
        )),
        Just(Some("application/vnd.oci.image.index.v1+json".to_string())),
        Just(Some("application/json; charset=utf-8".to_string())),
        any::<String>().prop_map(Some),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn manifests_and_indexes_parse_or_fail_typed_on_any_bytes(
        body in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..200),
            any::<String>().prop_map(String::into_bytes),
            r#"\{"(schemaVersion|mediaType|config|layers|manifests|subject)":[0-9\[\]{}",a-z]{0,30}\}"#
                .prop_map(String::into_bytes),
        ],
        content_type in content_type(),
    ) {
        let _ = Manifest::parse(content_type.as_deref(), &body);
    }

    #[test]
    fn mutated_manifests_and_indexes_parse_or_fail_typed(
        index in any::<bool>(),
        layers in layers(),
        media_type in any::<bool>(),
        at in any::<usize>(),
        with in prop::sample::select(b"{}[]\":,0129az \\".to_vec()),
        how in any::<u8>(),
        content_type in content_type(),
    ) {
        let valid = manifest_json(index, &layers, media_type);
        let parsed = Manifest::parse(None, valid.as_bytes()).unwrap();
        prop_assert_eq!(parsed.references.len(), layers.len());
        let mutated = mutate_bytes(valid.as_bytes(), at, with, how);
        let _ = Manifest::parse(content_type.as_deref(), &mutated);
    }
}

fn claims(subject: String, access: Vec<(String, Vec<String>)>) -> Claims {
    Claims {
        iss: token::ISSUER.into(),
        sub: subject,
        aud: "berth".into(),
        exp: 2_000_000_000,
        nbf: 1_000_000_000,
        iat: 1_000_000_000,
        jti: "j".into(),
        access: access
            .into_iter()
            .map(|(name, actions)| ResourceActions {
                resource_type: "repository".into(),
                name,
                actions,
            })
            .collect(),
        kind: TokenKind::Access,
        subject: Subject::User,
        pwf: None,
    }
}

const NOW: i64 = 1_500_000_000;

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_tokens_are_never_accepted(
        text in prop_oneof![
            any::<String>(),
            "[A-Za-z0-9_-]{0,40}\\.[A-Za-z0-9_-]{0,40}\\.[A-Za-z0-9_-]{0,44}",
        ]
    ) {
        let key = SigningKey::from_bytes(vec![7; 32]).unwrap();
        prop_assert!(token::decode(&key, &text, "berth", TokenKind::Access, NOW).is_err());
    }

    #[test]
    fn signed_tokens_round_trip_and_any_change_is_refused(
        subject in any::<String>(),
        access in prop::collection::vec((any::<String>(), prop::collection::vec(any::<String>(), 0..3)), 0..3),
        at in any::<usize>(),
        with in prop::sample::select(b"ABCabc019-_.=+/ ".to_vec()),
        how in any::<u8>(),
    ) {
        let key = SigningKey::from_bytes(vec![7; 32]).unwrap();
        let other = SigningKey::from_bytes(vec![8; 32]).unwrap();
        let claims = claims(subject, access);
        let signed = token::encode(&key, &claims);
        prop_assert_eq!(
            token::decode(&key, &signed, "berth", TokenKind::Access, NOW),
            Ok(claims.clone())
        );
        prop_assert!(token::decode(&other, &signed, "berth", TokenKind::Access, NOW).is_err());
        let mutated = String::from_utf8_lossy(&mutate_bytes(signed.as_bytes(), at, with, how))
            .into_owned();
        if mutated != signed {
            prop_assert!(
                token::decode(&key, &mutated, "berth", TokenKind::Access, NOW).is_err(),
                "{} was accepted", mutated
            );
        }
    }
}

fn yaml_scalar() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9./-]{0,12}",
        Just("~".to_string()),
        Just("[]".to_string()),
        Just("{}".to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        Just("*a".to_string()),
        Just("&a x".to_string()),
        Just("!tag x".to_string()),
        Just("\"unterminated".to_string()),
    ]
}

/// Resource-shaped YAML with random fields and values: near the shapes berth reads.
fn resource_yaml() -> impl Strategy<Value = String> {
    let kind = prop::sample::select(vec![
        "Namespace",
        "Repository",
        "SyncRule",
        "AgingRule",
        "Trigger",
        "Unknown",
    ]);
    let field = prop::sample::select(vec![
        "push",
        "pull",
        "quota",
        "maxBytes",
        "maxTags",
        "immutableTags",
        "namespace",
        "repository",
        "source",
        "schedule",
        "keep",
        "match",
        "public",
        "members",
    ]);
    let api = prop::sample::select(vec![
        "berth.dev/v1alpha1",
        "berth.dev/v9",
        "v1",
        "apps/v1",
        "",
    ]);
    (
        api,
        kind,
        "[a-z0-9.-]{0,12}",
        prop::collection::vec((field, yaml_scalar(), any::<bool>()), 0..5),
    )
        .prop_map(|(api, kind, name, fields)| {
            let mut text =
                format!("apiVersion: {api}\nkind: {kind}\nmetadata:\n  name: {name}\nspec:\n");
            for (field, value, nested) in fields {
                if nested {
                    text.push_str(&format!("  {field}:\n    - {value}\n"));
                } else {
                    text.push_str(&format!("  {field}: {value}\n"));
                }
            }
            text
        })
}

fn storage_yaml() -> impl Strategy<Value = String> {
    let field = prop::sample::select(vec![
        "bucket",
        "prefix",
        "region",
        "endpoint",
        "allowHttp",
        "virtualHostedStyle",
        "accessKeyId",
        "secretAccessKey",
        "sessionToken",
        "path",
        "other",
    ]);
    (
        prop::sample::select(vec!["s3", "filesystem", "both", "gcs"]),
        prop::collection::vec((field, yaml_scalar()), 0..5),
    )
        .prop_map(|(backend, fields)| {
            let mut text = String::new();
            let backends = if backend == "both" {
                vec!["s3", "filesystem"]
            } else {
                vec![backend]
            };
            for b in backends {
                text.push_str(&format!("{b}:\n"));
                for (field, value) in &fields {
                    text.push_str(&format!("  {field}: {value}\n"));
                }
            }
            text
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn config_folder_yaml_never_panics_and_reports_every_problem(
        text in prop_oneof![
            any::<String>(),
            resource_yaml(),
            (resource_yaml(), any::<usize>(), prop::sample::select(vec![':', '-', ' ', '\n', '\t', '[', '{', '&', '*', '!', '|', '\'']), any::<bool>())
                .prop_map(|(v, at, c, ins)| mutate(&v, at, c, ins)),
            prop::collection::vec(resource_yaml(), 0..3).prop_map(|docs| docs.join("---\n")),
        ]
    ) {
        let loaded = berth::config::load_text("fuzz.yaml", &text);
        for error in &loaded.errors {
            prop_assert!(!error.message.is_empty());
        }
    }

    #[test]
    fn storage_config_yaml_never_panics_and_fails_typed(
        text in prop_oneof![
            any::<String>(),
            storage_yaml(),
            (storage_yaml(), any::<usize>(), prop::sample::select(vec![':', '-', ' ', '\n', '\t', '[', '{', '&', '*']), any::<bool>())
                .prop_map(|(v, at, c, ins)| mutate(&v, at, c, ins)),
        ]
    ) {
        let _ = berth::storage::config::parse(&text, Path::new("/etc/berth/storage.yaml"));
    }
}

proptest! {
    #![proptest_config(config())]

    /// The saved-state format berth owns: suspending and resuming at any points gives
    /// what one pass of `sha2` gives.
    #[test]
    fn hash_state_saved_and_restored_anywhere_equals_one_pass(
        data in prop::collection::vec(any::<u8>(), 0..1200),
        cuts in prop::collection::vec(any::<usize>(), 0..5),
        sha512 in any::<bool>(),
    ) {
        let algorithm = if sha512 { Algorithm::Sha512 } else { Algorithm::Sha256 };
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (data.len() + 1)).collect();
        cuts.sort_unstable();
        cuts.push(data.len());
        let mut hasher = Hasher::new(algorithm);
        let mut from = 0;
        for cut in cuts {
            hasher.update(&data[from..cut]);
            from = cut;
            hasher = Hasher::restore(algorithm, &hasher.save()).unwrap();
        }
        prop_assert_eq!(hasher.finish(), Digest::of(algorithm, &data));
    }
}
