//! The model: decoded transitions, time, and the kernel's counters.

pub mod aggregate;
pub mod census;
pub mod clock;
pub mod counters;
pub mod report;
pub mod timewait;
pub mod transition;
