//! writer-election: the library half of the election service.
//!
//! [`topology`] (the types of the topology API) and [`client`] (follows `/v1/topology` with
//! blocking queries) live in the topology-client crate, which rw-proxy depends on without this
//! one; they are re-exported here so `writer_election::topology` keeps working. Everything else
//! is the election service itself, behind the default `server` feature (loadtest depends on
//! this crate without it).

pub use topology_client::{client, topology};

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
