//! The command line itself.

mod support;

use std::path::Path;

use support::loadtest_bin;

#[test]
fn version_names_the_version() {
    // No subcommand needed: --version answers before one is asked for.
    assert_eq!(
        test_kit::process::version_line(Path::new(loadtest_bin())),
        format!("loadtest {}", env!("CARGO_PKG_VERSION"))
    );
}
