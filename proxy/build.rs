//! Sets `RW_PROXY_COMMIT` for `--version` and `rw_proxy_build_info`
//! (writer-election/build_commit.rs, shared with writer-election, says where it comes from).

include!("../writer-election/build_commit.rs");

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=../writer-election/build_commit.rs");
    println!("cargo:rustc-env=RW_PROXY_COMMIT={}", build_commit());
}
