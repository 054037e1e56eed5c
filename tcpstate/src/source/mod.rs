//! Sources: where transitions come from.

pub mod preflight;
pub mod tracefs;
pub mod tracer;
