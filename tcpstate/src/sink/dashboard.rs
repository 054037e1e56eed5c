//! `top` on a terminal: a full-screen dashboard, refreshed every interval.
//! Keys: q/Esc quit, r reset, s sort the closes table, g group the
//! TIME_WAIT producers.

use std::{
    io,
    time::{Duration, Instant},
};

use ratatui::{
    DefaultTerminal, Frame,
    crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
    layout::{Constraint, Layout},
    style::{Color, Modifier, Style, Stylize as _},
    text::{Line, Span},
    widgets::{Block, Paragraph, Row, Table},
};

use super::{AggregateView, ViewRequest, reporter::rates};
use crate::model::{
    aggregate::{Aggregator, Sides},
    clock::Clock,
    counters::{KernelCounters, Readings},
    report::Report,
    state::CloseSide,
    transition::Comm,
};

/// How the TIME_WAIT producers are grouped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grouping {
    Process,
    LocalPort,
    Remote,
}

impl Grouping {
    fn next(self) -> Self {
        match self {
            Self::Process => Self::LocalPort,
            Self::LocalPort => Self::Remote,
            Self::Remote => Self::Process,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Process => "process",
            Self::LocalPort => "local port",
            Self::Remote => "remote",
        }
    }
}

/// Which column sorts the closes-by-process table: a side, or the total.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SortKey(Option<CloseSide>);

impl SortKey {
    fn next(self) -> Self {
        Self(match self.0 {
            None => Some(CloseSide::Active),
            Some(CloseSide::Active) => Some(CloseSide::Passive),
            Some(CloseSide::Passive) => Some(CloseSide::Simultaneous),
            Some(CloseSide::Simultaneous) => Some(CloseSide::Reset),
            Some(CloseSide::Reset) => None,
        })
    }

    fn name(self) -> &'static str {
        self.0.map_or("total", CloseSide::name)
    }

    fn score(self, s: &Sides) -> u64 {
        self.0.map_or(s.total(), |side| s.get(side))
    }
}

/// What one frame shows; built at each refresh.
pub struct View {
    pub report: Report,
    /// Transitions per second, by (old, new) state name.
    pub rates: Vec<(&'static str, &'static str, f64)>,
    pub closes_by_process: Vec<(String, Sides)>,
    pub grouping: Grouping,
    pub sort: SortKey,
    pub interval: Duration,
    pub time: String,
}

pub struct Dashboard {
    terminal: Option<DefaultTerminal>,
    interval: Duration,
    rows: usize,
    grouping: Grouping,
    sort: SortKey,
    /// Counters at the last reset: the view shows what came since.
    baseline: KernelCounters,
    last: (Instant, KernelCounters),
    since: Instant,
    clock: Clock,
    due: Instant,
}

impl Dashboard {
    pub fn new(interval: Duration, rows: usize) -> io::Result<Self> {
        let terminal = ratatui::try_init()?;
        let now = Instant::now();
        Ok(Self {
            terminal: Some(terminal),
            interval,
            rows,
            grouping: Grouping::Process,
            sort: SortKey(None),
            baseline: KernelCounters::default(),
            last: (now, KernelCounters::default()),
            since: now,
            clock: Clock::new(),
            due: now,
        })
    }

    fn view(&mut self, aggregator: &Aggregator, readings: &Readings) -> View {
        let counters = &readings.counters;
        let shown = counters.since(&self.baseline);
        let now = Instant::now();
        let rates = rates(counters, &self.last.1, now.duration_since(self.last.0).as_secs_f64())
            .into_iter()
            .map(|r| (r.old, r.new, r.per_s))
            .collect();
        self.last = (now, counters.clone());
        let sort = self.sort;
        let (rows, _) = aggregator.closes_by_process.top(self.rows, |s| sort.score(s));
        View {
            report: Report::build(aggregator, &shown, self.rows, self.since.elapsed().as_secs_f64()),
            rates,
            closes_by_process: rows.into_iter().map(|(k, s)| (who(k.pid, k.comm.as_ref()), s)).collect(),
            grouping: self.grouping,
            sort: self.sort,
            interval: self.interval,
            time: self.clock.rfc3339(Clock::monotonic_now_ns()),
        }
    }

