//! writer-election: the library half.
//!
//! Always built: [`topology`] (the types of the topology API, shared with rw-proxy) and
//! [`client`] (follows `/v1/topology` with blocking queries). Everything else is the election
//! service itself and is behind the default `server` feature, so the proxy does not compile kube.

pub mod client;
pub mod topology;
