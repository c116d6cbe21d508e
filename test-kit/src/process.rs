//! The workspace's binaries as child processes of a test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::Mutex;

/// The path of binary `bin` of workspace package `package`, from any crate's tests. Cargo builds
/// only the binaries of the package under test; a missing one is built once (`cargo build --bin
/// <bin> -p <package>`) into the same target directory.
pub fn workspace_binary(package: &str, bin: &str) -> PathBuf {
    // Builds of one test process are one after the other: two at once would wait on cargo's lock.
    static BUILD: Mutex<()> = Mutex::new(());
    let dir = target_dir();
    let path = dir.join(bin);
    let _one_at_a_time = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    if !path.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = Command::new(&cargo)
            .current_dir(workspace_root())
            .args(["build", "--bin", bin, "-p", package])
            .status()
            .unwrap_or_else(|e| panic!("running {cargo} build: {e}"));
        assert!(st.success(), "cargo build --bin {bin} -p {package} failed");
    }
    assert!(path.is_file(), "no {bin} binary at {}", path.display());
    path
}

/// Where cargo puts the binaries of the running test's profile: an integration test runs as
/// `<target>/<profile>/deps/<test>-<hash>`.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("the test's own path: {e}"));
    exe.parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("{} is not in <target>/<profile>/deps", exe.display()))
        .to_path_buf()
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// What `bin --version` prints, trimmed; panics unless it exits 0.
pub fn version_line(bin: &Path) -> String {
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("running {} --version: {e}", bin.display()));
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs `bin --check --config <config>` (the config check both services have) to its end.
pub fn check_config(bin: &Path, config: &Path) -> Output {
    Command::new(bin)
        .args(["--check", "--config"])
        .arg(config)
        .output()
        .unwrap_or_else(|e| panic!("running {} --check: {e}", bin.display()))
}

/// [`check_config`] of a config file holding `yaml` (in a temp dir of its own).
pub fn check_config_text(bin: &Path, yaml: &str) -> Output {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("a temp dir: {e}"));
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, yaml).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    check_config(bin, &path)
}

/// Sends `sig` (a name: `TERM`, `STOP`, ...) to `pid`, with kill(1); panics if that fails.
pub fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap_or_else(|e| panic!("running kill: {e}"));
    assert!(st.success(), "kill -{sig} {pid} failed");
}

/// A child process that is SIGKILLed and reaped when this is dropped, also when a test panics.
pub struct KillOnDrop(pub Child);

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SIGKILL ends a stopped process too.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Asserts that a service's /metrics page `text` has the standard process series of a live
/// process and `<prefix>_build_info{commit, version}` at 1. `commit` is a hex commit or
/// `unknown` (built outside a git checkout).
pub fn assert_process_metrics(text: &str, prefix: &str, commit: &str, version: &str) {
    let m = crate::metrics::parse(text);
    let v = |k: &str| m.get(k).copied().unwrap_or(0.0);
    assert!(v("process_resident_memory_bytes") > 0.0, "{text}");
    assert!(
        v("process_virtual_memory_bytes") >= v("process_resident_memory_bytes"),
        "{text}"
    );
    // A serving process has at least its listener open.
    assert!(v("process_open_fds") > 0.0, "{text}");
    assert!(v("process_max_fds") >= v("process_open_fds"), "{text}");
    assert!(m.contains_key("process_cpu_seconds_total"), "{text}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    // Started by this test, so within the last few minutes (and not in the future).
    let started = v("process_start_time_seconds");
    assert!(
        started <= now + 1.0 && started > now - 600.0,
        "started {started}, now {now}"
    );
    assert!(
        commit == "unknown"
            || (!commit.is_empty() && commit.bytes().all(|b| b.is_ascii_hexdigit())),
        "{commit}"
    );
    let build_info = format!(r#"{prefix}_build_info{{commit="{commit}",version="{version}"}}"#);
    assert_eq!(m.get(&build_info), Some(&1.0), "{build_info} in\n{text}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(start: f64) -> String {
        format!(
            "process_resident_memory_bytes 1000\nprocess_virtual_memory_bytes 5000\n\
             process_open_fds 7\nprocess_max_fds 1024\nprocess_cpu_seconds_total 0.1\n\
             process_start_time_seconds {start}\n\
             svc_build_info{{commit=\"abc123\",version=\"1.2.3\"}} 1\n"
        )
    }

    fn now() -> f64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    }

    #[test]
    fn a_live_process_page_passes() {
        assert_process_metrics(&page(now() - 5.0), "svc", "abc123", "1.2.3");
    }

    #[test]
    #[should_panic(expected = "svc_build_info")]
    fn another_version_fails() {
        assert_process_metrics(&page(now() - 5.0), "svc", "abc123", "1.2.4");
    }

    #[test]
    #[should_panic(expected = "started")]
    fn a_process_started_long_ago_fails() {
        assert_process_metrics(&page(now() - 3600.0), "svc", "abc123", "1.2.3");
    }

    #[test]
    #[should_panic]
    fn no_resident_memory_fails() {
        let p = page(now()).replace("process_resident_memory_bytes 1000\n", "");
        assert_process_metrics(&p, "svc", "abc123", "1.2.3");
    }

    /// An executable shell script in `dir` with `body`.
    fn script(dir: &Path, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join("tool");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn version_line_is_what_the_binary_prints() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            version_line(&script(dir.path(), "echo '  tool 1.0 '; echo noise >&2")),
            "tool 1.0"
        );
    }

    #[test]
    fn check_config_passes_the_config_and_reports_the_exit() {
        let dir = tempfile::tempdir().unwrap();
        // Exits 0 only when called as `--check --config <the file given>`.
        let tool = script(
            dir.path(),
            "[ \"$1 $2 $3\" = \"--check --config /some/file.yaml\" ]",
        );
        assert!(check_config(&tool, Path::new("/some/file.yaml"))
            .status
            .success());
        assert!(!check_config(&tool, Path::new("/other.yaml"))
            .status
            .success());
    }

    #[test]
    fn check_config_text_hands_over_a_file_with_the_text() {
        let dir = tempfile::tempdir().unwrap();
        // Exits 0 only when the file it is given holds exactly "a: 1".
        let tool = script(dir.path(), "[ \"$(cat \"$3\")\" = \"a: 1\" ]");
        assert!(check_config_text(&tool, "a: 1").status.success());
        assert!(!check_config_text(&tool, "a: 2").status.success());
    }

    #[test]
    #[should_panic]
    fn a_failing_version_run_fails() {
        let dir = tempfile::tempdir().unwrap();
        version_line(&script(dir.path(), "echo 'tool 1.0'; exit 1"));
    }

    #[test]
    fn a_child_is_gone_once_dropped() {
        let child = KillOnDrop(Command::new("sleep").arg("600").spawn().unwrap());
        let pid = child.id();
        drop(child);
        // Reaped: not even a zombie is left under that pid.
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }
}
