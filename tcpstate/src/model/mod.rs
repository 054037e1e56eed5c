//! The model: decoded transitions, time, and the kernel's counters.

pub mod aggregate;
pub mod census;
pub mod cgroup;
pub mod clock;
pub mod counters;
pub mod filter;
pub mod report;
pub mod socket;
pub mod state;
pub mod sysctl;
pub mod timewait;
pub mod transition;
