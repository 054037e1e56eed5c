//! JSON Lines: one object per transition. The fields are documented in the README.

use std::{
    fmt::Write as _,
    io::{self, Write},
    time::{Duration, UNIX_EPOCH},
};

use std::net::IpAddr;

use bytes::{BufMut as _, BytesMut};
use serde::Serialize;

use super::{BatchWriter, Sink};
use crate::model::timewait::TwEvent;
use crate::model::{
    cgroup::Cgroup,
    clock::Clock,
    counters::KernelCounters,
    report::{SessionInfo, TraceSummary},
    socket::FourTuple,
    state::TcpState,
    transition::Transition,
};

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

    /// The first line of a recording: what the session is (`stats --from`
    /// reads it back).
    pub fn header(&mut self, info: &SessionInfo) -> io::Result<()> {
        #[derive(Serialize)]
        struct Header<'a> {
            kind: &'static str,
            #[serde(flatten)]
            info: &'a SessionInfo,
        }
        let buf = self.out.buf();
        serde_json::to_writer(buf.writer(), &Header { kind: "session", info })?;
        buf.put_u8(b'\n');
        self.out.flush()
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

/// Appends JSON values to a line without `core::fmt`, whose integer and
/// address formatting was half of `trace --json`'s CPU.
struct Line<'a>(&'a mut BytesMut);

impl Line<'_> {
    fn raw(&mut self, s: &str) -> &mut Self {
        self.0.put_slice(s.as_bytes());
        self
    }

    fn num(&mut self, n: impl itoa::Integer) -> &mut Self {
        self.0.put_slice(itoa::Buffer::new().format(n).as_bytes());
        self
    }

    fn opt_num(&mut self, n: Option<impl itoa::Integer>) -> &mut Self {
        match n {
            Some(n) => self.num(n),
            None => self.raw("null"),
        }
    }

    fn opt_bool(&mut self, b: Option<bool>) -> &mut Self {
        self.raw(match b {
            Some(true) => "true",
            Some(false) => "false",
            None => "null",
        })
    }

    fn bool(&mut self, b: bool) -> &mut Self {
        self.opt_bool(Some(b))
    }

    /// `,"family":…,"saddr":…,"sport":…,"daddr":…,"dport":…`, as every
    /// transition and timewait line has them.
    fn endpoints(&mut self, family: &str, tuple: &FourTuple) -> &mut Self {
        self.raw(",\"family\":\"")
            .raw(family)
            .raw("\",\"saddr\":\"")
            .ip(tuple.saddr)
            .raw("\",\"sport\":")
            .num(tuple.sport)
            .raw(",\"daddr\":\"")
            .ip(tuple.daddr)
            .raw("\",\"dport\":")
            .num(tuple.dport)
    }

    /// A string known to need no escaping, quoted.
    fn quoted(&mut self, s: Option<&str>) -> &mut Self {
        match s {
            Some(s) => self.raw("\"").raw(s).raw("\""),
            None => self.raw("null"),
        }
    }

    fn ip(&mut self, ip: IpAddr) -> &mut Self {
        match ip {
            IpAddr::V4(v4) => {
                let [a, b, c, d] = v4.octets();
                self.num(a).raw(".").num(b).raw(".").num(c).raw(".").num(d)
            }
            // Rarer, and its compression rules are not worth repeating.
            IpAddr::V6(v6) => {
                let _ = write!(self.0, "{v6}");
                self
            }
        }
    }

    fn hex(&mut self, n: u64) -> &mut Self {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut digits = [0u8; 16];
        let len = (16 - n.leading_zeros() as usize / 4).max(1);
        for (i, d) in digits[..len].iter_mut().rev().enumerate() {
            *d = DIGITS[((n >> (4 * i)) & 0xf) as usize];
        }
        self.raw("0x");
        self.0.put_slice(&digits[..len]);
        self
    }

    /// `date` + "." + six digits of microseconds + "Z".
    fn time(&mut self, date: &str, micros: u32) -> &mut Self {
        let (mut frac, mut rest) = ([b'0'; 6], micros.min(999_999));
        for digit in frac.iter_mut().rev() {
            *digit = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        self.raw("\"").raw(date).raw(".");
        self.0.put_slice(&frac);
        self.raw("Z\"")
    }

    /// A string that may need escaping (a comm, a cgroup path): serde's.
    fn escaped(&mut self, s: Option<&str>) -> io::Result<&mut Self> {
        match s {
            Some(s) => serde_json::to_writer(self.0.writer(), s)?,
            None => self.0.put_slice(b"null"),
        }
        Ok(self)
    }

    /// The owner's cgroup path and container, or nulls.
    fn cgroup(&mut self, cgroup: Option<&Cgroup>) -> io::Result<&mut Self> {
        self.raw(",\"cgroup\":").escaped(cgroup.map(|c| c.path.as_str()))?.raw(",\"container\":");
        match cgroup.and_then(|c| c.container.as_ref()) {
            Some(c) => {
                // Ids and runtimes are hex, letters and dashes; a unit name
                // may need escaping.
                self.raw("{\"id\":").escaped(Some(&c.id))?.raw(",\"runtime\":");
                self.quoted(Some(c.runtime.name())).raw(",\"pod_uid\":").quoted(c.pod_uid.as_deref()).raw("}")
            }
            None => self.raw("null"),
        };
        Ok(self)
    }
}

