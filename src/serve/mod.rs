//! `tribe serve`: the long-running doors into a workspace. It owns the Segment-compatible
//! collector (HTTP, with its write-ahead log and flusher), the Postgres-protocol SQL endpoint,
//! the export scheduler loop, `/health` and `/metrics`, and graceful shutdown (stop taking
//! requests, answer those in flight, flush what was acknowledged).

pub mod collector;
pub mod config;
pub mod flush;
pub mod metrics;
pub mod pg;
pub mod wal;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use chrono::Utc;

pub use config::ServeConfig;

use crate::error::{Error, Result};
use crate::schedule::ScheduledRun;
use crate::workspace::Workspace;

/// What to serve.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    pub collector: Option<SocketAddr>,
    pub pg: Option<SocketAddr>,
    pub scheduler: bool,
}

/// Where the services listen, once bound (port 0 in the options picks a free port).
#[derive(Debug, Clone, Default)]
pub struct Listening {
    pub collector: Option<SocketAddr>,
    pub pg: Option<SocketAddr>,
}

/// Runs the services until `shutdown` resolves, then shuts down gracefully. `ready` is called
/// once everything listens; `on_run` with each scheduled export run.
pub async fn serve(
    ws: Workspace,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
    ready: impl FnOnce(&Listening),
    on_run: impl Fn(&ScheduledRun) + Send + Sync + 'static,
) -> Result<()> {
    if options.collector.is_none() && options.pg.is_none() && !options.scheduler {
        return Err(Error::Input(
            "tribe serve: name a service to run (--collector, --pg, --scheduler)".into(),
        ));
    }
    let ws = Arc::new(ws);
    let metrics = Arc::new(metrics::Metrics::new());
    let mut listening = Listening::default();
    // The HTTP server stops first; the final flush starts once its last request is answered.
    let (stop_http, http_stopped) = tokio::sync::watch::channel(false);
    let (stop_flush, flush_stopped) = tokio::sync::watch::channel(false);

    let mut http = None;
    let mut flusher = None;
    if let Some(addr) = options.collector {
        let keys = ws.config.serve.write_key_sources()?;
        if keys.is_empty() {
            return Err(Error::Input(
                "the collector needs write keys: add [serve.write_keys] to tribe.toml \
                 (source = \"key\" or \"env:VARIABLE\")"
                    .into(),
            ));
        }
        let wal = wal::Wal::open(&ws.config.serve.wal_path(&ws.dir))?;
        let mut setup =
            crate::ingest::events::ParseSetup::prepare(&ws, Utc::now().timestamp_micros()).await?;
        // The size limit applies to a message as sent, and the collector checks it on receipt.
        // What it logs has grown (receivedAt, batch context): neither the check on receipt nor
        // the flush may refuse a message for that.
        let max_message_bytes = setup.rules.max_bytes;
        setup.rules.max_bytes = usize::MAX;
        let state = Arc::new(collector::Collector::new(
            wal.clone(),
            keys,
            setup.rules.clone(),
            max_message_bytes,
            ws.config.serve.max_log_bytes,
            metrics.clone(),
        ));
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Input(format!("collector: cannot listen on {addr}: {e}")))?;
        listening.collector = listener.local_addr().ok();
        // Not spawned: a Delta append is not `Sync`, so the flush runs on this task, joined below.
        flusher = Some(flush::run(
            ws.clone(),
            setup,
            wal,
            metrics.clone(),
            flush_stopped.clone(),
        ));
        let mut stop = http_stopped.clone();
        let app = collector::router(state);
        // Answers go out at once, not after the client's delayed ACK (Nagle: ~40 ms a request).
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        http = Some(tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
        }));
    }

    let mut pg_task = None;
    if let Some(addr) = options.pg {
        let endpoint = pg::PgEndpoint::bind(ws.clone(), addr, metrics.clone()).await?;
        listening.pg = endpoint.local_addr();
        pg_task = Some(tokio::spawn(endpoint.run()));
    }

    let scheduler = options
        .scheduler
        .then(|| tokio::spawn(scheduler_loop(ws.dir.clone(), on_run)));

    for (what, addr) in [("collector", listening.collector), ("sql", listening.pg)] {
        if let Some(addr) = addr {
            tracing::info!(%addr, "{what} listening");
        }
    }
    ready(&listening);
    let flushing = async {
        if let Some(flusher) = flusher {
            flusher.await;
        }
    };
    let stopping = async {
        shutdown.await;
        tracing::info!("shutting down: finishing requests in flight and flushing the log");
        if let Some(task) = scheduler {
            task.abort();
        }
        if let Some(task) = pg_task {
            task.abort();
        }
        let _ = stop_http.send(true);
        if let Some(task) = http
            && let Ok(Err(e)) = task.await
        {
            tracing::error!(error = %e, "collector stopped with an error");
        }
        let _ = stop_flush.send(true);
    };
    tokio::join!(flushing, stopping);
    tracing::info!("stopped");
    Ok(())
}

/// Runs due exports, then sleeps until the next scheduled time (at most a minute, so retries and
/// edits to the exports are picked up). The workspace is re-read each pass for the same reason.
async fn scheduler_loop(dir: std::path::PathBuf, on_run: impl Fn(&ScheduledRun)) {
    loop {
        let ws = match Workspace::open(&dir) {
            Ok(ws) => ws,
            Err(e) => {
                tracing::error!(error = %e, "scheduler: cannot open the workspace");
                tokio::time::sleep(std::time::Duration::from_secs(60)).await;
                continue;
            }
        };
        match crate::schedule::run_due(&ws, Utc::now()).await {
            Ok(report) => report.iter().for_each(&on_run),
            Err(e) => tracing::error!(error = %e, "scheduler pass failed"),
        }
        let next = crate::schedule::next_scheduled(&ws, Utc::now()).unwrap_or(None);
        let cap = Utc::now() + chrono::Duration::seconds(60);
        let wake = next.map_or(cap, |n| n.min(cap));
        tokio::time::sleep((wake - Utc::now()).to_std().unwrap_or_default()).await;
    }
}
