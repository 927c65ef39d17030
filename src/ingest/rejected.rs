//! Rows an ingest refused, with their file, position, field and reason, stored in the `rejected`
//! table. The same bad row rejected twice (an ingest re-run) is stored once.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Builder, StringBuilder, TimestampMicrosecondBuilder};
use arrow::record_batch::RecordBatch;

use super::input::PositionKind;
use crate::error::{Error, Result};
use crate::storage::append::{Append, CommitResult, KeyScope, key_hash};
use crate::storage::{Storage, schema};

/// Raw input kept with a rejection is cut at this many bytes.
const RAW_LIMIT: usize = 4096;

/// One refused input row.
#[derive(Debug, Clone, PartialEq)]
pub struct RejectedRow {
    pub stage: &'static str,
    pub source: String,
    pub file: String,
    pub position: Option<u64>,
    pub position_kind: PositionKind,
    pub field: Option<String>,
    pub reason: String,
    pub raw: Option<String>,
}

impl RejectedRow {
    /// `file:line: field: reason`, as a person reads it.
    pub fn describe(&self) -> String {
        let mut s = self.file.clone();
        if let Some(p) = self.position {
            let kind = match self.position_kind {
                PositionKind::Line => "",
                PositionKind::Row => "row ",
            };
            s.push_str(&format!(":{kind}{p}"));
        }
        if let Some(f) = &self.field {
            s.push_str(&format!(": {f}"));
        }
        s.push_str(&format!(": {}", self.reason));
        s
    }

    fn key(&self) -> String {
        format!(
            "{}\u{1}{}\u{1}{:?}\u{1}{}\u{1}{}",
            self.stage,
            self.file,
            self.position,
            self.reason,
            self.raw.as_deref().unwrap_or("")
        )
    }
}

/// Cuts raw input for storage.
pub fn raw_excerpt(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(RAW_LIMIT)];
    String::from_utf8_lossy(cut).into_owned()
}

/// Stores rejections (deduplicated per file); returns the new table version, if any.
pub async fn store(
    storage: &Storage,
    rows: &[RejectedRow],
    now_micros: i64,
) -> Result<Option<i64>> {
    let spec = schema::rejected();
    if rows.is_empty() {
        // The table exists after any ingest, so that looking for rejections always works.
        storage.open_or_create(&spec).await?;
        return Ok(None);
    }
    for _ in 0..5 {
        let mut append =
            Append::start(storage, &spec, "reject_id", KeyScope::Column("file")).await?;
        for chunk in rows.chunks(64 * 1024) {
            let (batch, hashes) = to_batch(&spec.schema, chunk, now_micros)?;
            append.write(batch, &hashes).await?;
        }
        if let CommitResult::Done(outcome) = append.commit(HashMap::new()).await? {
            return Ok(outcome.version);
        }
    }
    Err(Error::Other(
        "could not store rejected rows: too many concurrent writers".into(),
    ))
}

fn to_batch(
    schema: &arrow::datatypes::SchemaRef,
    rows: &[RejectedRow],
    now: i64,
) -> Result<(RecordBatch, Vec<u128>)> {
    let mut id = StringBuilder::new();
    let mut stage = StringBuilder::new();
    let mut source = StringBuilder::new();
    let mut file = StringBuilder::new();
    let mut line = Int64Builder::new();
    let mut field = StringBuilder::new();
    let mut reason = StringBuilder::new();
    let mut raw = StringBuilder::new();
    let mut at = TimestampMicrosecondBuilder::new().with_timezone("UTC");
    let mut hashes = Vec::with_capacity(rows.len());
    for row in rows {
        let key = format!("{:032x}", key_hash(&row.key()));
        hashes.push(key_hash(&key));
        id.append_value(&key);
        stage.append_value(row.stage);
        source.append_value(&row.source);
        file.append_value(&row.file);
        line.append_option(row.position.map(|p| p as i64));
        field.append_option(row.field.as_deref());
        reason.append_value(&row.reason);
        raw.append_option(row.raw.as_deref());
        at.append_value(now);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(id.finish()),
        Arc::new(stage.finish()),
        Arc::new(source.finish()),
        Arc::new(file.finish()),
        Arc::new(line.finish()),
        Arc::new(field.finish()),
        Arc::new(reason.finish()),
        Arc::new(raw.finish()),
        Arc::new(at.finish()),
    ];
    Ok((RecordBatch::try_new(schema.clone(), columns)?, hashes))
}

/// The display name of an input file in reports and in `rejected`.
pub fn file_label(path: &Path) -> String {
    super::input::display_path(path).display().to_string()
}
