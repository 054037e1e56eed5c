//! tcpstate: TCP state transitions, traced with eBPF.
//!
//! A pipeline in layers: [`source`] loads the kernel program and reads its
//! ring buffer, [`model`] turns records into transitions and counters, and
//! [`sink`] prints them. [`session`] drives the loop and [`commands`] wires
//! each subcommand together.

pub mod cli;
pub mod commands;
pub mod config;
pub mod model;
pub mod session;
pub mod sink;
pub mod source;

/// The user asked for something that cannot be: one line, exit status 2,
/// like a bad flag.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}
