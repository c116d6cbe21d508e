//! Sets `WRITER_ELECTION_COMMIT` for `--version` and `writer_election_build_info`
//! (build_commit.rs says where it comes from).

include!("build_commit.rs");

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=build_commit.rs");
    // rw-proxy and loadtest follow the election through topology-client, so a new commit
    // rebuilds only the service and its tests.
    println!("cargo:rustc-env=WRITER_ELECTION_COMMIT={}", build_commit());
}
