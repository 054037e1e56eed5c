//! The kernel half of tcpstate: one program on `sock:inet_sock_set_state`.
//!
//! On the host this file compiles to an empty binary, so that the whole
//! workspace builds and tests with plain cargo; the real program is built for
//! `bpfel-unknown-none` by `tcpstate/build.rs`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod program;

#[cfg(not(target_arch = "bpf"))]
fn main() {}
