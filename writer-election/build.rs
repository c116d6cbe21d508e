//! Sets `WRITER_ELECTION_COMMIT` for `--version` and `writer_election_build_info`:
//! `BUILD_COMMIT` when the builder passes one (a Docker build has no `.git`), else the
//! checkout's `git rev-parse`, else "unknown". Never fails the build: no git, no repository or
//! a broken one all mean "unknown".

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // Only the service (its binary and metrics) names its commit. Without `server` (the
    // library rw-proxy and loadtest use) nothing is set, so a new commit does not rebuild that
    // library and everything depending on it.
    if std::env::var_os("CARGO_FEATURE_SERVER").is_none() {
        return;
    }
    println!("cargo:rerun-if-env-changed=BUILD_COMMIT");
    let commit = std::env::var("BUILD_COMMIT")
        .ok()
        .and_then(|c| plausible(c.trim()))
        .or_else(from_git)
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=WRITER_ELECTION_COMMIT={commit}");
}

/// A commit id, or nothing: the value ends up in a metric label and in `--version`.
fn plausible(id: &str) -> Option<String> {
    let ok = (7..=40).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit());
    ok.then(|| id.to_ascii_lowercase())
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8(out.stdout).ok()?.trim().to_string())
}

fn from_git() -> Option<String> {
    watch_head();
    plausible(&git(&["rev-parse", "--short=12", "HEAD"])?)
}

/// Reruns this script when HEAD moves: HEAD itself (checkout, detached), the branch it names
/// (commit) and packed-refs (gc, fetch). Only paths that exist: cargo reruns a script on every
/// build for a path that does not (a branch without a commit yet is therefore not watched).
fn watch_head() {
    let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let mut watch = vec![dir.join("HEAD")];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        // A linked worktree keeps its branches in the common dir.
        let common = git(&["rev-parse", "--path-format=absolute", "--git-common-dir"])
            .map(PathBuf::from)
            .unwrap_or_else(|| dir.clone());
        watch.push(common.join(&branch));
        watch.push(common.join("packed-refs"));
    }
    for path in watch.iter().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
