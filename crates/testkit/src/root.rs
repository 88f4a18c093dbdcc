//! Guards for tests that need root and Debian's CNI plugins (network namespaces, the bridge).

use std::path::Path;

/// The CNI bridge plugin the root tests drive.
pub const CNI_BRIDGE: &str = "/usr/lib/cni/bridge";

/// Whether this process can run tests that create network namespaces and call the CNI bridge
/// plugin: root, and [`CNI_BRIDGE`] installed. Otherwise it prints why and returns false, or,
/// under `CI=true`, panics (CI runs as root with the packages installed).
pub fn bridge_tests_can_run() -> bool {
    let why = if !nix::unistd::geteuid().is_root() {
        Some("needs root for network namespaces".to_owned())
    } else if !Path::new(CNI_BRIDGE).exists() {
        Some(format!(
            "{CNI_BRIDGE} is missing (apt-get install containernetworking-plugins)"
        ))
    } else {
        None
    };
    match why {
        None => true,
        Some(why) if std::env::var("CI").as_deref() == Ok("true") => panic!("CI=true but {why}"),
        Some(why) => {
            println!("skipped: {why}");
            false
        }
    }
}
