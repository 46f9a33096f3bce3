//! Exactly one TLS crypto provider is linked: ring. rustls panics at start-up
//! when both ring and aws-lc-rs are present without an installed default, and
//! a dependency's default features can quietly pull in the second one.

/// Cargo.lock resolves ring and no aws-lc package.
#[test]
fn only_the_ring_crypto_provider_is_in_the_dependency_graph() {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock"))
        .expect("read Cargo.lock");
    let packages: Vec<&str> = lock
        .lines()
        .filter_map(|line| line.strip_prefix("name = \""))
        .map(|name| name.trim_end_matches('"'))
        .collect();
    assert!(packages.contains(&"ring"), "ring is the crypto provider");
    let aws_lc: Vec<&&str> = packages.iter().filter(|name| name.starts_with("aws-lc")).collect();
    assert!(aws_lc.is_empty(), "a second crypto provider was pulled in: {aws_lc:?}");
}
