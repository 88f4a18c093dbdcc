//! End to end (root; required when CI=true): the `ipam_game_servers` example, run as a user
//! runs it. `LocalEngine` with the full `Scheduler` (UnderlayIp fed by `AllocatorCapacity`)
//! and `BridgeNetwork` on one pool: 8 identities and 6 addresses start 6, the 7th waits naming
//! the pool and its counts, and every identity keeps its address (checked on `eth0` in its
//! namespace) across a crash restart, a node loss, a scale down and up, and an in-place
//! revision move. The example exits non-zero when a check fails.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn can_run() -> bool {
    rorqual_testkit::root::bridge_tests_can_run()
}

#[test]
fn game_servers_keep_their_underlay_addresses() {
    if !can_run() {
        return;
    }
    let bin = rorqual_testkit::examples::example_bin("ipam_game_servers");
    let out = Command::new(bin).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for line in [
        "underlay pool `games` has no free address (6 of 6 taken)",
        "crash restart: every identity kept its address",
        "node loss: every identity kept its address",
        "pool games: 4 active, 2 reserved by claims, 0 available",
        "scale down and up: every identity kept its address",
        "in-place revision move: every identity kept its address",
        "all checks passed",
    ] {
        assert!(stdout.contains(line), "missing `{line}` in:\n{stdout}");
    }
    assert!(
        !Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout
            .windows(4)
            .any(|w| w == b"rqg-"),
        "the example left namespaces behind"
    );
}