impl<W: Write> Sink for JsonSink<W> {
    fn transition(&mut self, t: &Transition) -> io::Result<()> {
        let Self { out, clock, second } = self;
        let (date, micros) = cached_time(clock, second, t.ts_ns);
        let mut line = Line(out.buf());
        line.raw("{\"kind\":\"transition\",\"ts_ns\":")
            .num(t.ts_ns)
            .raw(",\"time\":")
            .time(date, micros)
            .raw(",\"skaddr\":\"")
            .hex(t.skaddr)
            .raw("\",\"netns\":")
            .num(t.netns)
            .endpoints(t.family.name(), &t.tuple)
            .raw(",\"old_state\":\"")
            .raw(t.old.name())
            .raw("\",\"new_state\":\"")
            .raw(t.new.name())
            .raw("\",\"in_old_state_ns\":")
            .opt_num(t.in_old_state_ns)
            .raw(",\"first_seen_ns\":")
            .num(t.first_seen_ns)
            .raw(",\"seen_from_start\":")
            .bool(t.seen_from_start)
            .raw(",\"connected\":")
            .bool(t.connected)
            .raw(",\"pid\":")
            .opt_num(t.owner.as_ref().map(|o| o.pid))
            .raw(",\"comm\":")
            .escaped(t.owner.as_ref().map(|o| o.comm.as_str()))?
            .cgroup(t.cgroup.as_deref())?
            .raw(",\"owner_from_listener\":")
            .opt_bool(t.owner.as_ref().map(|o| o.from_listener))
            .raw(",\"owner_at_start\":")
            .opt_bool(t.owner.as_ref().map(|o| o.at_start))
            .raw(",\"close\":")
            .quoted(t.close.map(|c| c.name()))
            .raw(",\"error\":")
            .quoted(t.error.map(|e| e.name()).as_deref())
            .raw(",\"handover\":")
            .bool(t.enters_time_wait())
            .raw(",\"gap\":")
            .bool(t.gap.is_some())
            .raw(",\"last_seen_state\":")
            .quoted(t.gap.map(TcpState::name))
            .raw("}\n");
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn summary(&mut self, counters: &KernelCounters) -> io::Result<()> {
        let ended = humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
        let buf = self.out.buf();
        serde_json::to_writer(buf.writer(), &TraceSummary::of(counters, ended))?;
        buf.put_u8(b'\n');
        self.out.flush()
    }

    fn timewait(&mut self, e: &TwEvent) -> io::Result<()> {
        let Self { out, clock, second } = self;
        let (date, micros) = cached_time(clock, second, e.at_ns());
        let k = e.key();
        let (event, substate, cause, fin_wait2, time_wait, expires_at) = match e {
            TwEvent::Entered { substate, expires_at_ns, fin_wait2_ns, .. } => {
                ("entered", Some(substate.name()), None, *fin_wait2_ns, None, *expires_at_ns)
            }
            TwEvent::FinArrived { fin_wait2_ns, .. } => {
                ("fin_arrived", Some("TIME_WAIT"), None, Some(*fin_wait2_ns), None, None)
            }
            TwEvent::Ended { cause, substate, fin_wait2_ns, time_wait_ns, .. } => {
                ("ended", substate.map(|s| s.name()), Some(cause.name()), *fin_wait2_ns, *time_wait_ns, None)
            }
        };
        let family = if k.tuple.daddr.is_ipv4() { "ipv4" } else { "ipv6" };
        let mut line = Line(out.buf());
        line.raw("{\"kind\":\"timewait\",\"event\":\"")
            .raw(event)
            .raw("\",\"mode\":\"")
            .raw(e.mode().name())
            .raw("\",\"ts_ns\":")
            .num(e.at_ns())
            .raw(",\"time\":")
            .time(date, micros)
            .raw(",\"netns\":")
            .num(k.netns)
            .endpoints(family, &k.tuple)
            .raw(",\"substate\":")
            .quoted(substate)
            .raw(",\"cause\":")
            .quoted(cause)
            .raw(",\"fin_wait2_ns\":")
            .opt_num(fin_wait2)
            .raw(",\"time_wait_ns\":")
            .opt_num(time_wait)
            .raw(",\"expires_at_ns\":")
            .opt_num(expires_at)
            .raw(",\"pid\":")
            .opt_num(e.owner().map(|o| o.pid))
            .raw(",\"comm\":")
            .escaped(e.owner().map(|o| o.comm.as_str()))?
            .raw("}\n");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_formatting_matches_core_fmt() {
        let mut buf = BytesMut::new();
        for ip in ["0.0.0.0", "127.0.0.1", "255.255.255.255", "::1", "fe80::1:2"] {
            buf.clear();
            Line(&mut buf).ip(ip.parse().unwrap());
            assert_eq!(&buf[..], ip.as_bytes());
        }
        for n in [0u64, 1, 0xf, 0x10, 0xffff_8880_1234_5678, u64::MAX] {
            buf.clear();
            Line(&mut buf).hex(n);
            assert_eq!(&buf[..], format!("{n:#x}").as_bytes());
        }
        for micros in [0, 7, 123_456, 999_999] {
            buf.clear();
            Line(&mut buf).time("2026-11-27T23:00:00", micros);
            assert_eq!(&buf[..], format!("\"2026-11-27T23:00:00.{micros:06}Z\"").as_bytes());
        }
    }
    use crate::model::timewait::Measured;
    use crate::model::{state::TcpState, transition::tests::raw_event};

    #[test]
    fn ends_with_a_summary_record() {
        let mut sink = JsonSink::new(Vec::new(), Clock::with_offset(0));
        let mut counters = KernelCounters { received: 5, ringbuf_full: 1, ..Default::default() };
        counters.transitions.insert((TcpState::ESTABLISHED, TcpState::FIN_WAIT1), 2);
        sink.summary(&counters).unwrap();
        let text = String::from_utf8(sink.into_inner()).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(v["kind"], "summary");
        assert_eq!(v["total_transitions"], 2);
        assert_eq!(
            v["transitions"][0],
            serde_json::json!({"old": "ESTABLISHED", "new": "FIN_WAIT1", "count": 2})
        );
        assert_eq!(v["losses"]["events_received"], 5);
        assert_eq!(v["losses"]["events_dropped"], 1);
    }

    #[test]
    fn cgroup_and_container() {
        let mut sink = JsonSink::new(Vec::new(), Clock::with_offset(0));
        let mut t = Transition::from_raw(&raw_event());
        let id = "ab".repeat(32);
        t.cgroup = Some(Cgroup::of_path(&format!("/system.slice/docker-{id}.scope")));
        sink.transition(&t).unwrap();
        t.cgroup = Some(Cgroup::of_path("/user.slice/a \"quoted\" name"));
        sink.transition(&t).unwrap();
        sink.flush().unwrap();
        let text = String::from_utf8(sink.into_inner()).unwrap();
        let rows: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(rows[0]["cgroup"], format!("/system.slice/docker-{id}.scope"));
        assert_eq!(rows[0]["container"], serde_json::json!({"id": id, "runtime": "docker", "pod_uid": null}));
        assert_eq!(rows[1]["cgroup"], "/user.slice/a \"quoted\" name");
        assert!(rows[1]["container"].is_null());
    }

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
            "kind": "transition",
            "netns": 4026531840u32,
            "ts_ns": 1_000_000_000u64,
            "time": "2026-11-27T00:00:01.000000Z",
            "skaddr": "0xffff888012345678",
            "family": "ipv4",
            "saddr": "127.0.0.1", "sport": 40000,
            "daddr": "127.0.0.2", "dport": 80,
            "old_state": "ESTABLISHED", "new_state": "FIN_WAIT1",
            "in_old_state_ns": 1_500_000,
            "first_seen_ns": 900_000_000u64, "seen_from_start": true, "connected": false,
            "pid": 4242, "comm": "curl", "owner_from_listener": false, "owner_at_start": false,
            "cgroup": null, "container": null,
            "close": "active", "error": null, "handover": false,
            "gap": false, "last_seen_state": null,
        });
        assert_eq!(rows[0], expected);
        for key in [
            "in_old_state_ns",
            "pid",
            "comm",
            "close",
            "owner_from_listener",
            "owner_at_start",
            "cgroup",
            "container",
        ] {
            assert!(rows[1][key].is_null(), "{key} should be null");
        }
    }

    #[test]
    fn a_gap_is_flagged_with_the_state_last_seen() {
        let mut raw = raw_event();
        (raw.oldstate, raw.newstate, raw.last_state) =
            (tcpstate_ebpf::TCP_FIN_WAIT2, tcpstate_ebpf::TCP_CLOSE, tcpstate_ebpf::TCP_ESTABLISHED);
        raw.in_old_state_ns = tcpstate_ebpf::DURATION_UNKNOWN;
        raw.flags |= tcpstate_ebpf::FLAG_GAP;
        let mut sink = JsonSink::new(Vec::new(), Clock::with_offset(0));
        sink.transition(&Transition::from_raw(&raw)).unwrap();
        sink.flush().unwrap();
        let row: serde_json::Value = serde_json::from_slice(&sink.into_inner()).unwrap();
        assert_eq!(row["gap"], true);
        assert_eq!(row["last_seen_state"], "ESTABLISHED");
        assert_eq!(row["old_state"], "FIN_WAIT2");
        assert!(row["in_old_state_ns"].is_null());
    }

    #[test]
    fn timewait_objects() {
        use crate::model::timewait::{EndCause, TwKey};
        let t = Transition::from_raw(&raw_event());
        let key = TwKey { netns: 7, tuple: t.tuple };
        let mut sink = JsonSink::new(Vec::new(), Clock::with_offset(0));
        sink.timewait(&TwEvent::Entered {
            mode: Measured::SockDiag,
            key,
            owner: t.owner,
            at_ns: 5,
            substate: TcpState::FIN_WAIT2,
            expires_at_ns: Some(9),
            fin_wait2_ns: None,
        })
        .unwrap();
        sink.timewait(&TwEvent::Ended {
            mode: Measured::SockDiag,
            key,
            owner: None,
            at_ns: 10,
            cause: EndCause::Killed,
            substate: Some(TcpState::FIN_WAIT2),
            fin_wait2_ns: Some(4),
            time_wait_ns: None,
        })
        .unwrap();
        sink.flush().unwrap();
        let text = String::from_utf8(sink.into_inner()).unwrap();
        let rows: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(rows[0]["kind"], "timewait");
        assert_eq!(rows[0]["event"], "entered");
        assert_eq!(rows[0]["mode"], "sock_diag");
        assert_eq!(rows[0]["substate"], "FIN_WAIT2");
        assert_eq!(rows[0]["expires_at_ns"], 9);
        assert_eq!((rows[0]["pid"].clone(), rows[0]["comm"].clone()), (4242.into(), "curl".into()));
        assert_eq!(rows[1]["cause"], "killed");
        assert_eq!(rows[1]["fin_wait2_ns"], 4);
        assert!(rows[1]["time_wait_ns"].is_null() && rows[1]["comm"].is_null());
        assert_eq!(rows[1]["netns"], 7);
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
