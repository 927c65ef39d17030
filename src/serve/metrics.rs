//! What `GET /metrics` reports, in the Prometheus text format (prometheus-client, the Prometheus
//! project's own Rust client, renders it).

use std::sync::atomic::Ordering;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::wal::WalStats;

/// The serving process's counters.
pub struct Metrics {
    registry: Registry,
    pub requests: Counter,
    pub received: Counter,
    pub rejected: Counter,
    pub unauthorized: Counter,
    pub throttled: Counter,
    pub flushed: Counter,
    pub flush_duplicates: Counter,
    pub flush_failures: Counter,
    pub log_bytes: Gauge,
    pub sql_sessions: Gauge,
    pub sql_sessions_total: Counter,
    pub ack_seconds: Histogram,
    pub flush_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tribe");
        let m = Metrics {
            registry: Registry::default(),
            requests: Counter::default(),
            received: Counter::default(),
            rejected: Counter::default(),
            unauthorized: Counter::default(),
            throttled: Counter::default(),
            flushed: Counter::default(),
            flush_duplicates: Counter::default(),
            flush_failures: Counter::default(),
            log_bytes: Gauge::default(),
            sql_sessions: Gauge::default(),
            sql_sessions_total: Counter::default(),
            ack_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            flush_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 12)),
        };
        let r = &mut registry;
        r.register(
            "collector_requests",
            "HTTP requests to the collector's /v1 endpoints",
            m.requests.clone(),
        );
        r.register(
            "events_received",
            "Messages accepted and written to the log",
            m.received.clone(),
        );
        r.register(
            "events_rejected",
            "Messages refused (bad or oversized)",
            m.rejected.clone(),
        );
        r.register(
            "requests_unauthorized",
            "Requests with a missing or unknown write key",
            m.unauthorized.clone(),
        );
        r.register(
            "requests_throttled",
            "Requests answered 503 because the log is full",
            m.throttled.clone(),
        );
        r.register(
            "events_flushed",
            "Events committed to the events table",
            m.flushed.clone(),
        );
        r.register(
            "events_flush_duplicates",
            "Flushed events already stored (client retries, replays)",
            m.flush_duplicates.clone(),
        );
        r.register(
            "flush_failures",
            "Flushes that failed and will be retried",
            m.flush_failures.clone(),
        );
        r.register(
            "log_bytes",
            "Bytes in the write-ahead log not yet flushed",
            m.log_bytes.clone(),
        );
        r.register(
            "sql_sessions",
            "Open Postgres-protocol sessions",
            m.sql_sessions.clone(),
        );
        r.register(
            "sql_sessions_opened",
            "Postgres-protocol sessions opened",
            m.sql_sessions_total.clone(),
        );
        r.register(
            "ack_seconds",
            "Time from request to acknowledgement (events on disk)",
            m.ack_seconds.clone(),
        );
        r.register(
            "flush_seconds",
            "Time to commit one flush to the events table",
            m.flush_seconds.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The Prometheus text exposition.
    pub fn render(&self, wal: Option<&WalStats>) -> String {
        if let Some(wal) = wal {
            self.log_bytes
                .set(wal.pending_bytes.load(Ordering::SeqCst) as i64);
        }
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
