//! Maps the kernel's CLOCK_MONOTONIC timestamps to wall-clock time.

use std::time::{Duration, SystemTime};

fn now_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out-pointer; both clocks always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// realtime - monotonic, in ns, taken once at start.
    offset_ns: i128,
}

impl Clock {
    pub fn new() -> Self {
        Self { offset_ns: now_ns(libc::CLOCK_REALTIME) - now_ns(libc::CLOCK_MONOTONIC) }
    }

    pub fn monotonic_now_ns() -> u64 {
        now_ns(libc::CLOCK_MONOTONIC) as u64
    }

    pub fn wall(&self, monotonic_ns: u64) -> SystemTime {
        let ns = (monotonic_ns as i128 + self.offset_ns).max(0);
        SystemTime::UNIX_EPOCH + Duration::from_nanos(ns as u64)
    }

    /// Hours, minutes, seconds and microseconds of the UTC day.
    pub fn time_of_day(&self, monotonic_ns: u64) -> (u64, u64, u64, u64) {
        let since_epoch = self.wall(monotonic_ns).duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        let secs = since_epoch.as_secs() % 86_400;
        (secs / 3600, secs / 60 % 60, secs % 60, u64::from(since_epoch.subsec_micros()))
    }

    /// RFC 3339 in UTC, to the microsecond.
    pub fn rfc3339(&self, monotonic_ns: u64) -> String {
        humantime::format_rfc3339_micros(self.wall(monotonic_ns)).to_string()
    }

    #[cfg(test)]
    pub(crate) fn with_offset(offset_ns: i128) -> Self {
        Self { offset_ns }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc() {
        // 2026-11-27T00:00:00Z is 1795737600 s after the epoch.
        let clock = Clock::with_offset(1_795_737_600_000_000_000 - 5_000_000_000);
        assert_eq!(clock.rfc3339(5_000_000_000 + 1_500), "2026-11-27T00:00:00.000001Z");
        assert_eq!(clock.time_of_day(5_000_000_000 + 3_723_000_004_000), (1, 2, 3, 4));
    }

    #[test]
    fn live_clock_is_close_to_now() {
        let clock = Clock::new();
        let wall = clock.wall(Clock::monotonic_now_ns());
        let skew = SystemTime::now().duration_since(wall).unwrap_or_default();
        assert!(skew < Duration::from_secs(1), "skew {skew:?}");
    }
}
