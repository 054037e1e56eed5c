//! `trace --csv`: one row per transition or timewait event, under a header
//! line, as BCC's `-s` does; the fields are the JSON lines' names.

use std::io::{self, Write};

use super::Sink;
use crate::model::{
    clock::Clock,
    socket::FourTuple,
    timewait::TwEvent,
    transition::{Owner, Transition},
};

const HEADER: [&str; 17] = [
    "kind",
    "time",
    "ts_ns",
    "netns",
    "pid",
    "comm",
    "saddr",
    "sport",
    "daddr",
    "dport",
    "old_state",
    "new_state",
    "in_old_state_ns",
    "close",
    "error",
    "handover",
    "container",
];

pub struct CsvSink<W: Write> {
    out: ::csv::Writer<W>,
    clock: Clock,
}

impl<W: Write> CsvSink<W> {
    pub fn new(out: W, clock: Clock) -> io::Result<Self> {
        let mut out = ::csv::Writer::from_writer(out);
        out.write_record(HEADER).map_err(io_error)?;
        out.flush()?;
        Ok(Self { out, clock })
    }

    #[cfg(test)]
    pub fn into_inner(self) -> W {
        self.out.into_inner().map_err(|e| e.into_error()).expect("flushed on every drain")
    }
}

/// The writer's I/O error as it was, so that a closed stdout still ends
/// quietly (the csv crate's own conversion makes every error `Other`).
fn io_error(e: ::csv::Error) -> io::Error {
    match e.into_kind() {
        ::csv::ErrorKind::Io(e) => e,
        other => io::Error::other(format!("{other:?}")),
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or(String::new(), |v| v.to_string())
}

impl<W: Write> CsvSink<W> {
    /// One row: the columns every row has (what, when, where, whose, which
    /// connection), then the `rest` (states, duration, close, error,
    /// handover, container).
    fn row(
        &mut self,
        kind: &str,
        at_ns: u64,
        netns: u32,
        owner: Option<&Owner>,
        tuple: &FourTuple,
        rest: [String; 7],
    ) -> io::Result<()> {
        let common = [
            kind.to_string(),
            self.clock.rfc3339(at_ns),
            at_ns.to_string(),
            netns.to_string(),
            opt(owner.map(|o| o.pid)),
            opt(owner.map(|o| o.comm.as_str().to_string())),
            tuple.saddr.to_string(),
            tuple.sport.to_string(),
            tuple.daddr.to_string(),
            tuple.dport.to_string(),
        ];
        self.out.write_record(common.iter().chain(&rest)).map_err(io_error)
    }
}

impl<W: Write> Sink for CsvSink<W> {
    fn transition(&mut self, t: &Transition) -> io::Result<()> {
        let rest = [
            t.old.name().into(),
            t.new.name().into(),
            opt(t.in_old_state_ns),
            opt(t.close.map(|c| c.name())),
            opt(t.error.map(|e| e.name())),
            t.enters_time_wait().to_string(),
            opt(t.cgroup.as_ref().map(|c| c.label.clone())),
        ];
        self.row("transition", t.ts_ns, t.netns, t.owner.as_ref(), &t.tuple, rest)
    }

    /// A timewait event as a row of its own: the substates as `trace`'s
    /// text shows them (`tw:TIME_WAIT`), the duration of the phase it ends.
    fn timewait(&mut self, e: &TwEvent) -> io::Result<()> {
        let k = e.key();
        let (old, new, ns) = super::text::timewait_columns(e);
        let rest = [old, new, opt(ns), String::new(), String::new(), String::new(), String::new()];
        self.row("timewait", e.at_ns(), k.netns, e.owner(), &k.tuple, rest)
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
    fn header_and_quoted_rows() {
        let mut sink = CsvSink::new(Vec::new(), Clock::with_offset(0)).unwrap();
        let mut raw = raw_event();
        raw.comm[..8].copy_from_slice(b"a,\"b\" c\0");
        sink.transition(&Transition::from_raw(&raw)).unwrap();
        sink.flush().unwrap();
        let text = String::from_utf8(sink.into_inner()).unwrap();
        let mut rows = ::csv::Reader::from_reader(text.as_bytes());
        assert_eq!(rows.headers().unwrap().iter().collect::<Vec<_>>(), HEADER);
        let row = rows.records().next().unwrap().unwrap();
        assert_eq!(row.len(), HEADER.len());
        assert_eq!(&row[0], "transition");
        assert_eq!(&row[5], "a,\"b\" c", "a comm with a comma and quotes survives");
        assert_eq!((&row[10], &row[11], &row[13]), ("ESTABLISHED", "FIN_WAIT1", "active"));
        assert_eq!(&row[12], "1500000");
        assert_eq!(&row[15], "false");
    }
}