    /// Handles waiting keys: `Stop` on quit, `Reset` on `r`.
    fn keys(&mut self, read: &dyn Fn() -> io::Result<Readings>) -> io::Result<ViewRequest> {
        let mut request = ViewRequest::Continue;
        while event::poll(Duration::ZERO)? {
            let Event::Key(key) = event::read()? else { continue };
            if key.kind != KeyEventKind::Press {
                continue;
            }
            match key.code {
                KeyCode::Char('q') | KeyCode::Esc => return Ok(ViewRequest::Stop),
                KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                    return Ok(ViewRequest::Stop);
                }
                KeyCode::Char('r') => {
                    request = ViewRequest::Reset;
                    self.baseline = read()?.counters;
                    self.since = Instant::now();
                }
                KeyCode::Char('s') => self.sort = self.sort.next(),
                KeyCode::Char('g') => self.grouping = self.grouping.next(),
                _ => continue,
            }
            self.due = Instant::now();
        }
        Ok(request)
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        if self.terminal.take().is_some() {
            ratatui::restore();
        }
    }
}

impl AggregateView for Dashboard {
    fn tick(
        &mut self,
        aggregator: &Aggregator,
        read: &dyn Fn() -> io::Result<Readings>,
    ) -> io::Result<ViewRequest> {
        let request = self.keys(read)?;
        // After a reset, the next tick draws the fresh aggregate.
        if request == ViewRequest::Continue && Instant::now() >= self.due {
            self.due = Instant::now() + self.interval;
            let view = self.view(aggregator, &read()?);
            if let Some(terminal) = &mut self.terminal {
                terminal.draw(|frame| draw(frame, &view))?;
            }
        }
        Ok(request)
    }
}

/// An owner in one cell: pid, then name.
fn who(pid: Option<u32>, comm: Option<&Comm>) -> String {
    let (pid, comm) = super::owner_columns(pid, comm);
    format!("{pid:<7} {comm}")
}

fn ms(ns: u64) -> String {
    format!("{:.3}", ns as f64 / 1e6)
}

