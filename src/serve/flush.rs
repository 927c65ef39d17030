//! Moves what the collector logged into the tables: sealed log segments become one atomic commit
//! to `events` (deduplicated by message id, so a replay after a crash or a client's retry stores
//! nothing twice), refusals go to `rejected`, and only then are the segments deleted.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::metrics::Metrics;
use super::wal::{Segment, Wal};
use crate::error::{Error, Result};
use crate::ingest::batch::EventBatchBuilder;
use crate::ingest::events::ParseSetup;
use crate::ingest::input::PositionKind;
use crate::ingest::message::parse_message;
use crate::ingest::rejected::{self, RejectedRow, raw_excerpt};
use crate::privacy::tombstone::{Tombstones, Verdict};
use crate::storage::append::{Append, CommitResult, KeyScope};
use crate::workspace::Workspace;

/// A message the collector refused, kept in the log until it reaches `rejected`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Refusal {
    pub source: String,
    pub endpoint: String,
    pub field: Option<String>,
    pub reason: String,
    pub raw: String,
}

/// A log record: an accepted message of a source, or a refusal.
pub enum Record<'a> {
    Event { source: &'a str, json: &'a str },
    Refused(Refusal),
}

/// Encodes an accepted message for the log.
pub fn event_record(source: &str, json: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(source.len() + json.len() + 2);
    out.push(b'E');
    out.extend_from_slice(source.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(json.as_bytes());
    out
}

/// Encodes a refusal for the log.
pub fn refusal_record(refusal: &Refusal) -> Vec<u8> {
    let mut out = vec![b'R'];
    serde_json::to_writer(&mut out, refusal).expect("a refusal serialises");
    out
}

/// Decodes a log record; `None` for bytes no collector wrote.
pub fn decode(payload: &[u8]) -> Option<Record<'_>> {
    match payload.split_first()? {
        (b'E', rest) => {
            let text = std::str::from_utf8(rest).ok()?;
            let (source, json) = text.split_once('\n')?;
            Some(Record::Event { source, json })
        }
        (b'R', rest) => serde_json::from_slice(rest).ok().map(Record::Refused),
        _ => None,
    }
}

/// What one flush stored.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Flushed {
    pub segments: usize,
    pub inserted: u64,
    pub duplicates: u64,
    pub rejected: u64,
}

/// Rows per Arrow batch handed to the table writer.
const BATCH_ROWS: usize = 64 * 1024;

/// Seals the log and commits every sealed segment. Returns what was stored.
pub(crate) async fn flush_once(
    ws: &Workspace,
    setup: &mut ParseSetup,
    wal: &Wal,
    metrics: &Metrics,
) -> Result<Flushed> {
    let segments = wal.seal().await?;
    if segments.is_empty() {
        return Ok(Flushed::default());
    }
    let started = Instant::now();
    let now = chrono::Utc::now().timestamp_micros();
    let mut outcome = None;
    let mut rejects = Vec::new();
    // Reloaded at every flush: a person forgotten while the collector runs stays out.
    setup.tombstones = Tombstones::load(ws).await?;
    let mut suppressed = 0;
    // A concurrent writer that stored some of the same messages makes the append start over.
    for _ in 0..5 {
        rejects.clear();
        suppressed = 0;
        let mut append =
            Append::start(&ws.storage, &setup.spec, "message_id", KeyScope::PerDay).await?;
        if let Err(e) =
            write_segments(&segments, setup, &mut append, &mut rejects, &mut suppressed).await
        {
            append.abort().await;
            return Err(e);
        }
        let metadata = HashMap::from([(
            "tribe.operation".to_string(),
            serde_json::json!("collector flush"),
        )]);
        if let CommitResult::Done(done) = append.commit(metadata).await? {
            outcome = Some(done);
            break;
        }
    }
    let outcome = outcome.ok_or_else(|| {
        Error::Other(
            "collector flush: gave up after 5 restarts caused by concurrent writers".into(),
        )
    })?;
    if !rejects.is_empty() {
        rejected::store(&ws.storage, &rejects, now).await?;
    }
    setup.tombstones.record_lifts(ws).await?;
    if suppressed > 0 {
        tracing::info!(suppressed, "messages of forgotten people not stored");
    }
    wal.remove(&segments)?;
    metrics.flushed.inc_by(outcome.inserted);
    metrics.flush_duplicates.inc_by(outcome.duplicates);
    metrics
        .flush_seconds
        .observe(started.elapsed().as_secs_f64());
    Ok(Flushed {
        segments: segments.len(),
        inserted: outcome.inserted,
        duplicates: outcome.duplicates,
        rejected: rejects.len() as u64,
    })
}

