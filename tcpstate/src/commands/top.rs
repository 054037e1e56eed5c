//! `tcpstate top`: the aggregate, live: a dashboard on a terminal, a report
//! every interval otherwise.

use super::{Output, stats::report_at_end};
use crate::{
    config::{Report, View},
    session,
    sink::{
        Aggregating,
        dashboard::Dashboard,
        notices,
        reporter::{Reporter, Reports},
    },
};

pub async fn run(config: Report, out: Output<'_>) -> anyhow::Result<()> {
    let mut session = session::start(&config.session)?;
    let reports = match config.view {
        View::Dashboard(interval) => {
            let view = Dashboard::new(interval, config.rows)?;
            let mut dashboard = Aggregating { aggregator: session.aggregator(), view };
            session.run(&mut dashboard).await?;
            return Ok(());
        }
        View::Periodic(interval) => Reports::Every(interval),
        View::Final => Reports::AtEnd,
    };
    let reporter = Reporter::new(out.writer, config.format, config.rows, reports, session.info());
    (out.notices)(&notices::start_line(
        "Tracing TCP state transitions",
        session.following(),
        "Hit Ctrl-C to end.",
    ));
    report_at_end(session, reporter, out.notices).await
}