fn header(cells: &[&'static str]) -> Row<'static> {
    Row::new(cells.to_vec()).style(Style::new().add_modifier(Modifier::BOLD))
}

/// Below this width, state names are abbreviated (as `ss` does) and the
/// closes table keeps its two main columns.
const NARROW: u16 = 110;
/// Below this height, the boxes shrink to fit an 80×24 terminal.
const SHORT: u16 = 34;

/// A state name in at most 8 characters, deliberately: `ESTAB`, `FIN_W2`.
fn short_state(name: &str) -> &str {
    match name {
        "ESTABLISHED" => "ESTAB",
        "FIN_WAIT1" => "FIN_W1",
        "FIN_WAIT2" => "FIN_W2",
        "TIME_WAIT" => "TIME_W",
        "CLOSE_WAIT" => "CLOSE_W",
        other => other,
    }
}

pub fn draw(frame: &mut Frame<'_>, v: &View) {
    let r = &v.report;
    let area = frame.area();
    let narrow = area.width < NARROW;
    let short = area.height < SHORT;
    let state = |name: &'static str| if narrow { short_state(name) } else { name };
    let states_shown = r.time_in_state.len() as u16 + u16::from(r.lifetime.is_some());
    let [title, top, middle, bottom, help] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(if short { 7 } else { 10 }),
        Constraint::Min(if short { 5 } else { 8 }),
        Constraint::Length(if short { (states_shown + 3).min(8) } else { states_shown + 4 }),
        Constraint::Length(1),
    ])
    .areas(area);

    let mut spans = vec![
        Span::raw(format!(
            " tcpstate top  {}  every {:?}  {:.0} s  events {}  ",
            v.time, v.interval, r.elapsed_s, r.losses.events_received
        ))
        .bold(),
    ];
    if r.losses.events_dropped > 0 {
        spans.push(
            Span::raw(format!(" DROPPED {} (raise --ring-size) ", r.losses.events_dropped))
                .style(Style::new().fg(Color::White).bg(Color::Red).add_modifier(Modifier::BOLD)),
        );
    } else {
        spans.push(Span::raw("dropped 0"));
    }
    let warn = Style::new().fg(Color::Black).bg(Color::Yellow);
    if r.losses.sockets_evicted > 0 {
        spans.push(
            Span::raw(format!(" EVICTED {} (raise --max-sockets) ", r.losses.sockets_evicted)).style(warn),
        );
    }
    if r.losses.sockets_with_missed_transitions > 0 {
        spans.push(
            Span::raw(format!(" missed transitions {} ", r.losses.sockets_with_missed_transitions))
                .style(warn),
        );
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), title);

    let (states_w, sides_w) = if narrow { (24, 20) } else { (30, 30) };
    let [states, rates, sides] =
        Layout::horizontal([Constraint::Length(states_w), Constraint::Min(20), Constraint::Length(sides_w)])
            .areas(top);
    // Full sockets by state, then the connections in timewait sockets now,
    // which are no full socket's state.
    let mut state_rows: Vec<Row<'_>> = r
        .sockets
        .by_state
        .iter()
        .map(|c| Row::new(vec![state(c.state).to_string(), c.count.to_string()]))
        .collect();
    if let Some(e) = &r.timewait_ends {
        state_rows.push(Row::new(vec!["TIME_WAIT now".to_string(), e.in_time_wait_now.to_string()]).bold());
        state_rows.push(Row::new(vec!["FIN_W2 now".to_string(), e.in_fin_wait2_now.to_string()]));
    }
    let followed = match r.sockets.followed {
        0 => "Sockets: none open".to_string(),
        n => format!("Sockets: {n}"),
    };
    frame.render_widget(
        Table::new(state_rows, [Constraint::Length(13), Constraint::Length(8)])
            .block(Block::bordered().title(followed)),
        states,
    );
    let rate_rows = v.rates.iter().map(|(old, new, per_s)| {
        Row::new(vec![format!("{} -> {}", state(old), state(new)), format!("{per_s:.0}")])
    });
    frame.render_widget(
        Table::new(rate_rows, [Constraint::Min(14), Constraint::Length(8)])
            .header(header(&["TRANSITION", "PER S"]))
            .block(Block::bordered().title("Transitions/s")),
        rates,
    );
    let c = &r.closes.total;
    let simultaneous = if narrow { "simult" } else { "simultaneous" };
    let side_rows =
        [("active", c.active), ("passive", c.passive), (simultaneous, c.simultaneous), ("reset", c.reset)]
            .map(|(n, v)| Row::new(vec![n.to_string(), v.to_string()]));
    frame.render_widget(
        Table::new(side_rows, [Constraint::Length(if narrow { 8 } else { 14 }), Constraint::Length(9)])
            .block(Block::bordered().title(format!("Closes, {} no side", r.closes.unknown))),
        sides,
    );

    let [producers, closes] =
        Layout::horizontal([Constraint::Percentage(45), Constraint::Percentage(55)]).areas(middle);
    let tw = &r.time_wait;
    let tw_rows: Vec<Row<'_>> = match v.grouping {
        Grouping::Process => tw
            .by_process
            .rows
            .iter()
            .map(|p| Row::new(vec![who(p.pid, p.comm.as_ref()), p.count.to_string()]))
            .collect(),
        Grouping::LocalPort => tw
            .by_local_port
            .rows
            .iter()
            .map(|p| Row::new(vec![super::local_port_label(p.port), p.count.to_string()]))
            .collect(),
        Grouping::Remote => tw
            .by_remote
            .rows
            .iter()
            .map(|e| Row::new(vec![super::remote_label(e.addr, e.port), e.count.to_string()]))
            .collect(),
    };
    frame.render_widget(
        Table::new(tw_rows, [Constraint::Min(24), Constraint::Length(10)])
            .header(header(&["BY", "TIME_WAIT"]))
            .block(Block::bordered().title(if narrow {
                format!("TIME_WAIT: {} (g: {})", tw.total, v.grouping.name())
            } else {
                format!("TIME_WAIT producers: {} (g: by {})", tw.total, v.grouping.name())
            })),
        producers,
    );
    // Narrow: the two sides that matter for TIME_WAIT; the others are in
    // the Closes box.
    let columns = if narrow { 3 } else { 5 };
    let close_rows = v.closes_by_process.iter().map(|(who, s)| {
        let cells = [
            who.clone(),
            s.active.to_string(),
            s.passive.to_string(),
            s.simultaneous.to_string(),
            s.reset.to_string(),
        ];
        Row::new(cells[..columns].to_vec())
    });
    let widths = [
        Constraint::Min(16),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(8),
    ];
    let titles = ["PID     COMM", "ACTIVE", "PASSIVE", "SIMULT", "RESET"];
    let sorted = if narrow { "s: sort" } else { "s: sorted by" };
    frame.render_widget(
        Table::new(close_rows, widths[..columns].to_vec())
            .header(header(&titles[..columns]))
            .block(Block::bordered().title(format!("Closes by process ({sorted} {})", v.sort.name()))),
        closes,
    );

    let lifetime = r.lifetime.as_ref().map(|x| ("(lifetime)", x));
    let dist_rows =
        r.time_in_state.iter().map(|d| (d.state, &d.distribution)).chain(lifetime).map(|(name, x)| {
            Row::new(vec![
                state(name).to_string(),
                x.count.to_string(),
                ms(x.min_ns),
                ms(x.p50_ns),
                ms(x.p90_ns),
                ms(x.p99_ns),
                ms(x.max_ns),
            ])
        });
    frame.render_widget(
        Table::new(
            dist_rows,
            [
                Constraint::Length(if narrow { 10 } else { 12 }),
                Constraint::Length(8),
                Constraint::Length(10),
                Constraint::Length(10),
                Constraint::Length(10),
                Constraint::Length(10),
                Constraint::Length(10),
            ],
        )
        .header(header(&["STATE", "COUNT", "MIN ms", "P50 ms", "P90 ms", "P99 ms", "MAX ms"]))
        .block(Block::bordered().title(match (&r.timewait_ends, narrow) {
            (Some(e), false) => format!(
                "Time in state (TIME_WAIT and FIN_WAIT2 include timewait sockets, which ended: expired {}, reused {}, killed {}, unobserved {})",
                e.total.expired, e.total.reused, e.total.killed, e.total.unobserved
            ),
            (Some(e), true) => format!(
                "Time in state; timewait ended: expired {}, reused {}, killed {}, unseen {}",
                e.total.expired, e.total.reused, e.total.killed, e.total.unobserved
            ),
            (None, _) => "Time in state".to_string(),
        })),
        bottom,
    );
    frame.render_widget(Paragraph::new(" q quit  r reset  s sort closes  g group producers").dim(), help);
}

