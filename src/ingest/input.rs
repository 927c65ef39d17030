//! Input files as chunks of JSON lines with their positions. JSON lines are read as they are;
//! CSV rows and Parquet rows are turned into one JSON object per row first, so that every input
//! format goes through the same message parser and reports positions the same way.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Input formats, by file extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    JsonLines,
    Csv,
    Parquet,
}

impl Format {
    /// The format of a file from its name (`.jsonl`, `.ndjson`, `.json`, `.csv`, `.parquet`).
    pub fn of(path: &Path) -> Result<Format> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        match ext.as_str() {
            "jsonl" | "ndjson" | "json" => Ok(Format::JsonLines),
            "csv" => Ok(Format::Csv),
            "parquet" | "pq" => Ok(Format::Parquet),
            _ => Err(Error::Input(format!(
                "{}: unknown file type {ext:?} (expected .jsonl, .ndjson, .json, .csv or .parquet)",
                path.display()
            ))),
        }
    }
}

/// What a position in a file counts: lines of text, or rows of a Parquet file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PositionKind {
    Line,
    Row,
}

/// A run of JSON lines and the position of each in its file.
#[derive(Debug, Default)]
pub struct Chunk {
    pub text: Vec<u8>,
    /// Position of each line of `text`, or `None` when lines are consecutive from `first`.
    pub positions: Option<Vec<u64>>,
    pub first: u64,
    /// Bytes of the input file this chunk covers, for progress.
    pub input_bytes: u64,
}

impl Chunk {
    /// The lines of the chunk with their positions.
    pub fn lines(&self) -> impl Iterator<Item = (u64, &[u8])> {
        let mut text: &[u8] = &self.text;
        if text.last() == Some(&b'\n') {
            text = &text[..text.len() - 1];
        }
        let positions = self.positions.as_deref();
        let first = self.first;
        text.split(|b| *b == b'\n')
            .enumerate()
            .map(move |(i, line)| {
                let pos = positions.map_or(first + i as u64, |p| p[i]);
                (pos, line.strip_suffix(b"\r").unwrap_or(line))
            })
    }
}

/// Target size of a chunk of JSON lines.
pub const CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// Reads a file as chunks, handing each to `each`. Stops at the first error `each` returns.
pub fn read_chunks(path: &Path, mut each: impl FnMut(Chunk) -> Result<()>) -> Result<()> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    match Format::of(path)? {
        Format::JsonLines => read_json_lines(path, file, &mut each),
        Format::Csv => read_csv(path, file, &mut each),
        Format::Parquet => read_parquet(path, file, &mut each),
    }
}

fn read_json_lines(
    path: &Path,
    file: File,
    each: &mut impl FnMut(Chunk) -> Result<()>,
) -> Result<()> {
    // Chunks are read straight into their buffers: no intermediate buffer, and no zeroing of
    // memory that the read overwrites anyway.
    let mut reader = file;
    let mut carry: Vec<u8> = Vec::new();
    let mut next_line = 1u64;
    loop {
        let mut buf = std::mem::take(&mut carry);
        let start = buf.len();
        buf.reserve_exact(CHUNK_BYTES);
        let read = (&mut reader)
            .take(CHUNK_BYTES as u64)
            .read_to_end(&mut buf)
            .map_err(|e| Error::io(path, e))?;
        let eof = read < CHUNK_BYTES;
        if buf.is_empty() {
            return Ok(());
        }
        if !eof {
            // Cut after the last full line; the rest starts the next chunk.
            match memchr::memrchr(b'\n', &buf[start..]) {
                Some(cut) => carry = buf[start + cut + 1..].to_vec(),
                None => {
                    carry = buf;
                    continue; // one line longer than a chunk: read on
                }
            }
            buf.truncate(buf.len() - carry.len());
        }
        let read = read as u64;
        let lines =
            memchr::memchr_iter(b'\n', &buf).count() as u64 + u64::from(buf.last() != Some(&b'\n'));
        let chunk = Chunk {
            text: buf,
            positions: None,
            first: next_line,
            input_bytes: read,
        };
        next_line += lines;
        each(chunk)?;
        if eof {
            return Ok(());
        }
    }
}

/// Segment fields a CSV header may name directly (camelCase or snake_case).
const TOP_LEVEL: &[&str] = &[
    "messageId",
    "message_id",
    "type",
    "event",
    "name",
    "userId",
    "user_id",
    "anonymousId",
    "anonymous_id",
    "previousId",
    "previous_id",
    "groupId",
    "group_id",
    "timestamp",
    "receivedAt",
    "received_at",
    "sentAt",
    "sent_at",
    "properties",
    "traits",
    "context",
    "integrations",
];

/// Nested objects a CSV header may address with a dotted name (`properties.revenue`).
const NESTED: &[&str] = &["properties", "traits", "context"];

fn read_csv(path: &Path, file: File, each: &mut impl FnMut(Chunk) -> Result<()>) -> Result<()> {
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(BufReader::with_capacity(1 << 20, file));
    let headers = reader
        .headers()
        .map_err(|e| Error::Input(format!("{}: {e}", path.display())))?
        .clone();
    let mut chunk = Chunk {
        positions: Some(Vec::new()),
        ..Chunk::default()
    };
    let mut last_byte = 0u64;
    let mut record = csv::StringRecord::new();
    loop {
        let line = reader.position().line();
        let more = match reader.read_record(&mut record) {
            Ok(more) => more,
            // A row the CSV reader cannot read becomes a line the message parser refuses.
            Err(e) => {
                push_line(&mut chunk, line, format!("not CSV: {e}").as_bytes());
                true
            }
        };
        if !more {
            break;
        }
        let object = csv_row_to_json(&headers, &record);
        push_line(&mut chunk, line, object.as_bytes());
        if chunk.text.len() >= CHUNK_BYTES {
            let pos = reader.position().byte();
            chunk.input_bytes = pos - last_byte;
            last_byte = pos;
            each(std::mem::replace(
                &mut chunk,
                Chunk {
                    positions: Some(Vec::new()),
                    ..Chunk::default()
                },
            ))?;
        }
    }
    chunk.input_bytes = size.saturating_sub(last_byte);
    if !chunk.text.is_empty() {
        each(chunk)?;
    }
    Ok(())
}

