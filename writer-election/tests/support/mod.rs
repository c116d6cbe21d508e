//! Test support shared by writer-election's integration tests.
//!
//! Every integration test file is its own crate and includes this module with `mod support;`,
//! so most items are unused in any one of them: dead code is allowed here on purpose.
#![allow(dead_code, unused_imports)]

pub mod cluster;
pub mod fake_k8s;
pub mod fake_proxy;

use std::time::Duration;

/// Waits until `condition` holds; panics naming `what` after `timeout` (test-kit's wait, for a
/// condition that needs no await). Use generous timeouts: the test machine is small and shared.
pub async fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    test_kit::wait::until(what, timeout, || std::future::ready(condition())).await
}
