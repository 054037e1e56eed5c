//! JSON Lines: one object per transition. The fields are documented in the README.

use std::io::{self, Write};

use bytes::BufMut as _;
use serde::Serialize;

use super::{BatchWriter, Sink};
use crate::model::{clock::Clock, transition::Transition};

#[derive(Serialize)]
struct TransitionJson<'a> {
    ts_ns: u64,
    time: String,
    skaddr: String,
    family: &'static str,
    saddr: String,
    sport: u16,
    daddr: String,
    dport: u16,
    old_state: &'static str,
    new_state: &'static str,
    in_old_state_ns: Option<u64>,
    pid: Option<u32>,
    comm: Option<&'a str>,
    owner_from_listener: Option<bool>,
    close: Option<&'static str>,
}

impl<'a> TransitionJson<'a> {
    fn new(t: &'a Transition, clock: &Clock) -> Self {
        Self {
            ts_ns: t.ts_ns,
            time: clock.rfc3339(t.ts_ns),
            skaddr: format!("{:#x}", t.skaddr),
            family: t.family.name(),
            saddr: t.saddr.to_string(),
            sport: t.sport,
            daddr: t.daddr.to_string(),
            dport: t.dport,
            old_state: t.old.name(),
            new_state: t.new.name(),
            in_old_state_ns: t.in_old_state_ns,
            pid: t.owner.as_ref().map(|o| o.pid),
            comm: t.owner.as_ref().map(|o| o.comm.as_str()),
            owner_from_listener: t.owner.as_ref().map(|o| o.from_listener),
            close: t.close.map(|c| c.name()),
        }
    }
}

pub struct JsonSink<W: Write> {
    out: BatchWriter<W>,
    clock: Clock,
}

impl<W: Write> JsonSink<W> {
    pub fn new(out: W, clock: Clock) -> Self {
        Self { out: BatchWriter::new(out), clock }
    }

    pub fn into_inner(self) -> W {
        self.out.into_inner()
    }
}

impl<W: Write> Sink for JsonSink<W> {
    fn transition(&mut self, t: &Transition) -> io::Result<()> {
        let buf = self.out.buf();
        serde_json::to_writer(buf.writer(), &TransitionJson::new(t, &self.clock))?;
        buf.put_u8(b'\n');
        Ok(())
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
        for key in ["in_old_state_ns", "pid", "comm", "close"] {
            assert!(rows[1][key].is_null(), "{key} should be null");
        }
    }
}
