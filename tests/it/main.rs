//! The one integration test binary: real postern, sshd, PostgreSQL, ssh and psql.

mod abuse;
mod access;
mod admin;
mod api_ops;
mod apply;
mod audit;
mod availability;
mod certs;
mod cli_output;
mod console;
mod console_admin;
mod dist;
mod drills;
mod harness;
mod harness_check;
mod login;
mod pg;
mod pg_drivers;
mod pg_property;
mod pg_trust;
mod pg_wire;
mod requests;
mod serve;
mod ssh;
mod ssh_limits;
mod ssh_plane;
