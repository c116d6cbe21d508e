//! HA: a follower forwards to the leader what only the leader can act on.
//!
//! The proxies reach the replicas through one Service, so their blocking topology queries and
//! drain acknowledgements land on followers too. The switchover drain barrier needs the leader
//! to see every proxy (its drain set) and every proxy to see the leader's `draining` document at
//! once, so a follower that knows the leader's URL (from the leader Lease, see `leader`) passes
//! `GET /v1/topology` and `POST /v1/switchover/drained` on to it and answers with the leader's
//! answer. When it does not know the URL, or the leader does not answer, it serves the topology
//! from the Lease record itself as before (static stability) and answers acknowledgements 503,
//! which the proxies retry.
//!
//! A forwarded request carries [`FORWARDED_HEADER`] and is never forwarded again: replicas that
//! briefly disagree about who leads cannot bounce a request between them.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use bytes::Bytes;

use crate::leader::LeaderState;
use topology_client::http::{build_client, call_with, CallError, HttpClient};

/// Set on forwarded requests (value: the forwarding replica's identity).
pub const FORWARDED_HEADER: &str = "x-writer-election-forwarded";
/// After the leader failed to answer, topology queries are served locally for a pause before
/// forwarding to that URL is tried again (instead of every query paying for a dead or hung
/// leader, or a NetworkPolicy that drops the packets): 1 s, doubling with each failure in a row,
/// up to 10 s (so forwarding resumes within a proxy's usual wait once the leader answers again).
const PAUSE_FIRST: Duration = Duration::from_secs(1);
const PAUSE_MAX: Duration = Duration::from_secs(10);

/// Failures in a row of forwarding to one URL.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Failing {
    url: String,
    in_a_row: u32,
    until: Instant,
}

fn pause_after(in_a_row: u32) -> Duration {
    topology_client::backoff::doubled(PAUSE_FIRST, PAUSE_MAX, in_a_row.saturating_sub(1))
}

/// **The forwarding decision**: the leader's URL when this replica follows a known leader with a
/// known URL and the request did not come from another replica.
pub fn forward_target(leader: &LeaderState, already_forwarded: bool) -> Option<&str> {
    if leader.leading_now() || already_forwarded {
        return None;
    }
    leader
        .leader_url
        .as_deref()
        .map(|u| u.trim_end_matches('/'))
        .filter(|u| !u.is_empty())
}

pub struct Forwarder {
    client: HttpClient,
    identity: String,
    failing: Mutex<Option<Failing>>,
}

impl Forwarder {
    pub fn new(identity: &str) -> Self {
        Forwarder {
            client: build_client(Duration::from_secs(1)),
            identity: identity.to_string(),
            failing: Mutex::new(None),
        }
    }

    fn paused(&self, url: &str) -> bool {
        let f = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        f.as_ref()
            .is_some_and(|f| f.url == url && Instant::now() < f.until)
    }

    /// Where to forward this request, if anywhere. `respect_pause`: not while the leader failed
    /// recently (topology queries then get the local document at once).
    pub fn target(
        &self,
        leader: &LeaderState,
        headers: &HeaderMap,
        respect_pause: bool,
    ) -> Option<String> {
        let url = forward_target(leader, headers.contains_key(FORWARDED_HEADER))?;
        if respect_pause && self.paused(url) {
            return None;
        }
        Some(url.to_string())
    }

    /// Sends the request to `base` (the leader's URL) + `path_and_query`; a transport failure
    /// pauses forwarding of topology queries to `base`.
    pub async fn send(
        &self,
        method: http::Method,
        base: &str,
        path_and_query: &str,
        body: Bytes,
        timeout: Duration,
    ) -> Result<(http::StatusCode, http::HeaderMap, Bytes), CallError> {
        let url = format!("{base}{path_and_query}");
        let headers = [
            (FORWARDED_HEADER, self.identity.as_str()),
            ("content-type", "application/json"),
        ];
        let r = call_with(&self.client, method, &url, &headers, body, timeout).await;
        let mut f = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        *f = match (&r, f.take()) {
            (Ok(_), _) => None,
            (Err(_), prev) => {
                let in_a_row = prev
                    .filter(|p| p.url == base)
                    .map_or(1, |p| p.in_a_row.saturating_add(1));
                Some(Failing {
                    url: base.to_string(),
                    in_a_row,
                    until: Instant::now() + pause_after(in_a_row),
                })
            }
        };
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn follower(url: Option<&str>) -> LeaderState {
        LeaderState::follower(Some("we-a".into()), url.map(str::to_string))
    }

    #[test]
    fn forwards_only_from_a_follower_to_a_known_url_once() {
        assert_eq!(
            forward_target(&follower(Some("http://10.0.0.1:8080/")), false),
            Some("http://10.0.0.1:8080")
        );
        assert_eq!(forward_target(&follower(None), false), None, "URL unknown");
        assert_eq!(forward_target(&follower(Some("")), false), None);
        assert_eq!(
            forward_target(&follower(Some("http://10.0.0.1:8080")), true),
            None,
            "already forwarded by another replica"
        );
        let mut leading = LeaderState::always("we-a");
        leading.leader_url = Some("http://10.0.0.1:8080".into());
        assert_eq!(
            forward_target(&leading, false),
            None,
            "the leader serves itself"
        );
    }

    #[tokio::test]
    async fn a_failed_forward_pauses_topology_forwarding() {
        let f = Forwarder::new("we-b");
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        drop(l);
        let leader = follower(Some(&url));
        let h = HeaderMap::new();
        assert!(f.target(&leader, &h, true).is_some());
        let r = f
            .send(
                http::Method::GET,
                &url,
                "/v1/topology",
                Bytes::new(),
                Duration::from_secs(2),
            )
            .await;
        assert!(r.is_err());
        assert!(f.target(&leader, &h, true).is_none(), "paused");
        assert!(
            f.target(&leader, &h, false).is_some(),
            "acknowledgements still try"
        );
        let other = follower(Some("http://127.0.0.1:1"));
        assert!(
            f.target(&other, &h, true).is_some(),
            "a new leader URL is tried at once"
        );
    }

    #[test]
    fn pauses_double_up_to_10s() {
        let p: Vec<u64> = (1..=7).map(|n| pause_after(n).as_secs()).collect();
        assert_eq!(p, vec![1, 2, 4, 8, 10, 10, 10]);
        assert_eq!(pause_after(u32::MAX), PAUSE_MAX);
    }
}
