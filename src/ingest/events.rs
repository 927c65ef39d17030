//! `tribe ingest events`: Segment messages from JSON lines, CSV or Parquet files into the
//! `events` table, in one atomic commit per ingest. Parsing runs on all cores while the Parquet
//! writer streams files out; a bounded channel between them keeps memory flat.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use indicatif::ProgressBar;
use rayon::prelude::*;

use super::batch::{EventBatch, EventBatchBuilder, day_of};
use super::input::{Chunk, position_kind, read_chunks};
use super::message::{DEFAULT_MAX_MESSAGE_BYTES, EventRow, ParseRules, parse_message};
use super::rejected::{RejectedRow, file_label, raw_excerpt};
use super::{IngestReport, rejected};
use crate::config::ValueType;
use crate::error::{Error, Result};
use crate::privacy::tombstone::{Tombstones, Verdict};
use crate::storage::append::{Append, CommitResult, KeyScope};
use crate::storage::{TableSpec, schema};
use crate::workspace::Workspace;

/// Options of an events ingest.
#[derive(Debug, Clone, Default)]
pub struct EventIngest {
    /// Source name recorded on every event; default: each file's name without extension.
    pub source: Option<String>,
    /// Fail the whole ingest, committing nothing, if any row is rejected.
    pub strict: bool,
}

/// One parsed group of chunks: a batch per day, in day order.
struct Parsed {
    batches: Vec<EventBatch>,
    rejects: Vec<RejectedRow>,
    read: u64,
    suppressed: u64,
    input_bytes: u64,
}

/// Everything the parser needs, shared by the parsing threads (and by the collector's flusher).
pub(crate) struct ParseSetup {
    pub rules: ParseRules,
    pub spec: TableSpec,
    pub typed: Vec<(String, ValueType)>,
    /// Forgotten people's identifiers: their messages are not stored.
    pub tombstones: Tombstones,
}

impl ParseSetup {
    /// The workspace's parse rules, with the `events` table evolved to its typed columns.
    /// `now` is the `received_at` of messages that carry none.
    pub async fn prepare(ws: &Workspace, now: i64) -> Result<ParseSetup> {
        let spec = schema::events(&ws.config);
        ws.storage.evolve(&spec).await?;
        let typed: Vec<(String, ValueType)> =
            schema::typed_properties(&ws.config).into_iter().collect();
        Ok(ParseSetup {
            rules: ParseRules {
                typed: typed.clone(),
                max_bytes: ws
                    .config
                    .events
                    .max_message_bytes
                    .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES),
                received_at: now,
            },
            spec,
            typed,
            tombstones: Tombstones::load(ws).await?,
        })
    }
}

/// Ingests event files; see the module doc. A missing file fails before anything is written.
pub async fn ingest_events(
    ws: &Workspace,
    files: &[PathBuf],
    options: &EventIngest,
    progress: &ProgressBar,
) -> Result<IngestReport> {
    for file in files {
        super::input::Format::of(file)?;
        if !file.is_file() {
            return Err(Error::Input(format!("{}: no such file", file.display())));
        }
    }
    let now = chrono::Utc::now().timestamp_micros();
    let setup = Arc::new(ParseSetup::prepare(ws, now).await?);
    // A concurrent ingest that stored some of the same messages first makes us start over.
    for _ in 0..5 {
        progress.set_position(0);
        if let Some(report) = ingest_once(ws, files, options, &setup, progress, now).await? {
            return Ok(report);
        }
    }
    Err(Error::Other(
        "events: gave up after 5 restarts caused by concurrent ingests of the same messages".into(),
    ))
}

