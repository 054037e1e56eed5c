//! tcpstate: TCP state transitions, traced with eBPF.
//!
//! A pipeline in layers: [`source`] loads the kernel program and reads its
//! ring buffer, [`model`] turns records into transitions and counters, and
//! [`sink`] prints them. [`session`] drives the loop and [`commands`] wires
//! each subcommand together.

pub mod cli;
pub mod commands;
pub mod model;
pub mod session;
pub mod sink;
pub mod source;
