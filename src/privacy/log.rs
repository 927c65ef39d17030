//! The audit trail: `privacy_log` has one row per step of every privacy request (show, export,
//! consent, forget): when, which request, the salted hash of the identifier it named, the
//! operator's reason and the outcome. It holds no identifier in the clear, so it survives the
//! erasures it records.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema};
use serde::Serialize;

use crate::error::Result;
use crate::storage::schema::timestamp_type;
use crate::storage::{TableSpec, WriteMode};
use crate::workspace::Workspace;

pub const TABLE: &str = "privacy_log";

/// One row of the audit trail.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Entry {
    pub logged_at: i64,
    pub request_id: String,
    /// `show`, `export`, `consent` or `forget`.
    pub action: String,
    pub identifier_hash: String,
    pub reason: Option<String>,
    /// `started`, `completed`, `resumed`, `not found`, `already forgotten`, `failed: …`.
    pub outcome: String,
    /// Counts as JSON (rows per table, files), never values.
    pub details: Option<String>,
}

pub fn spec() -> TableSpec {
    let text = |n: &str, null| Field::new(n, DataType::Utf8, null);
    TableSpec {
        name: TABLE.into(),
        path: TABLE.into(),
        schema: Arc::new(Schema::new(vec![
            Field::new("logged_at", timestamp_type(), false),
            text("request_id", false),
            text("action", false),
            text("identifier_hash", false),
            text("reason", true),
            text("outcome", false),
            text("details", true),
        ])),
        partition_columns: vec![],
    }
}

/// Appends `entry` to the log (its own commit).
pub async fn append(ws: &Workspace, entry: &Entry) -> Result<()> {
    let spec = spec();
    let text = |v: &str| Arc::new(StringArray::from(vec![v])) as ArrayRef;
    let opt = |v: &Option<String>| Arc::new(StringArray::from(vec![v.as_deref()])) as ArrayRef;
    let batch = RecordBatch::try_new(
        spec.schema.clone(),
        vec![
            Arc::new(TimestampMicrosecondArray::from(vec![entry.logged_at]).with_timezone("UTC")),
            text(&entry.request_id),
            text(&entry.action),
            text(&entry.identifier_hash),
            opt(&entry.reason),
            text(&entry.outcome),
            opt(&entry.details),
        ],
    )?;
    ws.storage
        .write(&spec, vec![batch], WriteMode::Append)
        .await?;
    Ok(())
}

/// A new request id: time-ordered, unique.
pub fn request_id(action: &str) -> String {
    format!(
        "{action}-{}-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%S"),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// The log as SQL sees it, oldest first; only the requests about `hashes` when given.
pub fn query(hashes: Option<&[String]>) -> String {
    let filter = match hashes {
        Some(h) if !h.is_empty() => format!(
            " where identifier_hash in ({})",
            h.iter()
                .map(|s| crate::sql::lit(s))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Some(_) => " where false".to_string(),
        None => String::new(),
    };
    format!(
        "select logged_at, request_id, action, identifier_hash, reason, outcome, details \
         from {TABLE}{filter} order by logged_at, request_id"
    )
}
