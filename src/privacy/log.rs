//! The audit trail: `privacy_log` has one row per step of every privacy request (show, export,
//! consent, forget): when, which request, the salted hash of the identifier it named, the
//! operator's reason and the outcome. It holds no identifier in the clear, so it survives the
//! erasures it records.

use arrow::datatypes::Field;
use serde::Serialize;

use crate::error::Result;
use crate::identity::tables::{self, text};
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
    tables::spec(
        TABLE,
        vec![
            Field::new("logged_at", timestamp_type(), false),
            text("request_id", false),
            text("action", false),
            text("identifier_hash", false),
            text("reason", true),
            text("outcome", false),
            text("details", true),
        ],
        &[],
    )
}

/// Appends `entries` to the log in one commit.
pub async fn append(ws: &Workspace, entries: &[Entry]) -> Result<()> {
    let spec = spec();
    let batch = tables::rows(
        &spec,
        vec![
            tables::times(entries.iter().map(|e| Some(e.logged_at)))?,
            tables::strings(entries.iter().map(|e| Some(e.request_id.as_str()))),
            tables::strings(entries.iter().map(|e| Some(e.action.as_str()))),
            tables::strings(entries.iter().map(|e| Some(e.identifier_hash.as_str()))),
            tables::strings(entries.iter().map(|e| e.reason.as_deref())),
            tables::strings(entries.iter().map(|e| Some(e.outcome.as_str()))),
            tables::strings(entries.iter().map(|e| e.details.as_deref())),
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
