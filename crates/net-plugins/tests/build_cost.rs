//! The `rorqual-ipam` plugin is executed for every container ADD and DEL and built on every
//! node image: its build must not pull in crates it does not run. This reads the manifest
//! (the dependency graph itself is checked by `cargo tree -p rorqual-net -e normal
//! --no-default-features`, which a test cannot run without locking cargo's package cache).
//! The file store that `rorqual-ipam` uses cannot use `nix` once `nix` is optional: the crate
//! would not compile without the `bridge` feature.
#![allow(clippy::unwrap_used)]

/// The `[dependencies]` lines of this crate's manifest.
fn normal_dependencies() -> Vec<String> {
    let manifest = include_str!("../Cargo.toml");
    let mut in_deps = false;
    let mut out = Vec::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if in_deps && !line.is_empty() && !line.starts_with('#') {
            out.push(line.to_owned());
        }
    }
    out
}

#[test]
fn the_plugin_build_needs_no_nix_axum_reqwest_or_cel() {
    let deps = normal_dependencies();
    assert!(!deps.is_empty(), "no [dependencies] section found");
    for heavy in ["nix", "axum", "reqwest", "cel", "etcd-client"] {
        for line in deps.iter().filter(|l| {
            l.split(['.', ' ', '='])
                .next()
                .is_some_and(|name| name == heavy)
        }) {
            assert!(
                line.contains("optional = true"),
                "`{heavy}` is a required dependency of rorqual-net (`{line}`): every \
                 `rorqual-ipam` build compiles it"
            );
        }
    }
}
