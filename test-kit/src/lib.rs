//! Helpers that more than one crate's tests need. Dev-only: no shipped binary depends on it.
//!
//! Not the helpers of one crate's tests: those stay in that crate's `tests/support`.

pub mod election;
pub mod http;
pub mod metrics;
pub mod ports;
pub mod process;
pub mod stand_in;
pub mod wait;
