//! JSON Lines: one object per transition. The fields are documented in the README.

use std::{
    fmt::{self, Write as _},
    io::{self, Write},
    time::{Duration, UNIX_EPOCH},
};

use bytes::BufMut as _;

use super::{BatchWriter, Sink};
use crate::model::{clock::Clock, transition::Transition};

/// Writes JSON Lines by hand: this is the per-event hot path, and serde's
/// escaping of fixed ASCII keys and values cost a third of the tracer's CPU.
/// Every value here is ASCII without quotes or backslashes, except `comm`,
/// which serde_json escapes.
pub struct JsonSink<W: Write> {
    out: BatchWriter<W>,
    clock: Clock,
    /// "YYYY-MM-DDTHH:MM:SS" of the last second seen, and that second.
    second: Option<(u64, String)>,
}

impl<W: Write> JsonSink<W> {
    pub fn new(out: W, clock: Clock) -> Self {
        Self { out: BatchWriter::new(out), clock, second: None }
    }

    pub fn into_inner(self) -> W {
        self.out.into_inner()
    }
}

/// The RFC 3339 time as date-and-seconds plus microseconds, formatting the
/// first part once per second.
fn cached_time<'a>(clock: &Clock, second: &'a mut Option<(u64, String)>, ts_ns: u64) -> (&'a str, u32) {
    let wall = clock.wall(ts_ns).duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = wall.as_secs();
    if second.as_ref().is_none_or(|(s, _)| *s != secs) {
        let full = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string();
        *second = Some((secs, full.trim_end_matches('Z').to_string()));
    }
    (second.as_ref().map_or("", |(_, p)| p.as_str()), wall.subsec_micros())
}

fn opt<T: fmt::Display>(v: Option<T>) -> impl fmt::Display {
    struct Opt<T>(Option<T>);
    impl<T: fmt::Display> fmt::Display for Opt<T> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match &self.0 {
                Some(v) => v.fmt(f),
                None => f.write_str("null"),
            }
        }
    }
    Opt(v)
}

fn quoted(v: Option<&str>) -> impl fmt::Display + '_ {
    struct Quoted<'a>(Option<&'a str>);
    impl fmt::Display for Quoted<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self.0 {
                Some(v) => write!(f, "\"{v}\""),
                None => f.write_str("null"),
            }
        }
    }
    Quoted(v)
}

impl<W: Write> Sink for JsonSink<W> {
    fn transition(&mut self, t: &Transition) -> io::Result<()> {
        let Self { out, clock, second } = self;
        let (date, micros) = cached_time(clock, second, t.ts_ns);
        let buf = out.buf();
        write!(
            buf,
            "{{\"ts_ns\":{},\"time\":\"{date}.{micros:06}Z\",\"skaddr\":\"{:#x}\",\"family\":\"{}\",\
             \"saddr\":\"{}\",\"sport\":{},\"daddr\":\"{}\",\"dport\":{},\"old_state\":\"{}\",\"new_state\":\"{}\",\
             \"in_old_state_ns\":{},\"pid\":{},\"comm\":",
            t.ts_ns,
            t.skaddr,
            t.family.name(),
            t.saddr,
            t.sport,
            t.daddr,
            t.dport,
            t.old.name(),
            t.new.name(),
            opt(t.in_old_state_ns),
            opt(t.owner.as_ref().map(|o| o.pid)),
        )
        .map_err(io::Error::other)?;
        match &t.owner {
            Some(o) => serde_json::to_writer(buf.writer(), o.comm.as_str())?,
            None => buf.put_slice(b"null"),
        }
        writeln!(
            buf,
            ",\"owner_from_listener\":{},\"close\":{}}}",
            opt(t.owner.as_ref().map(|o| o.from_listener)),
            quoted(t.close.map(|c| c.name())),
        )
        .map_err(io::Error::other)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::transition::tests::raw_event;

    #[test]
    fn documented_fields() {
        let clock = Clock::with_offset(1_795_737_600_000_000_000);
        let mut sink = JsonSink::new(Vec::new(), clock);
        let mut raw = raw_event();
        sink.transition(&Transition::from_raw(&raw)).unwrap();
        raw.flags = 0;
        raw.close = 0;
        raw.in_old_state_ns = tcpstate_ebpf::DURATION_UNKNOWN;
        sink.transition(&Transition::from_raw(&raw)).unwrap();
        sink.flush().unwrap();
        let text = String::from_utf8(sink.into_inner()).unwrap();
        let rows: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(rows.len(), 2);
        let expected = serde_json::json!({
            "ts_ns": 1_000_000_000u64,
            "time": "2026-11-27T00:00:01.000000Z",
            "skaddr": "0xffff888012345678",
            "family": "ipv4",
            "saddr": "127.0.0.1", "sport": 40000,
            "daddr": "127.0.0.2", "dport": 80,
            "old_state": "ESTABLISHED", "new_state": "FIN_WAIT1",
            "in_old_state_ns": 1_500_000,
            "pid": 4242, "comm": "curl", "owner_from_listener": false,
            "close": "active",
        });
        assert_eq!(rows[0], expected);
        for key in ["in_old_state_ns", "pid", "comm", "close", "owner_from_listener"] {
            assert!(rows[1][key].is_null(), "{key} should be null");
        }
    }

    #[test]
    fn hostile_comm_and_ipv6_stay_valid_json() {
        let mut raw = raw_event();
        raw.comm = *b"a\"b\\c\n\x01\0\0\0\0\0\0\0\0\0";
        raw.family = tcpstate_ebpf::AF_INET6;
        raw.daddr = std::net::Ipv6Addr::LOCALHOST.octets();
        let mut sink = JsonSink::new(Vec::new(), Clock::with_offset(0));
        // Two events in one second, one in the next: the cached date part.
        for ts in [1_000_000_000, 1_999_999_999, 2_000_000_000] {
            raw.ts_ns = ts;
            sink.transition(&Transition::from_raw(&raw)).unwrap();
        }
        sink.flush().unwrap();
        let text = String::from_utf8(sink.into_inner()).unwrap();
        let rows: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(rows[0]["comm"], "a\"b\\c\n\u{1}");
        assert_eq!(rows[0]["daddr"], "::1");
        assert_eq!(rows[0]["time"], "1970-01-01T00:00:01.000000Z");
        assert_eq!(rows[1]["time"], "1970-01-01T00:00:01.999999Z");
        assert_eq!(rows[2]["time"], "1970-01-01T00:00:02.000000Z");
    }
}
