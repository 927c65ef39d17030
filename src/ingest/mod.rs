//! Ingestion: Segment-spec events and records from other systems into Delta tables. It owns the
//! parsing and checking of input rows, deduplication on ingest, and the `rejected` table; it
//! does not link identities (see `identity`).

pub mod batch;
pub mod events;
pub mod input;
pub mod message;
pub mod records;
pub mod rejected;

use serde::Serialize;

/// What an ingest did, as printed by the command.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct IngestReport {
    /// Target table(s).
    pub table: String,
    pub files: u64,
    /// Non-empty input rows read.
    pub read: u64,
    /// Rows that passed every check.
    pub accepted: u64,
    /// Accepted rows that were new and are now stored.
    pub inserted: u64,
    /// Accepted rows already stored (same message id or record), not stored again.
    pub duplicates: u64,
    pub rejected: u64,
    /// Rows of forgotten people (tombstoned identifiers): not stored, only counted.
    pub suppressed: u64,
    /// Events derived from records (sources with an `event` mapping).
    pub events_inserted: u64,
    /// The first few rejections: `file:line: field: reason`.
    pub first_rejections: Vec<String>,
    /// Table version holding the new rows.
    pub version: Option<i64>,
}

/// How many rejection reasons a report keeps.
pub const REPORTED_REJECTIONS: usize = 5;

impl IngestReport {
    /// Fills in what the commit stored and what was rejected.
    pub(crate) fn complete(
        &mut self,
        outcome: &crate::storage::append::AppendOutcome,
        rejects: &[rejected::RejectedRow],
    ) {
        self.inserted = outcome.inserted;
        self.duplicates = outcome.duplicates;
        self.version = outcome.version;
        self.rejected = rejects.len() as u64;
        self.accepted = self.read - self.rejected - self.suppressed;
        self.first_rejections = rejects
            .iter()
            .take(REPORTED_REJECTIONS)
            .map(rejected::RejectedRow::describe)
            .collect();
    }
}
