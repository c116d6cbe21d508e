//! Waiting until something holds, with a deadline and a message that names what was awaited.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often a condition is looked at again.
const POLL: Duration = Duration::from_millis(20);

/// Polls `cond` until it holds; panics naming `what` once `timeout` has passed, also while a
/// look at the condition is still running (a request to a hung process). Use generous
/// timeouts: test machines are small and shared.
pub async fn until<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for_some(what, timeout, || {
        let look = cond();
        async move { look.await.then_some(()) }
    })
    .await
}

/// Polls `get` until it returns `Some`, and returns that; panics naming `what` once `timeout` has
/// passed.
pub async fn for_some<T, F, Fut>(what: &str, timeout: Duration, mut get: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, get()).await {
            Ok(Some(v)) => return v,
            Ok(None) => {}
            Err(_) => panic!("timed out after {timeout:?} waiting for: {what}"),
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn returns_once_the_condition_holds() {
        let calls = AtomicU32::new(0);
        until("the third look", Duration::from_secs(30), || async {
            calls.fetch_add(1, Ordering::SeqCst) >= 2
        })
        .await;
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    #[should_panic(expected = "waiting for: the moon")]
    async fn names_what_it_waited_for_when_it_gives_up() {
        until("the moon", Duration::ZERO, || async { false }).await;
    }

    #[tokio::test]
    #[should_panic(expected = "waiting for: an answer from a hung peer")]
    async fn a_look_that_hangs_ends_at_the_deadline() {
        until(
            "an answer from a hung peer",
            Duration::from_millis(50),
            std::future::pending::<bool>,
        )
        .await;
    }

    #[tokio::test]
    async fn for_some_hands_back_the_value() {
        let calls = AtomicU32::new(0);
        let v = for_some("a value", Duration::from_secs(30), || async {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            (n == 1).then_some(n)
        })
        .await;
        assert_eq!(v, 1);
    }

    #[tokio::test]
    #[should_panic(expected = "waiting for: nothing")]
    async fn for_some_names_what_it_waited_for_when_it_gives_up() {
        for_some::<(), _, _>("nothing", Duration::ZERO, || async { None }).await;
    }
}
