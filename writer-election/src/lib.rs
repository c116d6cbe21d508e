//! writer-election: the library half of the election service.
//!
//! [`topology`] (the types of the topology API) and [`client`] (follows `/v1/topology` with
//! blocking queries) live in the topology-client crate, which rw-proxy and loadtest depend on without this
//! one; they are re-exported here so `writer_election::topology` keeps working.

pub use topology_client::{client, topology};

pub mod api;
pub mod config;
pub mod decision;
pub mod discovery;
pub mod drain;
pub mod engine;
pub mod forward;
pub mod kube_actions;
pub mod leader;
pub mod metrics;
pub mod ops;
pub mod permissions;
pub mod probe;
pub mod progress;
pub mod promotion;
pub mod publish;
pub mod service;
pub mod store;
pub mod switchover;
pub mod writer_change;

pub use service::{start, ServiceHandle, ServiceOptions};