fn push_line(chunk: &mut Chunk, position: u64, line: &[u8]) {
    chunk.text.extend_from_slice(line);
    chunk.text.push(b'\n');
    if let Some(p) = chunk.positions.as_mut() {
        p.push(position);
    }
}

/// One CSV row as a Segment message object: known fields at the top, `properties.x` style
/// columns nested, and any other column as a property.
pub fn csv_row_to_json(headers: &csv::StringRecord, record: &csv::StringRecord) -> String {
    let mut top = Map::new();
    for (header, value) in headers.iter().zip(record.iter()) {
        if value.is_empty() {
            continue;
        }
        let header = header.trim();
        if TOP_LEVEL.contains(&header) {
            top.insert(header.to_string(), Value::String(value.to_string()));
            continue;
        }
        let (object, key) = match header.split_once('.') {
            Some((object, key)) if NESTED.contains(&object) => (object, key),
            _ => ("properties", header),
        };
        let entry = top
            .entry(object.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(map) = entry {
            map.insert(key.to_string(), csv_value(value));
        }
    }
    Value::Object(top).to_string()
}

/// A CSV cell as JSON: canonical numbers and booleans as such, everything else as text (so
/// that `01234` stays a code, not a number).
fn csv_value(value: &str) -> Value {
    let leading_zero = value.len() > 1 && value.starts_with('0') && !value.starts_with("0.");
    let odd_form = value.starts_with('+')
        || value.starts_with("-0")
        || leading_zero
        || value.contains(['e', 'E', ' ']);
    let canonical_number = !odd_form && value.parse::<f64>().is_ok_and(f64::is_finite);
    if canonical_number && let Ok(n) = serde_json::from_str::<serde_json::Number>(value) {
        return Value::Number(n);
    }
    match value {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => Value::String(value.to_string()),
    }
}

fn read_parquet(path: &Path, file: File, each: &mut impl FnMut(Chunk) -> Result<()>) -> Result<()> {
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| Error::Input(format!("{}: not a Parquet file: {e}", path.display())))?
        .with_batch_size(8192)
        .build()
        .map_err(|e| Error::Input(format!("{}: {e}", path.display())))?;
    let total_rows = reader_rows(path)?;
    let mut row = 1u64;
    for batch in reader {
        let batch = batch.map_err(|e| Error::Input(format!("{}: {e}", path.display())))?;
        let text = batch_to_json_lines(&batch)?;
        let rows = batch.num_rows() as u64;
        let input_bytes = (size * rows).checked_div(total_rows).unwrap_or(0);
        each(Chunk {
            text,
            positions: None,
            first: row,
            input_bytes,
        })?;
        row += rows;
    }
    Ok(())
}

fn reader_rows(path: &Path) -> Result<u64> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| Error::Input(format!("{}: not a Parquet file: {e}", path.display())))?;
    Ok(builder.metadata().file_metadata().num_rows().max(0) as u64)
}

/// Rows of a batch as JSON lines (nulls left out).
pub fn batch_to_json_lines(batch: &RecordBatch) -> Result<Vec<u8>> {
    let mut writer = arrow::json::LineDelimitedWriter::new(Vec::new());
    writer.write(batch)?;
    writer.finish()?;
    Ok(writer.into_inner())
}

/// The position kind a format reports.
pub fn position_kind(path: &Path) -> PositionKind {
    match Format::of(path) {
        Ok(Format::Parquet) => PositionKind::Row,
        _ => PositionKind::Line,
    }
}

/// An input path as it is recorded in `rejected`: absolute when it can be.
pub fn display_path(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_chunks_keep_line_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        std::fs::write(&path, "{\"a\":1}\r\n\n{\"b\":2}\n{\"c\":3}").unwrap();
        let mut lines = Vec::new();
        read_chunks(&path, |c| {
            lines.extend(
                c.lines()
                    .map(|(n, l)| (n, String::from_utf8(l.to_vec()).unwrap())),
            );
            Ok(())
        })
        .unwrap();
        assert_eq!(
            lines,
            vec![
                (1, "{\"a\":1}".to_string()),
                (2, String::new()),
                (3, "{\"b\":2}".into()),
                (4, "{\"c\":3}".into())
            ]
        );
    }

    #[test]
    fn csv_rows_become_messages() {
        let headers = csv::StringRecord::from(vec![
            "type",
            "userId",
            "event",
            "timestamp",
            "properties.revenue",
            "zip",
            "context.ip",
        ]);
        let row = csv::StringRecord::from(vec![
            "track",
            "u1",
            "Order Completed",
            "2026-01-01T00:00:00Z",
            "12.5",
            "01234",
            "1.2.3.4",
        ]);
        let json: Value = serde_json::from_str(&csv_row_to_json(&headers, &row)).unwrap();
        assert_eq!(json["properties"]["revenue"], 12.5);
        assert_eq!(json["properties"]["zip"], "01234");
        assert_eq!(json["context"]["ip"], "1.2.3.4");
        assert_eq!(json["userId"], "u1");
    }

    #[test]
    fn unknown_extensions_are_refused() {
        let err = Format::of(Path::new("x.xlsx")).unwrap_err().to_string();
        assert!(err.contains("unknown file type"), "{err}");
    }
}
