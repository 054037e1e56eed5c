//! `top` off a terminal, and `stats`: the aggregate, reported as text
//! blocks or JSON documents, every interval and/or at the end.

use std::{
    io::{self, Write},
    time::{Duration, Instant},
};

use bytes::BufMut as _;
use serde::Serialize;

use super::{AggregateView, BatchWriter, Format, ViewRequest, report_text};
use crate::model::{
    aggregate::Aggregator,
    clock::Clock,
    counters::{KernelCounters, Readings},
    report::{Report, SessionInfo},
};

#[derive(Serialize)]
pub struct Rate {
    pub old: &'static str,
    pub new: &'static str,
    pub per_s: f64,
}

/// Transitions per second between two readings of the kernel counters.
pub fn rates(now: &KernelCounters, before: &KernelCounters, seconds: f64) -> Vec<Rate> {
    let delta = now.since(before);
    let mut out: Vec<Rate> = delta
        .transitions
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(&(old, new), &n)| Rate {
            old: old.name(),
            new: new.name(),
            per_s: n as f64 / seconds.max(1e-3),
        })
        .collect();
    out.sort_by(|a, b| b.per_s.total_cmp(&a.per_s));
    out
}

/// One `top --json` document.
#[derive(Serialize)]
struct Snapshot<'a> {
    time: String,
    rates: Vec<Rate>,
    #[serde(flatten)]
    report: &'a Report,
}

/// When reports are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reports {
    /// One at the end (`stats`): the report alone.
    AtEnd,
    /// One every interval and one at the end (`top` off a terminal), each
    /// headed by its time and the rates since the last.
    Every(Duration),
}

/// `stats` and `top` off a terminal: the aggregate as reports.
pub struct Reporter<W: Write> {
    out: BatchWriter<W>,
    format: Format,
    rows: usize,
    reports: Reports,
    started: Instant,
    last: (Instant, KernelCounters),
    clock: Clock,
    info: SessionInfo,
    /// A recording's span: the report covers it, not the time since start.
    covers_s: Option<f64>,
}

impl<W: Write> Reporter<W> {
    pub fn new(out: W, format: Format, rows: usize, reports: Reports, info: SessionInfo) -> Self {
        let now = Instant::now();
        Self {
            out: BatchWriter::new(out),
            format,
            rows,
            reports,
            started: now,
            last: (now, KernelCounters::default()),
            clock: Clock::new(),
            info,
            covers_s: None,
        }
    }

    /// Reports cover `seconds` (a recording's span) and keep the session's
    /// own end time.
    pub fn covering(mut self, seconds: f64) -> Self {
        self.covers_s = Some(seconds);
        self
    }

    pub fn report(&self, aggregator: &Aggregator, readings: &Readings) -> Report {
        let elapsed = self.covers_s.unwrap_or_else(|| self.started.elapsed().as_secs_f64());
        let mut report = Report::build(aggregator, &readings.counters, self.rows, elapsed);
        report.tcpext = readings.tcpext.clone();
        report.session = match self.covers_s {
            Some(_) => self.info.clone(),
            None => SessionInfo {
                ended: humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
                ..self.info.clone()
            },
        };
        report
    }

    /// Writes one report; every interval (top), headed by the rates since
    /// the last one.
    pub fn emit(&mut self, aggregator: &Aggregator, readings: &Readings) -> io::Result<()> {
        let report = self.report(aggregator, readings);
        let counters = &readings.counters;
        let now = Instant::now();
        let rates = rates(counters, &self.last.1, now.duration_since(self.last.0).as_secs_f64());
        self.last = (now, counters.clone());
        let time = self.clock.rfc3339(Clock::monotonic_now_ns());
        let periodic = matches!(self.reports, Reports::Every(_));
        let buf = self.out.buf();
        if self.format == Format::Json {
            if periodic {
                serde_json::to_writer(buf.writer(), &Snapshot { time, rates, report: &report })?;
            } else {
                serde_json::to_writer(buf.writer(), &report)?;
            }
            buf.put_u8(b'\n');
        } else {
            let mut text = String::new();
            if periodic {
                text.push_str(&format!("--- tcpstate top {time} ---\nTransitions/s:"));
                for r in rates.iter().take(8) {
                    text.push_str(&format!("  {}->{} {:.0}", r.old, r.new, r.per_s));
                }
                text.push('\n');
            }
            report_text::render(&mut text, &report).map_err(io::Error::other)?;
            text.push('\n');
            buf.put_slice(text.as_bytes());
        }
        self.out.flush()
    }
}

impl<W: Write> AggregateView for Reporter<W> {
    fn tick(
        &mut self,
        aggregator: &Aggregator,
        read: &dyn Fn() -> io::Result<Readings>,
    ) -> io::Result<ViewRequest> {
        if let Reports::Every(interval) = self.reports
            && self.last.0.elapsed() >= interval
        {
            self.emit(aggregator, &read()?)?;
        }
        Ok(ViewRequest::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{aggregate::tests::server_closes_first, state::TcpState};

    #[test]
    fn json_documents_and_rates() {
        let mut reporter = Reporter::new(
            Vec::new(),
            Format::Json,
            5,
            Reports::Every(Duration::from_secs(1)),
            SessionInfo::default(),
        );
        let mut agg = Aggregator::new(16, 64);
        server_closes_first(&mut agg, 1);
        let mut counters = KernelCounters::default();
        counters.transitions.insert((TcpState::FIN_WAIT2, TcpState::CLOSE), 10);
        let readings = Readings { counters, ..Default::default() };
        reporter.emit(&agg, &readings).unwrap();
        reporter.emit(&agg, &readings).unwrap();
        let text = String::from_utf8(reporter.out.into_inner()).unwrap();
        let docs: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0]["time_wait"]["total"], 1);
        assert_eq!(docs[0]["rates"][0]["new"], "CLOSE");
        assert!(docs[1]["rates"].as_array().unwrap().is_empty(), "no change, no rate");
    }
}
