//! loadtest: demo storage nodes, the load generator, failover scenarios and the nginx
//! comparison (see README.md). The binary is a thin clap front over these modules.

pub mod cluster;
pub mod compare;
pub mod demo;
pub mod electionbench;
pub mod failover;
pub mod httpc;
pub mod logging;
pub mod netns;
pub mod node;
pub mod procs;
pub mod run;
pub mod signals;
pub mod topo;
