//! `tcpstate export`: the aggregate as a Prometheus / OpenMetrics endpoint,
//! for fleets. Summary mode, as `stats`: the kernel counts, tcpstate keeps
//! a snapshot a second, and each scrape encodes the latest.

use std::sync::Arc;

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::get,
};
use tokio::sync::Semaphore;

use super::Output;
use crate::{
    config::Export,
    session,
    sink::{
        Aggregating,
        metrics::{MetricsView, Shared},
        notices,
    },
};

/// How long scrapes under way may take to finish once the session ends.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);
/// Scrapes served at once; more get 503 rather than queueing.
const CONCURRENT_SCRAPES: usize = 4;
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone)]
struct Served {
    metrics: Shared,
    scrapes: Arc<Semaphore>,
}

async fn metrics(State(served): State<Served>, headers: HeaderMap) -> Response {
    let Ok(_permit) = served.scrapes.try_acquire() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "too many scrapes at once\n").into_response();
    };
    // OpenMetrics for whoever asks for it (Prometheus does), else the
    // classic text format.
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let content_type = if openmetrics { OPENMETRICS } else { PROMETHEUS_TEXT };
    match served.metrics.encode(openmetrics) {
        Ok(text) => ([(header::CONTENT_TYPE, content_type)], text).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n").into_response(),
    }
}

async fn index() -> Html<&'static str> {
    Html(
        "<!doctype html><title>tcpstate</title><h1>tcpstate</h1>\
         <p>TCP state transitions, close sides and TIME_WAIT producers: <a href=\"/metrics\">/metrics</a></p>",
    )
}

async fn not_found() -> (StatusCode, &'static str) {
    (StatusCode::NOT_FOUND, "not found: tcpstate serves /metrics\n")
}

pub async fn run(config: Export, out: Output<'_>) -> anyhow::Result<()> {
    // Bound first: a port in use fails before the program loads.
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let mut session = session::start(&config.session)?;
    let shared = Shared::default();
    let mut view = MetricsView::new(shared.clone());
    let aggregator = session.aggregator().workload_rows(config.max_series);
    // The first scrape already has every metric.
    view.refresh(&aggregator, &session.readings()?);

    let served = Served { metrics: shared, scrapes: Arc::new(Semaphore::new(CONCURRENT_SCRAPES)) };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/", get(index))
        .fallback(not_found)
        .with_state(served);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    (out.notices)(&notices::start_line(
        &format!("Exporting TCP state metrics on http://{}/metrics", config.listen),
        session.following(),
        "Hit Ctrl-C to end.",
    ));
    let mut sink = Aggregating { aggregator, view };
    let reason = session.run(&mut sink).await;
    let _ = stop.send(());
    // Scrapes under way may finish; a client that never finishes its
    // request must not hold the exit.
    let mut server = server;
    match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
        Ok(Ok(Err(e))) => log::warn!("the metrics server failed: {e}"),
        Ok(Err(e)) => log::warn!("the metrics server failed: {e}"),
        Ok(Ok(Ok(()))) => {}
        Err(_) => server.abort(),
    }
    let reason = reason?;
    log::info!("export ended: {reason:?}");
    if let Some(stats) = session.follower_stats() {
        (out.notices)(&notices::follower(&stats));
    }
    Ok(())
}
