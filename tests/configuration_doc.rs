//! `docs/configuration.md` is generated from the one key table in `src/config.rs`: this test
//! fails when the two drift apart. `HORIZON_BLESS=1 cargo test --test configuration_doc`
//! rewrites the file.

#[test]
fn docs_configuration_md_is_the_key_table() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md");
    let want = horizon::config::reference_markdown();
    if std::env::var_os("HORIZON_BLESS").is_some() {
        std::fs::write(path, &want).expect("write docs/configuration.md");
    }
    let have = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        have == want,
        "docs/configuration.md is out of date with src/config.rs; run \
         HORIZON_BLESS=1 cargo test --test configuration_doc"
    );
    for key in horizon::config::OPTIONS {
        assert!(
            have.contains(&format!("| `{}` |", key.name)),
            "{}",
            key.name
        );
    }
}
