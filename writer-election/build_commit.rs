// The commit a binary is built from, shared by the build scripts of writer-election and
// rw-proxy (each `include!`s this file): `BUILD_COMMIT` when the builder passes one (a Docker
// build has no `.git`), else the checkout's `git rev-parse`, else "unknown". Never fails the
// build: no git, no repository or a broken one all mean "unknown".

/// The commit to name, and the rerun-if lines that keep it current.
fn build_commit() -> String {
    println!("cargo:rerun-if-env-changed=BUILD_COMMIT");
    std::env::var("BUILD_COMMIT")
        .ok()
        .and_then(|c| plausible(c.trim()))
        .or_else(from_git)
        .unwrap_or_else(|| "unknown".to_string())
}

/// A commit id, or nothing: the value ends up in a metric label and in `--version`.
fn plausible(id: &str) -> Option<String> {
    let ok = (7..=40).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit());
    ok.then(|| id.to_ascii_lowercase())
}

fn git(args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("git").args(args).output().ok()?;
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
    let dir = std::path::PathBuf::from(dir);
    let mut watch = vec![dir.join("HEAD")];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        // A linked worktree keeps its branches in the common dir.
        let common = git(&["rev-parse", "--path-format=absolute", "--git-common-dir"])
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| dir.clone());
        watch.push(common.join(&branch));
        watch.push(common.join("packed-refs"));
    }
    for path in watch.iter().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
