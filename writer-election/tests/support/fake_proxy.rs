//! A proxy stand-in for the switchover drain tests: a plain HTTP loop that follows
//! `/v1/topology` with `client=<id>` and acknowledges a draining switchover the way rw-proxy does
//! (its writes in flight are always 0 here).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use writer_election::topology::Topology;

use super::cluster::http_call;

const LONG: Duration = Duration::from_secs(60);

/// When a fake proxy acknowledges a draining switchover.
#[derive(Clone)]
pub enum Ack {
    At,
    /// Once the gate turns true.
    WhenReleased(watch::Receiver<bool>),
    Never,
}

#[derive(Debug, Clone)]
pub struct AckSent {
    pub sent: Instant,
    pub switchover: u64,
    pub status: u16,
}

/// A proxy stand-in: one blocking query after another with `client=<id>`; on a draining
/// switchover it POSTs `/v1/switchover/drained` (its "writes in flight" are always 0 here).
pub struct FakeProxy {
    pub id: String,
    seen: Arc<Mutex<Vec<(Instant, Topology)>>>,
    acks: Arc<Mutex<Vec<AckSent>>>,
    task: JoinHandle<()>,
}

impl Drop for FakeProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeProxy {
    pub fn start(base: &str, id: &str, ack: Ack) -> FakeProxy {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let acks = Arc::new(Mutex::new(Vec::new()));
        let (base, id2, seen2, acks2) =
            (base.to_string(), id.to_string(), seen.clone(), acks.clone());
        let task = tokio::spawn(async move {
            let mut after: Option<u64> = None;
            let mut acked: Option<u64> = None;
            loop {
                let url = match after {
                    None => format!("{base}/v1/topology?client={id2}"),
                    Some(r) => format!("{base}/v1/topology?after={r}&wait=2s&client={id2}"),
                };
                let (status, body) = http_call("GET", &url, &[], "").await;
                let Ok(t) = serde_json::from_str::<Topology>(&body) else {
                    assert!(status != 400, "the service refused the query: {body}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                after = Some(t.revision);
                let draining = t
                    .switchover
                    .as_ref()
                    .filter(|s| s.state == "draining")
                    .map(|s| s.id);
                seen2.lock().unwrap().push((Instant::now(), t));
                if let Some(sw) = draining.filter(|d| acked != Some(*d)) {
                    acked = Some(sw);
                    let (base, id, acks, ack) =
                        (base.clone(), id2.clone(), acks2.clone(), ack.clone());
                    tokio::spawn(async move {
                        match ack {
                            Ack::At => {}
                            Ack::Never => return,
                            Ack::WhenReleased(mut gate) => {
                                let _ = gate.wait_for(|open| *open).await;
                            }
                        }
                        let sent = Instant::now();
                        let (status, _) = http_call(
                            "POST",
                            &format!("{base}/v1/switchover/drained"),
                            &[("content-type", "application/json")],
                            &format!(r#"{{"client": "{id}", "switchover": {sw}}}"#),
                        )
                        .await;
                        acks.lock().unwrap().push(AckSent {
                            sent,
                            switchover: sw,
                            status,
                        });
                    });
                }
            }
        });
        FakeProxy {
            id: id.to_string(),
            seen,
            acks,
            task,
        }
    }

    pub fn seen(&self) -> Vec<(Instant, Topology)> {
        self.seen.lock().unwrap().clone()
    }

    pub fn acks(&self) -> Vec<AckSent> {
        self.acks.lock().unwrap().clone()
    }

    /// Waits until this proxy has seen a document matching `cond` after its first draining one;
    /// returns that document.
    pub async fn wait_seen_after_draining(
        &self,
        what: &str,
        cond: impl Fn(&Topology) -> bool,
    ) -> Topology {
        let deadline = Instant::now() + LONG;
        loop {
            let seen = self.seen();
            let found = seen
                .iter()
                .position(|(_, t)| t.switchover.is_some())
                .and_then(|i| seen[i..].iter().find(|(_, t)| cond(t)));
            if let Some((_, t)) = found {
                return t.clone();
            }
            assert!(
                Instant::now() < deadline,
                "{}: never saw {what} after draining: {seen:#?}",
                self.id
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until this proxy has seen a document matching `cond`.
    pub async fn wait_seen(&self, what: &str, cond: impl Fn(&Topology) -> bool) {
        let what = format!("{} to see {what}", self.id);
        test_kit::wait::until(&what, LONG, || {
            std::future::ready(self.seen().iter().any(|(_, t)| cond(t)))
        })
        .await;
    }
}
