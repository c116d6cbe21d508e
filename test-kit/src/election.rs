//! The writer-election binary as a child process of a test: started from a config file, its
//! URL taken from its own start-up line, its log kept in memory (printed when a test panics),
//! SIGKILLed on drop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use topology_client::client::fetch_topology;
use topology_client::topology::Topology;

/// How long a start may take: the first start of a test run may share the machine with builds.
const START: Duration = Duration::from_secs(60);

/// The writer-election binary (built first if this package's tests did not build it).
pub fn binary() -> PathBuf {
    crate::process::workspace_binary("writer-election", "writer-election")
}

/// What a plain [`Election::start`] ran, so that [`Election::respawn`] can run it again.
struct Launch {
    config: PathBuf,
    env: Vec<(String, String)>,
}

/// A writer-election process. Killed on drop (also when a test panics).
pub struct Election {
    /// `http://<listen address>`, as the process reported it.
    pub url: String,
    child: Option<Child>,
    logs: Arc<Mutex<Vec<String>>>,
    launch: Option<Launch>,
    /// Kept as long as the process: where its config and state file are.
    dirs: Vec<tempfile::TempDir>,
}

impl Election {
    /// Starts `writer-election --config <config>` with `env` added and waits until it listens.
    pub fn start(config: &Path, env: &[(&str, &str)]) -> Election {
        let mut e = Election::start_command(Command::new(binary()), config, env);
        e.launch = Some(Launch {
            config: config.to_path_buf(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        });
        e
    }

    /// As [`Election::start`], with the binary already named by `cmd` (e.g. behind
    /// `ip netns exec <ns>`, which execs it: the child's pid is the binary's). Such a process
    /// cannot be respawned.
    pub fn start_command(cmd: Command, config: &Path, env: &[(&str, &str)]) -> Election {
        let mut e = Election {
            url: String::new(),
            child: None,
            logs: Arc::new(Mutex::new(Vec::new())),
            launch: None,
            dirs: Vec::new(),
        };
        e.launch_with(cmd, config, env);
        e
    }

    /// Keeps `dir` (say, the one holding the config and the state file) until this is dropped.
    pub fn owning(mut self, dir: tempfile::TempDir) -> Election {
        self.dirs.push(dir);
        self
    }

    /// Starts the process again (after [`Election::kill`]) with the same config and environment:
    /// the same port if the config names one, the same state file. The log goes on.
    pub fn respawn(&mut self) {
        assert!(self.child.is_none(), "writer-election is still running");
        let launch = self
            .launch
            .take()
            .expect("respawn: this process was started with a command of the test's own");
        let env: Vec<(&str, &str)> = launch
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.launch_with(Command::new(binary()), &launch.config, &env);
        self.launch = Some(launch);
    }

    fn launch_with(&mut self, mut cmd: Command, config: &Path, env: &[(&str, &str)]) {
        cmd.arg("--config")
            .arg(config)
            .arg("--log-format")
            .arg("json")
            .env("RUST_LOG", "info,writer_election=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn writer-election ({:?}): {e}", cmd.get_program()));
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, rx) = mpsc::channel::<String>();
        let logs = self.logs.clone();
        // The line "writer-election started" carries the address it listens on: the only way to
        // learn a port the process picked itself. The thread ends with the process (its stderr
        // closes), and with it the channel, so an early exit is seen at once.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("writer-election started") {
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                        if let Some(l) = v["fields"]["listen"].as_str() {
                            let _ = tx.send(l.to_string());
                        }
                    }
                }
                if let Ok(mut logs) = logs.lock() {
                    logs.push(line);
                }
            }
        });
        self.child = Some(child);
        match rx.recv_timeout(START) {
            Ok(listen) => self.url = format!("http://{listen}"),
            Err(_) => {
                let status = self
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten());
                panic!(
                    "writer-election did not start (exit status {status:?}); logs:\n{}",
                    self.log_text()
                )
            }
        }
    }

    /// Every log line so far (JSON, one per line).
    pub fn log_text(&self) -> String {
        self.logs.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// The pid, 0 once killed.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM; the exit status once it stopped (SIGKILL after 20 s).
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        crate::process::signal(c.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                return c.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGSTOP: it decides nothing and answers nothing until [`Election::resume`].
    pub fn pause(&self) {
        crate::process::signal(self.running_pid(), "STOP");
    }

    pub fn resume(&self) {
        crate::process::signal(self.running_pid(), "CONT");
    }

    fn running_pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(|c| c.id())
            .expect("writer-election is running")
    }

    /// GET /v1/topology, if it answers.
    pub async fn topology(&self) -> Option<Topology> {
        fetch_topology(&self.url, None, None).await.ok()
    }

    /// Polls /v1/topology until `cond` holds; panics naming `what`, with the last topology,
    /// after `timeout` (the logs follow as the process is dropped).
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        cond: impl Fn(&Topology) -> bool,
    ) -> Topology {
        wait_for_topology(&self.url, what, timeout, cond).await
    }

    /// The value of one series of /metrics, if it is there; panics unless /metrics answers 200.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let (status, text) = self.get("/metrics").await;
        assert_eq!(status, 200, "GET /metrics: {text}");
        crate::metrics::value(&text, series)
    }

    /// GET `path`; (status, body), status 0 when it does not answer.
    pub async fn get(&self, path: &str) -> (u16, String) {
        crate::http::call(
            "GET",
            &format!("{}{path}", self.url),
            &[],
            "",
            Duration::from_secs(150),
        )
        .await
    }
}

impl Drop for Election {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- writer-election logs ---\n{}", self.log_text());
        }
        self.kill();
    }
}

/// Polls `url`'s /v1/topology (a writer-election child or one in the test's own process) until
/// `cond` holds; panics naming `what`, with the last topology, after `timeout`.
pub async fn wait_for_topology(
    url: &str,
    what: &str,
    timeout: Duration,
    cond: impl Fn(&Topology) -> bool,
) -> Topology {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        if let Ok(t) = fetch_topology(url, None, None).await {
            if cond(&t) {
                return t;
            }
            last = Some(t);
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting until {what}; last topology: {last:#?}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The writer's name, if there is a writer.
pub fn writer_name(t: &Topology) -> Option<&str> {
    t.writer.as_ref().map(|w| w.name.as_str())
}
