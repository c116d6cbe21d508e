//! Sets `WRITER_ELECTION_COMMIT` for `--version` and `writer_election_build_info`
//! (build_commit.rs says where it comes from).

include!("build_commit.rs");

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=build_commit.rs");
    // Only the service (its binary and metrics) names its commit. Without `server` (the
    // library rw-proxy and loadtest use) nothing is set, so a new commit does not rebuild that
    // library and everything depending on it.
    if std::env::var_os("CARGO_FEATURE_SERVER").is_none() {
        return;
    }
    println!("cargo:rustc-env=WRITER_ELECTION_COMMIT={}", build_commit());
}
