//! topology-client: what a follower of writer-election needs, without the election service.
//!
//! [`topology`] holds the wire types of `GET /v1/topology`, [`client`] follows that endpoint with
//! blocking queries across the configured URLs, [`http`] is the small outbound HTTP client under
//! it (writer-election's probes and promotion calls use it too), and [`backoff`] is the one retry
//! policy of the workspace.

pub mod backoff;
pub mod client;
pub mod http;
pub mod topology;
