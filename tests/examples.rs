//! The shipped examples are valid: standalone mode loads every one of them without an
//! error, and a managed registry built from them accepts pushes where they say.

use berth::config::ConfigFolder;

#[test]
fn every_example_loads_without_errors() {
    let folder = ConfigFolder::new(concat!(env!("CARGO_MANIFEST_DIR"), "/examples"));
    let loaded = folder.load();
    let errors: Vec<String> = loaded.errors.iter().map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(loaded.namespaces.len(), 2);
    assert_eq!(loaded.repositories.len(), 2);
    assert_eq!(loaded.sync_rules.len(), 1);
    assert_eq!(loaded.aging_rules.len(), 1);
    assert_eq!(loaded.triggers.len(), 1);

    let snapshot = berth::config::snapshot(&loaded.namespaces, &loaded.repositories);
    let push = |repo: &str| snapshot.check_push(&repo.parse().unwrap());
    assert!(push("library/hello").is_ok());
    assert!(push("team-a/web").is_ok());
    assert!(
        push("team-a/brand-new").is_ok(),
        "team-a creates repositories on push"
    );
    assert!(push("team-b/app").is_err(), "team-b is not declared");
}