async fn ingest_once(
    ws: &Workspace,
    files: &[PathBuf],
    options: &EventIngest,
    setup: &Arc<ParseSetup>,
    progress: &ProgressBar,
    now: i64,
) -> Result<Option<IngestReport>> {
    let mut append =
        Append::start(&ws.storage, &setup.spec, "message_id", KeyScope::PerDay).await?;
    let mut report = IngestReport {
        table: schema::EVENTS.into(),
        files: files.len() as u64,
        ..IngestReport::default()
    };
    let mut rejects: Vec<RejectedRow> = Vec::new();
    for file in files {
        let source = options.source.clone().unwrap_or_else(|| source_of(file));
        let result = ingest_file(
            file,
            &source,
            setup,
            &mut append,
            &mut report,
            &mut rejects,
            options.strict,
            progress,
        )
        .await;
        if let Err(e) = result {
            append.abort().await;
            return Err(e);
        }
        if options.strict && !rejects.is_empty() {
            append.abort().await;
            return Err(Error::StrictRejected {
                rejected: rejects.len() as u64,
                first: rejects[0].describe(),
            });
        }
    }
    let metadata = HashMap::from([
        (
            "tribe.operation".to_string(),
            serde_json::json!("ingest events"),
        ),
        (
            "tribe.files".to_string(),
            serde_json::json!(files.iter().map(|f| file_label(f)).collect::<Vec<_>>()),
        ),
    ]);
    match append.commit(metadata).await? {
        CommitResult::Redo => return Ok(None),
        CommitResult::Done(outcome) => report.complete(&outcome, &rejects),
    }
    rejected::store(&ws.storage, &rejects, now).await?;
    setup.tombstones.record_lifts(ws).await?;
    Ok(Some(report))
}

#[allow(clippy::too_many_arguments)]
async fn ingest_file(
    file: &Path,
    source: &str,
    setup: &Arc<ParseSetup>,
    append: &mut Append,
    report: &mut IngestReport,
    rejects: &mut Vec<RejectedRow>,
    strict: bool,
    progress: &ProgressBar,
) -> Result<()> {
    // Room for one parsed group, so that parsing goes on while the writer encodes the last.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Parsed>(1);
    let reader = {
        let file = file.to_path_buf();
        let source = source.to_string();
        let setup = setup.clone();
        tokio::task::spawn_blocking(move || parse_file(&file, &source, &setup, tx))
    };
    while let Some(parsed) = rx.recv().await {
        report.read += parsed.read;
        report.suppressed += parsed.suppressed;
        progress.inc(parsed.input_bytes);
        let had_rejects = !parsed.rejects.is_empty();
        rejects.extend(parsed.rejects);
        if strict && had_rejects {
            break; // dropping the receiver stops the reader
        }
        for EventBatch { batch, hashes } in parsed.batches {
            append.write(batch, &hashes).await?;
        }
        // One write per group: each day's rows then reach their file in one piece.
        append.write_pending().await?;
    }
    drop(rx);
    match reader.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) if strict && !rejects.is_empty() => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(e) => Err(Error::Other(format!("reading {}: {e}", file.display()))),
    }
}

/// Chunks parsed together. Each group becomes one batch per day, so the writer hands a day's
/// rows to its file as they are. Sixteen chunks of 4 MiB give a few hundred rows per day of a
/// year-long file.
const GROUP_CHUNKS: usize = 16;

/// Reads and parses one file on the blocking pool, sending parsed groups of chunks in file
/// order. A reader thread stays one group ahead, so the disk read overlaps parsing; each group
/// is parsed on all cores.
fn parse_file(
    file: &Path,
    source: &str,
    setup: &ParseSetup,
    tx: tokio::sync::mpsc::Sender<Parsed>,
) -> Result<()> {
    let label = file_label(file);
    let kind = position_kind(file);
    let width = GROUP_CHUNKS.max(rayon::current_num_threads() * 2);
    let (chunks_tx, chunks) = std::sync::mpsc::sync_channel::<Chunk>(width);
    std::thread::scope(|scope| {
        // The reader owns the sender: when it finishes, the parser sees the end of the file.
        let reader = scope.spawn(move || {
            // A send fails only when the parser stopped first; its error is the one to report.
            read_chunks(file, |chunk| {
                chunks_tx
                    .send(chunk)
                    .map_err(|_| Error::Other("ingest stopped".into()))
            })
        });
        let parsed = (|| {
            let mut group: Vec<Chunk> = Vec::with_capacity(width);
            loop {
                while group.len() < width {
                    match chunks.recv() {
                        Ok(chunk) => group.push(chunk),
                        Err(_) => break,
                    }
                }
                if group.is_empty() {
                    return Ok(());
                }
                let parsed = parse_group(&group, source, &label, kind, setup);
                group.clear();
                tx.blocking_send(parsed)
                    .map_err(|_| Error::Other("ingest stopped".into()))?;
            }
        })();
        drop(chunks);
        let read = reader
            .join()
            .unwrap_or_else(|_| Err(Error::Other(format!("reading {label} panicked"))));
        read.and(parsed)
    })
}

