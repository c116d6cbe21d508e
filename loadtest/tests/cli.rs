//! The command line itself.

mod support;

use std::process::Command;

use support::loadtest_bin;

#[test]
fn version_names_the_version() {
    // No subcommand needed: --version answers before one is asked for.
    let out = Command::new(loadtest_bin())
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("loadtest {}", env!("CARGO_PKG_VERSION"))
    );
}
