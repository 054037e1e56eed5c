//! `top` off a terminal, and `stats`: the aggregate, reported as text
//! blocks or JSON documents, every interval and/or at the end.

use std::{
    collections::BTreeMap,
    io::{self, Write},
    time::{Duration, Instant},
};

use bytes::BufMut as _;
use serde::Serialize;

use super::{AggregateView, BatchWriter, Flow, report};
use crate::{
    model::{aggregate::Aggregator, clock::Clock, counters::KernelCounters, report::Report},
    source::procnet,
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

/// `stats` and `top` off a terminal: the aggregate as reports.
pub struct Reporter<W: Write> {
    out: BatchWriter<W>,
    json: bool,
    top: usize,
    /// Report every `interval` (top), or only at the end (stats).
    interval: Option<Duration>,
    started: Instant,
    last: (Instant, KernelCounters),
    clock: Clock,
    tcpext_at_start: BTreeMap<String, u64>,
}

impl<W: Write> Reporter<W> {
    pub fn new(out: W, json: bool, top: usize, interval: Option<Duration>) -> Self {
        let now = Instant::now();
        Self {
            out: BatchWriter::new(out),
            json,
            top,
            interval,
            started: now,
            last: (now, KernelCounters::default()),
            clock: Clock::new(),
            tcpext_at_start: procnet::tcpext(),
        }
    }

    pub fn report(&self, aggregator: &Aggregator, counters: &KernelCounters) -> Report {
        let mut report = Report::build(aggregator, counters, self.top, self.started.elapsed().as_secs_f64());
        report.tcpext = procnet::delta(&self.tcpext_at_start, &procnet::tcpext());
        report
    }

    /// Writes one report; with an interval (top), headed by the rates since
    /// the last one.
    pub fn emit(&mut self, aggregator: &Aggregator, counters: &KernelCounters) -> io::Result<()> {
        let report = self.report(aggregator, counters);
        let now = Instant::now();
        let rates = rates(counters, &self.last.1, now.duration_since(self.last.0).as_secs_f64());
        self.last = (now, counters.clone());
        let time = self.clock.rfc3339(Clock::monotonic_now_ns());
        let buf = self.out.buf();
        if self.json {
            if self.interval.is_some() {
                serde_json::to_writer(buf.writer(), &Snapshot { time, rates, report: &report })?;
            } else {
                serde_json::to_writer(buf.writer(), &report)?;
            }
            buf.put_u8(b'\n');
        } else {
            let mut text = String::new();
            if self.interval.is_some() {
                text.push_str(&format!("--- tcpstate top {time} ---\nTransitions/s:"));
                for r in rates.iter().take(8) {
                    text.push_str(&format!("  {}->{} {:.0}", r.old, r.new, r.per_s));
                }
                text.push('\n');
            }
            report::render(&mut text, &report).map_err(io::Error::other)?;
            text.push('\n');
            buf.put_slice(text.as_bytes());
        }
        self.out.flush()
    }
}

impl<W: Write> AggregateView for Reporter<W> {
    fn tick(
        &mut self,
        aggregator: &mut Aggregator,
        counters: &dyn Fn() -> io::Result<KernelCounters>,
    ) -> io::Result<Flow> {
        if let Some(interval) = self.interval
            && self.last.0.elapsed() >= interval
        {
            self.emit(aggregator, &counters()?)?;
        }
        Ok(Flow::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{aggregate::tests::server_closes_first, transition::TcpState};

    #[test]
    fn json_documents_and_rates() {
        let mut reporter = Reporter::new(Vec::new(), true, 5, Some(Duration::from_secs(1)));
        let mut agg = Aggregator::new(16, 64);
        server_closes_first(&mut agg, 1);
        let mut counters = KernelCounters::default();
        counters.transitions.insert((TcpState::FIN_WAIT2, TcpState::CLOSE), 10);
        reporter.emit(&agg, &counters).unwrap();
        reporter.emit(&agg, &counters).unwrap();
        let text = String::from_utf8(reporter.out.into_inner()).unwrap();
        let docs: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0]["time_wait"]["total"], 1);
        assert_eq!(docs[0]["rates"][0]["new"], "CLOSE");
        assert!(docs[1]["rates"].as_array().unwrap().is_empty(), "no change, no rate");
    }
}
