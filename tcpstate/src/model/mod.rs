//! The model: decoded transitions, time, and the kernel's counters.

pub mod clock;
pub mod counters;
pub mod transition;