#[cfg(test)]
mod tests {
    use ratatui::{Terminal, backend::TestBackend};

    use super::*;
    use crate::model::aggregate::tests::server_closes_first;
    use crate::model::timewait::Sources;

    fn view(dropped: u64) -> View {
        let mut agg = Aggregator::new(16, 64).following_timewait(Some(Sources::default()));
        for sk in 0..3 {
            server_closes_first(&mut agg, sk);
        }
        let counters = KernelCounters { received: 15, ringbuf_full: dropped, ..Default::default() };
        View {
            report: Report::build(&agg, &counters, 10, 3.0),
            rates: vec![("FIN_WAIT2", "CLOSE", 3.0), ("ESTABLISHED", "FIN_WAIT1", 3.0)],
            closes_by_process: vec![("7       nginx".into(), agg.closes)],
            grouping: Grouping::Process,
            sort: SortKey(None),
            interval: Duration::from_secs(1),
            time: "2026-11-27T00:00:00.000000Z".into(),
        }
    }

    fn screen(v: &View) -> String {
        screen_of(v, 130, 40)
    }

    fn screen_of(v: &View, width: u16, height: u16) -> String {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal.draw(|f| draw(f, v)).unwrap();
        let buffer = terminal.backend().buffer().clone();
        (0..buffer.area.height)
            .map(|y| {
                (0..buffer.area.width).map(|x| buffer[(x, y)].symbol().to_string()).collect::<String>() + "\n"
            })
            .collect()
    }

    #[test]
    fn shows_producers_sides_and_percentiles() {
        let text = screen(&view(0));
        assert!(text.contains("TIME_WAIT producers: 3"), "{text}");
        assert!(text.contains("7       nginx"), "{text}");
        assert!(text.contains("FIN_WAIT2 -> CLOSE"), "{text}");
        assert!(text.contains("FIN_WAIT1"), "{text}");
        assert!(text.contains("dropped 0"), "{text}");
        assert!(text.contains("q quit"), "{text}");
        assert!(text.contains("which ended: expired 0, reused 0, killed 0"), "{text}");
    }

    /// At 80×24 every box shows, and words are abbreviated on purpose
    /// rather than cut: `ESTAB -> FIN_W1`, `simult`, whole column titles.
    #[test]
    fn fits_80_by_24() {
        let text = screen_of(&view(0), 80, 24);
        for whole in [
            "ESTAB -> FIN_W1",
            "FIN_W2 -> CLOSE",
            "simult",
            "ACTIVE",
            "PASSIVE",
            "TIME_WAIT: 3 (g: process)",
            "TIME_WAIT now",
            "FIN_W2 now",
            "Sockets: none open",
            "P50 ms",
            "MAX ms",
            "q quit",
        ] {
            assert!(text.contains(whole), "{whole} missing:\n{text}");
        }
        for cut in ["simultaneou", "ESTABLISHED -> FI", "ACTIV ", "PASS "] {
            assert!(!text.contains(cut), "{cut} is a cut word:\n{text}");
        }
    }

    #[test]
    fn drops_are_prominent() {
        assert!(screen(&view(42)).contains("DROPPED 42"));
    }

    #[test]
    fn keys_cycle() {
        assert_eq!(Grouping::Process.next().next().next(), Grouping::Process);
        let mut s = SortKey(None);
        let names: Vec<_> = (0..5)
            .map(|_| {
                s = s.next();
                s.name()
            })
            .collect();
        assert_eq!(names, ["active", "passive", "simultaneous", "reset", "total"]);
    }
}
