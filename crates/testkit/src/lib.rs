//! rorqual-testkit (not published): what rorqual's own tests, benchmarks and examples share.
//!
//! - [`demo`]: the demo HTTP app (version, health, metrics, an error rate), run by the
//!   `rorqual-demo` binary or by an example re-executed in app mode;
//! - [`local`]: helpers for tests on the LocalEngine (a builder with short backoffs, the demo
//!   spec, waiting for readiness and events, process checks);
//! - [`examples`]: helpers for the release examples (traffic generation, timelines);
//! - [`etcd`]: a single-member etcd from Debian's `etcd-server` on loopback ports;
//! - [`postgres`]: a real PostgreSQL 15 (Debian's `postgresql`) made by `initdb` in a
//!   temporary directory and started on loopback (as `nobody` when run as root);
//! - [`prometheus`]: a real Prometheus (Debian's `prometheus`) on loopback, scraping the jobs
//!   it is given and queried through its HTTP API;
//! - [`demo_bin`]: the path of the `rorqual-demo` binary, built on first use if missing;
//! - [`free_loopback_port`]: a loopback port below the ephemeral range for a server to bind.
//!
//! ```
//! let port = rorqual_testkit::free_loopback_port().unwrap();
//! assert!(rorqual_testkit::SERVER_PORT_RANGE.contains(&port));
//! ```

pub mod counting;
pub mod demo;
pub mod etcd;
pub mod examples;
pub mod local;
pub mod postgres;
pub mod prometheus;
pub mod root;

pub use rorqual_local::{SERVER_PORT_RANGE, free_loopback_port};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The path of the `rorqual-demo` binary in the target directory of the running program.
///
/// `cargo test --workspace` builds it (this package's own integration test needs it); when a
/// single package is tested and it is missing, it is built once with `cargo build`. A program
/// that is not inside a cargo target directory gets the plain name, found on `PATH`.
///
/// # Panics
///
/// When the binary is missing and `cargo build` fails; the panic says how to build it.
pub fn demo_bin() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| {
        let Some(profile_dir) = profile_dir() else {
            return DEMO_BIN.to_owned();
        };
        let bin = profile_dir.join(DEMO_BIN);
        if !bin.exists() {
            build_demo(&profile_dir);
        }
        bin.to_string_lossy().into_owned()
    })
}

const DEMO_BIN: &str = "rorqual-demo";

/// Whether the program at `path` (from Debian package `package`) is installed, for tests that
/// need it: `true` when it is; otherwise prints why the test is skipped and returns `false`, or,
/// with `CI=true`, panics (CI installs every package a test needs).
///
/// # Panics
///
/// When the program is missing and `CI=true`.
pub fn installed_or_skip(path: &str, package: &str) -> bool {
    if Path::new(path).exists() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{path} is missing (install {package}); required when CI=true"
    );
    println!("skipped: {path} not installed (Debian package {package})");
    false
}

/// `target/<profile>` of the running executable (tests run from `deps/`, examples from
/// `examples/`).
fn profile_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let mut dir = exe.parent()?.to_path_buf();
    if dir.ends_with("deps") || dir.ends_with("examples") {
        dir = dir.parent()?.to_path_buf();
    }
    let target = dir.parent()?;
    target.join("CACHEDIR.TAG").exists().then_some(dir)
}

fn build_demo(profile_dir: &Path) {
    let how = format!("cargo build -p rorqual-testkit --bin {DEMO_BIN}");
    let mut cargo = Command::new(env!("CARGO"));
    cargo.current_dir(env!("CARGO_MANIFEST_DIR")).args([
        "build",
        "-p",
        "rorqual-testkit",
        "--bin",
        DEMO_BIN,
    ]);
    if profile_dir.ends_with("release") {
        cargo.arg("--release");
    }
    if let Some(target) = profile_dir.parent() {
        cargo.env("CARGO_TARGET_DIR", target);
    }
    match cargo.status() {
        Ok(status) if status.success() => {}
        Ok(status) => panic!("`{how}` failed ({status}); run it by hand to see why"),
        Err(e) => panic!("could not run `{how}`: {e}"),
    }
}
