//! Sources: where transitions and timewait sockets come from.

pub mod btf;
pub mod cgroup;
pub mod follower;
pub mod hooks;
pub mod preflight;
pub mod procnet;
pub mod recording;
pub mod sockdiag;
pub mod start_owners;
pub mod tracefs;
pub mod tracer;
