//! Sources: where transitions come from.

pub mod btf;
pub mod preflight;
pub mod procnet;
pub mod sockdiag;
pub mod timewait;
pub mod tracefs;
pub mod tracer;
