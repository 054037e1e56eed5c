//! Sources: where transitions come from.

pub mod preflight;
pub mod procnet;
pub mod sockdiag;
pub mod tracefs;
pub mod tracer;
