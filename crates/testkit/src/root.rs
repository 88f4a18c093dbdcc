//! Guards for tests that need root and Debian's CNI plugins (network namespaces, the bridge).

use std::path::Path;

/// The CNI bridge plugin the root tests drive.
pub const CNI_BRIDGE: &str = "/usr/lib/cni/bridge";

/// The programs the root tests run besides the plugin: iproute2's `ip` (namespaces) and
/// util-linux's `nsenter` (processes inside a namespace), with their Debian packages.
pub const ROOT_TOOLS: [(&str, &str); 2] = [("ip", "iproute2"), ("nsenter", "util-linux")];

/// Whether `program` is an executable file in a directory of `PATH`.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(program)).is_ok_and(|m| {
                m.is_file()
                    && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
            })
        })
    })
}

/// Whether this process can run tests that create network namespaces and call the CNI bridge
/// plugin: root, [`CNI_BRIDGE`] installed, and the [`ROOT_TOOLS`] on `PATH`. Otherwise it
/// prints why and returns false, or, under `CI=true`, panics (CI runs as root with the packages
/// installed).
pub fn bridge_tests_can_run() -> bool {
    let why = if !nix::unistd::geteuid().is_root() {
        Some("needs root for network namespaces".to_owned())
    } else if !Path::new(CNI_BRIDGE).exists() {
        Some(format!(
            "{CNI_BRIDGE} is missing (apt-get install containernetworking-plugins)"
        ))
    } else if let Some((tool, package)) = ROOT_TOOLS.iter().find(|(tool, _)| !on_path(tool)) {
        Some(format!(
            "`{tool}` is not on PATH (apt-get install {package})"
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
