//! The renderer against golden files: each route table below renders byte-for-byte to
//! `tests/golden/nginx/<name>.conf`. `UPDATE_GOLDEN=1 cargo test -p rorqual-release golden`
//! rewrites them; review the diff before committing. `tests/traffic_nginx.rs` checks that the
//! real nginx accepts every golden file (`nginx -t`).

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::render::{Features, RenderSettings, render};
use super::routes::{AppRoute, PreviewRoute, RouteTable, RoutedBackend};
use crate::traffic::Backend;
use rorqual_core::model::{AppKey, Revision};

/// The prefix golden files are rendered with; the nginx check replaces it with a temp dir.
const GOLDEN_PREFIX: &str = "/var/lib/rorqual/nginx";

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/nginx")
}

fn settings() -> RenderSettings {
    RenderSettings {
        prefix: PathBuf::from(GOLDEN_PREFIX),
        control: addr(19000),
        http_snippet: String::new(),
        worker_processes: 1,
        as_root: false,
        // No optional temp paths: the goldens must pass `nginx -t` on nginx-light too.
        features: Features::default(),
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn backend(revision: &str, weight: u32, ports: &[u16]) -> RoutedBackend {
    RoutedBackend::new(
        &Backend::new(Revision::from(revision), weight),
        ports.iter().map(|&p| addr(p)).collect(),
    )
}

fn route(listen: u16, split: Option<Vec<RoutedBackend>>) -> AppRoute {
    AppRoute {
        split,
        ..AppRoute::new(addr(listen))
    }
}

fn with_preview(mut route: AppRoute, listen: u16, backend: Option<RoutedBackend>) -> AppRoute {
    route.preview = Some(PreviewRoute {
        listen: addr(listen),
        backend,
    });
    route
}

/// Every golden case: file name, settings, routes, version.
fn cases() -> Vec<(&'static str, RenderSettings, RouteTable, u64)> {
    let web = AppKey::new("default", "web");
    vec![
        (
            "single_app_all_stable",
            settings(),
            [(
                web.clone(),
                route(18080, Some(vec![backend("v1", 100, &[18001, 18002])])),
            )]
            .into(),
            1,
        ),
        (
            "canary_20_stable_80",
            settings(),
            [(
                web.clone(),
                route(
                    18080,
                    Some(vec![
                        backend("v1", 80, &[18001, 18002]),
                        backend("v2", 20, &[18003]),
                    ]),
                ),
            )]
            .into(),
            4,
        ),
        (
            "blue_green_with_preview",
            settings(),
            [(
                web.clone(),
                with_preview(
                    route(18080, Some(vec![backend("blue", 100, &[18001])])),
                    18081,
                    Some(backend("green", 100, &[18002])),
                ),
            )]
            .into(),
            2,
        ),
        (
            "blue_green_preview_empty",
            settings(),
            [(
                web.clone(),
                with_preview(
                    route(18080, Some(vec![backend("blue", 100, &[18001])])),
                    18081,
                    None,
                ),
            )]
            .into(),
            3,
        ),
        (
            "several_apps",
            RenderSettings {
                http_snippet: "proxy_read_timeout 30s;\nproxy_connect_timeout 2s;".into(),
                worker_processes: 2,
                as_root: true,
                ..settings()
            },
            [
                (
                    AppKey::new("games", "lobby"),
                    route(
                        18080,
                        Some(vec![
                            backend("stable", 75, &[18001, 18002, 18003]),
                            backend("canary", 25, &[18004]),
                            backend("old", 0, &[18005]),
                        ]),
                    ),
                ),
                (
                    AppKey::new("shop", "check-out.v2"),
                    with_preview(
                        route(18090, Some(vec![backend("blue", 100, &[18011])])),
                        18091,
                        Some(backend("green", 100, &[18012])),
                    ),
                ),
                (AppKey::new("shop", "new"), route(18095, None)),
            ]
            .into(),
            12,
        ),
    ]
}

#[test]
fn rendered_configs_match_the_golden_files() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let dir = golden_dir();
    let mut mismatched = Vec::new();
    for (name, settings, routes, version) in cases() {
        let path = dir.join(format!("{name}.conf"));
        let rendered = render(&settings, &routes, version);
        if update {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &rendered).unwrap();
            continue;
        }
        let Ok(golden) = std::fs::read_to_string(&path) else {
            mismatched.push(format!(
                "{} is missing (UPDATE_GOLDEN=1 writes it)",
                path.display()
            ));
            continue;
        };
        if golden != rendered {
            let diff = similar::TextDiff::from_lines(&golden, &rendered)
                .unified_diff()
                .header("golden", "rendered")
                .to_string();
            mismatched.push(format!("{name}:\n{diff}"));
        }
    }
    assert!(
        mismatched.is_empty(),
        "rendered configs differ from tests/golden/nginx (rerun with UPDATE_GOLDEN=1 if the \
         change is intended):\n{}",
        mismatched.join("\n")
    );
}

#[test]
fn every_golden_file_has_a_case() {
    let names: Vec<_> = cases().iter().map(|c| format!("{}.conf", c.0)).collect();
    // A missing directory is reported by `rendered_configs_match_the_golden_files`.
    let Ok(entries) = std::fs::read_dir(golden_dir()) else {
        return;
    };
    for entry in entries {
        let file = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            names.contains(&file),
            "stale golden file {file}: no case renders it"
        );
    }
}
