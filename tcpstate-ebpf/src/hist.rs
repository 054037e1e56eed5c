//! The in-kernel time-in-state histograms of summary mode.

use bytemuck::{Pod, Zeroable};

/// Log-linear histogram of nanoseconds: 2^HIST_SUB_BITS buckets per power
/// of two, from 2^HIST_MIN_EXP (~1 µs; less counts there) to 2^HIST_MAX_EXP
/// (~73 min; more counts there). A bucket spans 1/8 of its power of two, so
/// a value read back as its bucket's midpoint is within ±6.25 %.
pub const HIST_SUB_BITS: u32 = 3;
pub const HIST_MIN_EXP: u32 = 10;
pub const HIST_MAX_EXP: u32 = 42;
pub const HIST_BUCKETS: usize = ((HIST_MAX_EXP - HIST_MIN_EXP + 1) << HIST_SUB_BITS) as usize;

/// The bucket `ns` falls in. No loops, so the verifier takes it as is.
#[inline(always)]
pub fn hist_bucket(ns: u64) -> usize {
    if ns < 1 << HIST_MIN_EXP {
        return 0;
    }
    if ns >= 1 << (HIST_MAX_EXP + 1) {
        return HIST_BUCKETS - 1;
    }
    // floor(log2(ns)) by halving.
    let (mut x, mut exp) = (ns, 0u32);
    if x >= 1 << 32 {
        x >>= 32;
        exp += 32;
    }
    if x >= 1 << 16 {
        x >>= 16;
        exp += 16;
    }
    if x >= 1 << 8 {
        x >>= 8;
        exp += 8;
    }
    if x >= 1 << 4 {
        x >>= 4;
        exp += 4;
    }
    if x >= 1 << 2 {
        x >>= 2;
        exp += 2;
    }
    if x >= 1 << 1 {
        exp += 1;
    }
    let sub = (ns >> (exp - HIST_SUB_BITS)) as usize & ((1 << HIST_SUB_BITS) - 1);
    (((exp - HIST_MIN_EXP) as usize) << HIST_SUB_BITS) + sub
}

/// The midpoint of bucket `bucket`, what it reads back as.
pub fn hist_bucket_ns(bucket: usize) -> u64 {
    let exp = HIST_MIN_EXP + (bucket >> HIST_SUB_BITS) as u32;
    let sub = (bucket & ((1 << HIST_SUB_BITS) - 1)) as u64;
    let width = 1u64 << (exp - HIST_SUB_BITS);
    (1u64 << exp) + sub * width + width / 2
}

/// Time spent in one state, per CPU: the `STATE_TIME` map's value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct StateTime {
    pub buckets: [u64; HIST_BUCKETS],
    /// Exact extremes; `min` is 0 until something was recorded.
    pub min_ns: u64,
    pub max_ns: u64,
    /// The exact total, for a histogram's `_sum`.
    pub sum_ns: u64,
}
