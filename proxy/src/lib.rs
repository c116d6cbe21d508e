//! rw-proxy: a Pingora proxy that sends writes to the elected writer and spreads reads over
//! the ready readers of a single-writer storage cluster (see README.md and proxy/README.md).

pub mod admin;
pub mod attempt;
pub mod balance;
pub mod config;
pub mod contact;
pub mod control;
pub mod downstream;
pub mod errors;
pub mod follow;
pub mod forward;
pub mod h1;
pub mod hold;
pub mod lag;
pub mod logging;
pub mod metrics;
pub mod pool;
pub mod read_your_writes;
pub mod request_rules;
pub mod routing;
pub mod server;
pub mod state;
pub mod topology;
pub mod workers;