async fn write_segments(
    segments: &[PathBuf],
    setup: &ParseSetup,
    append: &mut Append,
    rejects: &mut Vec<RejectedRow>,
    suppressed: &mut u64,
) -> Result<()> {
    let mut builder = EventBatchBuilder::new(setup.spec.schema.clone(), &setup.typed);
    for path in segments {
        let segment = Segment::read(path)?;
        let torn = segment.torn_bytes();
        if torn > 0 {
            tracing::warn!(
                segment = %path.display(),
                bytes = torn,
                "log segment ends in a torn write (never acknowledged); ignoring it"
            );
        }
        let label = format!("collector log {}", path.display());
        for (index, payload) in segment.records().enumerate() {
            match decode(payload) {
                Some(Record::Event { source, json }) => match parse_message(json, &setup.rules) {
                    Ok(row) => match setup.tombstones.check_event(&row) {
                        Verdict::Keep => builder.push(&row, source),
                        Verdict::Suppress => *suppressed += 1,
                    },
                    // Checked when received; only a config change since then gets here.
                    Err(rejection) => rejects.push(RejectedRow {
                        stage: "collector",
                        source: source.to_string(),
                        file: label.clone(),
                        position: Some(index as u64 + 1),
                        position_kind: PositionKind::Row,
                        field: rejection.field,
                        reason: rejection.reason,
                        raw: Some(raw_excerpt(json.as_bytes())),
                    }),
                },
                Some(Record::Refused(refusal)) => rejects.push(RejectedRow {
                    stage: "collector",
                    source: refusal.source,
                    file: format!("collector {}", refusal.endpoint),
                    position: None,
                    position_kind: PositionKind::Row,
                    field: refusal.field,
                    reason: refusal.reason,
                    raw: Some(refusal.raw),
                }),
                None => {
                    tracing::warn!(segment = %path.display(), record = index, "unreadable log record skipped")
                }
            }
            if builder.len() >= BATCH_ROWS {
                let batch = builder.finish();
                append.write(batch.batch, &batch.hashes).await?;
            }
        }
    }
    if !builder.is_empty() {
        let batch = builder.finish();
        append.write(batch.batch, &batch.hashes).await?;
    }
    Ok(())
}

/// Flushes whenever the log holds enough bytes, its oldest record is old enough, or sealed
/// segments wait (from before a restart, or from a failed flush); failures are retried with backoff while the collector keeps
/// logging (and, once the log is full, answers 503). Returns after a final flush when `stop`
/// turns true.
pub(crate) async fn run(
    ws: Arc<Workspace>,
    mut setup: ParseSetup,
    wal: Wal,
    metrics: Arc<Metrics>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let config = &ws.config.serve;
    let max_age = Duration::from_secs_f64(config.flush_seconds);
    let mut backoff = Duration::from_millis(100);
    loop {
        let stopping = *stop.borrow();
        let current = wal.stats.current_bytes.load(Ordering::SeqCst);
        // Sealed segments wait after a restart (replay) or after a failed flush (retry).
        let due = stopping
            || wal.stats.sealed_bytes() > 0
            || current >= config.flush_bytes
            || (current > 0 && wal.current_age() >= max_age);
        if due {
            match flush_once(&ws, &mut setup, &wal, &metrics).await {
                Ok(done) => {
                    backoff = Duration::from_millis(100);
                    if done.segments > 0 {
                        tracing::info!(
                            inserted = done.inserted,
                            duplicates = done.duplicates,
                            rejected = done.rejected,
                            segments = done.segments,
                            "flushed"
                        );
                    }
                    if stopping {
                        return;
                    }
                }
                Err(e) => {
                    metrics.flush_failures.inc();
                    tracing::error!(error = %e, retry_in = ?backoff, "flush failed; the log keeps the events");
                    if stopping && backoff > Duration::from_secs(30) {
                        tracing::error!(
                            "giving up the final flush; the log is replayed at the next start"
                        );
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                    continue;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = stop.changed() => {}
        }
    }
}
