//! postern: a session-brokering bastion for SSH and PostgreSQL.
//!
//! `main.rs` only calls [`cli::main`]; see ARCHITECTURE.md for the map.

pub mod api;
pub mod audit;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod credentials;
pub mod duration;
#[cfg(test)]
mod fuzz;
pub mod http;
pub mod metrics;
pub mod pg;
pub mod policy;
pub mod printable;
pub mod recording;
pub mod server;
pub mod ssh;
pub mod store;