/// One chunk's accepted rows, and what was not.
struct ChunkRows<'a> {
    rows: Vec<EventRow<'a>>,
    /// Row numbers in day order, input order within a day. (Sorting the rows themselves
    /// would move every row several times.)
    order: Vec<u32>,
    rejects: Vec<RejectedRow>,
    read: u64,
    suppressed: u64,
    bytes_per_row: usize,
}

/// Parses a group of chunks on all cores, then builds one batch per day from the rows of every
/// chunk, also on all cores. Rows are copied once, from the JSON text into the day's columns.
fn parse_group(
    group: &[Chunk],
    source: &str,
    label: &str,
    kind: super::input::PositionKind,
    setup: &ParseSetup,
) -> Parsed {
    let chunks: Vec<ChunkRows<'_>> = group
        .par_iter()
        .map(|chunk| parse_rows(chunk, source, label, kind, setup))
        .collect();
    // Where each day's rows are, chunk by chunk, so that a day keeps the input order.
    let mut days: BTreeMap<i32, Vec<(usize, Range<usize>)>> = BTreeMap::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let day_at = |k: usize| day_of(chunk.rows[chunk.order[k] as usize].timestamp);
        let mut start = 0;
        while start < chunk.order.len() {
            let day = day_at(start);
            let len = (start..chunk.order.len())
                .take_while(|&k| day_at(k) == day)
                .count();
            days.entry(day).or_default().push((i, start..start + len));
            start += len;
        }
    }
    let days: Vec<Vec<(usize, Range<usize>)>> = days.into_values().collect();
    let batches = days
        .into_par_iter()
        .map(|parts| {
            let bytes = parts
                .iter()
                .map(|(i, rows)| rows.len() * chunks[*i].bytes_per_row)
                .sum();
            let mut builder =
                EventBatchBuilder::for_input(setup.spec.schema.clone(), &setup.typed, bytes);
            for (i, range) in parts {
                let chunk = &chunks[i];
                for &row in &chunk.order[range] {
                    builder.push(&chunk.rows[row as usize], source);
                }
            }
            builder.finish()
        })
        .collect();
    let mut parsed = Parsed {
        batches,
        rejects: Vec::new(),
        read: 0,
        suppressed: 0,
        input_bytes: group.iter().map(|c| c.input_bytes).sum(),
    };
    for chunk in chunks {
        parsed.rejects.extend(chunk.rejects);
        parsed.read += chunk.read;
        parsed.suppressed += chunk.suppressed;
    }
    parsed
}

fn parse_rows<'a>(
    chunk: &'a Chunk,
    source: &str,
    label: &str,
    kind: super::input::PositionKind,
    setup: &ParseSetup,
) -> ChunkRows<'a> {
    let mut out = ChunkRows {
        rows: Vec::with_capacity(chunk.text.len() / 256 + 1),
        order: Vec::new(),
        rejects: Vec::new(),
        read: 0,
        suppressed: 0,
        bytes_per_row: 0,
    };
    for (position, line) in chunk.lines() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        out.read += 1;
        let outcome = match std::str::from_utf8(line) {
            Ok(text) => parse_message(text, &setup.rules).map(|row| {
                match setup.tombstones.check_event(&row) {
                    Verdict::Keep => out.rows.push(row),
                    Verdict::Suppress => out.suppressed += 1,
                }
            }),
            Err(e) => Err(super::message::Rejection::new(
                None,
                format!("invalid UTF-8: {e}"),
            )),
        };
        if let Err(rejection) = outcome {
            out.rejects.push(RejectedRow {
                stage: "ingest events",
                source: source.to_string(),
                file: label.to_string(),
                position: Some(position),
                position_kind: kind,
                field: rejection.field,
                reason: rejection.reason,
                raw: Some(raw_excerpt(line)),
            });
        }
    }
    out.order = (0..out.rows.len() as u32).collect();
    out.order
        .sort_by_key(|&i| day_of(out.rows[i as usize].timestamp));
    out.bytes_per_row = chunk.text.len() / out.read.max(1) as usize;
    out
}

/// The default source name of a file: its name without extensions (`web.jsonl` → `web`).
pub fn source_of(file: &Path) -> String {
    file.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split('.').next())
        .filter(|n| !n.is_empty())
        .unwrap_or("file")
        .to_string()
}
