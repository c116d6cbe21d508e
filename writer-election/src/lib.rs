//! writer-election: the library half.
//!
//! Always built: [`topology`] (the types of the topology API, shared with rw-proxy) and
//! [`client`] (follows `/v1/topology` with blocking queries). Everything else is the election
//! service itself and is behind the default `server` feature, so the proxy does not compile kube.

pub mod client;
mod http;
pub mod topology;

#[cfg(feature = "server")]
pub mod api;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod decision;
#[cfg(feature = "server")]
pub mod discovery;
#[cfg(feature = "server")]
pub mod drain;
#[cfg(feature = "server")]
pub mod engine;
#[cfg(feature = "server")]
pub mod forward;
#[cfg(feature = "server")]
pub mod kube_actions;
#[cfg(feature = "server")]
pub mod leader;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod ops;
#[cfg(feature = "server")]
pub mod probe;
#[cfg(feature = "server")]
pub mod progress;
#[cfg(feature = "server")]
pub mod promotion;
#[cfg(feature = "server")]
pub mod publish;
#[cfg(feature = "server")]
pub mod service;
#[cfg(feature = "server")]
pub mod store;
#[cfg(feature = "server")]
pub mod switchover;
#[cfg(feature = "server")]
pub mod writer_change;

#[cfg(feature = "server")]
pub use service::{start, ServiceHandle, ServiceOptions};
