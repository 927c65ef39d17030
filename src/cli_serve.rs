//! `tribe serve`: addresses from flags or `[serve]`, logging set up for a long-running process,
//! and SIGTERM / Ctrl-C as the graceful stop.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use tribe::serve::{ServeOptions, serve as run_services};
use tribe::{Error, Result, Workspace};

use crate::cli::LogFormat;

pub async fn serve(
    ws: Workspace,
    collector: Option<String>,
    pg: Option<String>,
    scheduler: bool,
    log_format: LogFormat,
) -> Result<ExitCode> {
    init_logs(log_format);
    let options = ServeOptions {
        collector: address(collector, &ws.config.serve.collector, "--collector")?,
        pg: address(pg, &ws.config.serve.pg, "--pg")?,
        scheduler,
    };
    run_services(
        ws,
        options,
        stop_signal(),
        |listening| {
            if let Some(addr) = listening.collector {
                eprintln!("collector: http://{addr}/v1/batch (health: /health, metrics: /metrics)");
            }
            if let Some(addr) = listening.pg {
                eprintln!(
                    "sql: postgres://{addr} (psql \"host={} port={}\")",
                    addr.ip(),
                    addr.port()
                );
            }
        },
        |run| {
            // Scheduled runs are the process's output: one JSON line each, for log shippers.
            let mut out = std::io::stdout().lock();
            if serde_json::to_writer(&mut out, run).is_ok() {
                let _ = writeln!(out);
                let _ = out.flush();
            }
        },
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}

/// A flag's address, or the configured one when the flag has none.
fn address(flag: Option<String>, configured: &str, name: &str) -> Result<Option<SocketAddr>> {
    let Some(flag) = flag else { return Ok(None) };
    let text = if flag.is_empty() { configured } else { &flag };
    text.parse().map(Some).map_err(|_| {
        Error::Input(format!(
            "{name}: {text:?} is not an address like 127.0.0.1:8088"
        ))
    })
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,tribe=info"));
    // Colour only on a terminal: log files and journald get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Resolves on SIGTERM (how service managers stop things) or Ctrl-C.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
