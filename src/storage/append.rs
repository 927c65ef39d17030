//! Idempotent appends: rows carry a key (a message id, a record id) and a row whose key the table
//! already holds, or that came earlier in the same append, is dropped. Files are written as rows
//! arrive and committed once at the end, so an append is all or nothing.
//!
//! Concurrency: for day-partitioned tables the keys are read per day, and the commit declares
//! those days as read. If another writer committed files into them meanwhile, the commit
//! conflicts; the append then re-reads those days and either commits (no overlap) or reports
//! that it must be redone.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use arrow::array::{AsArray, BooleanArray};
use arrow::compute::filter_record_batch;
use arrow::datatypes::Date32Type;
use arrow::record_batch::RecordBatch;
use datafusion::prelude::{SessionContext, col, lit};
use delta_kernel::expressions::Scalar;
use deltalake::DeltaTable;
use deltalake::kernel::{Action, Add};
use deltalake::writer::{DeltaWriter, RecordBatchWriter, WriteMode};
use futures::StreamExt;
use xxhash_rust::xxh3::xxh3_128;

use super::{CommitFailure, Storage, TARGET_FILE_SIZE, TableSpec, writer_properties};
use crate::error::{Error, Result};

/// How the keys of a table are scoped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyScope {
    /// Keys are unique within a UTC day (`day` partition column): only touched days are read.
    PerDay,
    /// Keys are unique in the whole table.
    Table,
    /// Keys are unique among rows with the same value in `column` (rejected rows per file).
    Column(&'static str),
}

/// What a finished append did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AppendOutcome {
    /// Rows written by this append.
    pub inserted: u64,
    /// Rows dropped because the table or this append already had their key.
    pub duplicates: u64,
    /// The table version that holds them (`None` when nothing needed committing).
    pub version: Option<i64>,
}

/// The result of trying to commit.
pub enum CommitResult {
    Done(AppendOutcome),
    /// A concurrent writer stored some of the same keys: redo the append from the start.
    Redo,
}

/// An append in progress on one table.
pub struct Append {
    storage: Storage,
    spec: TableSpec,
    table: DeltaTable,
    key_column: &'static str,
    scope: KeyScope,
    /// Whether the table had no data files when last loaded: then there are no keys to read.
    empty: bool,
    existing: KeySet,
    loaded_days: BTreeSet<i32>,
    loaded_values: BTreeSet<String>,
    loaded_table: bool,
    written: KeySet,
    writer: RecordBatchWriter,
    /// Rows kept until there are enough to give each partition a sizeable slice.
    pending: Vec<RecordBatch>,
    pending_rows: usize,
    adds: Vec<Add>,
    inserted: u64,
    duplicates: u64,
}

/// Key hashes. They are already uniform (xxh3), so a fast hasher is enough; SipHash was a
/// tenth of the writer's time.
type KeySet = HashSet<u128, foldhash::fast::RandomState>;

/// Rows collected before they go to the Parquet writer.
const PENDING_ROWS: usize = 256 * 1024;

/// The dedupe hash of a key.
pub fn key_hash(key: &str) -> u128 {
    xxh3_128(key.as_bytes())
}

impl Append {
    /// Starts an append to the table `spec` (created when missing), keyed on `key_column`.
    pub async fn start(
        storage: &Storage,
        spec: &TableSpec,
        key_column: &'static str,
        scope: KeyScope,
    ) -> Result<Append> {
        let table = storage.open_or_create(spec).await?;
        let writer = new_writer(&table, &spec.name)?;
        let empty = table_is_empty(&table, &spec.name)?;
        Ok(Append {
            storage: storage.clone(),
            spec: spec.clone(),
            table,
            key_column,
            scope,
            empty,
            existing: KeySet::default(),
            loaded_days: BTreeSet::new(),
            loaded_values: BTreeSet::new(),
            loaded_table: false,
            written: KeySet::default(),
            writer,
            pending: Vec::new(),
            pending_rows: 0,
            adds: Vec::new(),
            inserted: 0,
            duplicates: 0,
        })
    }

    /// The table as loaded when the append started (or last re-read).
    pub fn table(&self) -> &DeltaTable {
        &self.table
    }

    /// Writes the rows of `batch` whose keys are new; `hashes[i]` is the key hash of row i.
    /// Returns how many rows were written.
    pub async fn write(&mut self, batch: RecordBatch, hashes: &[u128]) -> Result<u64> {
        if batch.num_rows() == 0 {
            return Ok(0);
        }
        self.load_keys_for(&batch).await?;
        let keep: BooleanArray = hashes
            .iter()
            .map(|h| Some(!self.existing.contains(h) && self.written.insert(*h)))
            .collect();
        let kept = keep.true_count() as u64;
        self.duplicates += batch.num_rows() as u64 - kept;
        if kept == 0 {
            return Ok(0);
        }
        let batch = if kept as usize == batch.num_rows() {
            batch
        } else {
            filter_record_batch(&batch, &keep)?
        };
        self.inserted += kept;
        self.pending_rows += batch.num_rows();
        self.pending.push(batch);
        if self.pending_rows >= PENDING_ROWS {
            self.write_pending().await?;
        }
        Ok(kept)
    }

    /// Writes the rows handed over so far to their files now, rather than when enough piled up.
    pub async fn write_pending(&mut self) -> Result<()> {
        self.write_out().await?;
        // Bound the memory of open partition writers: hand finished files over regularly.
        // (Asking costs a walk over every column of every open file, so it is asked here.)
        if self.writer.buffer_len() > 512 * 1024 * 1024 {
            self.flush().await?;
        }
        Ok(())
    }

    async fn write_out(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        self.pending_rows = 0;
        if self.spec.partition_columns == ["day"] {
            return self.write_days(&pending).await;
        }
        let batch = arrow::compute::concat_batches(&pending[0].schema(), &pending)?;
        self.writer
            .write(batch)
            .await
            .map_err(|e| Error::delta(&self.spec.name, e))
    }

    /// Writes day-partitioned rows one day at a time. Event batches come sorted by day, so a
    /// day's rows are one slice of each batch and gathering them is a plain copy. (The writer's
    /// own split would concatenate, sort and copy again on this single thread; on an events
    /// ingest that was a tenth of the writer's time.)
    async fn write_days(&mut self, pending: &[RecordBatch]) -> Result<()> {
        let mut slices: BTreeMap<i32, Vec<RecordBatch>> = BTreeMap::new();
        for batch in pending {
            let days = day_column(batch)?.values();
            let mut start = 0;
            while start < days.len() {
                let day = days[start];
                let len = days[start..].iter().take_while(|d| **d == day).count();
                slices.entry(day).or_default().push(batch.slice(start, len));
                start += len;
            }
        }
        for (day, parts) in slices {
            let batch = arrow::compute::concat_batches(&parts[0].schema(), &parts)?;
            let values = indexmap::IndexMap::from([("day".to_string(), Scalar::Date(day))]);
            self.writer
                .write_partition(batch, &values, WriteMode::Default)
                .await
                .map_err(|e| Error::delta(&self.spec.name, e))?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        self.write_out().await?;
        let adds = self
            .writer
            .flush()
            .await
            .map_err(|e| Error::delta(&self.spec.name, e))?;
        self.adds.extend(adds);
        Ok(())
    }

    /// Reads the keys the table holds in the scope of `batch`'s rows, once per scope. The scope
    /// is recorded even when the table is empty: it is what the commit declares as read.
    async fn load_keys_for(&mut self, batch: &RecordBatch) -> Result<()> {
        let filter = match self.scope {
            KeyScope::Table if self.loaded_table => return Ok(()),
            KeyScope::Table => {
                self.loaded_table = true;
                None
            }
            KeyScope::PerDay => {
                let days = batch_days(batch)?;
                let new: Vec<i32> = days.difference(&self.loaded_days).copied().collect();
                if new.is_empty() {
                    return Ok(());
                }
                self.loaded_days.extend(new.iter().copied());
                Some(days_filter(&new))
            }
            KeyScope::Column(column) => {
                let values = batch_strings(batch, column)?;
                let new: Vec<String> = values.difference(&self.loaded_values).cloned().collect();
                if new.is_empty() {
                    return Ok(());
                }
                self.loaded_values.extend(new.iter().cloned());
                Some(col(column).in_list(new.into_iter().map(lit).collect(), false))
            }
        };
        if !self.empty {
            let keys = self.scan_keys(filter).await?;
            self.existing.extend(keys);
        }
        Ok(())
    }

    /// Hashes of the keys stored in the table, optionally filtered.
    async fn scan_keys(&self, filter: Option<datafusion::prelude::Expr>) -> Result<KeySet> {
        let ctx = SessionContext::new();
        self.table
            .update_datafusion_session(&ctx.state())
            .map_err(|e| Error::delta(&self.spec.name, e))?;
        let provider = self.table.table_provider().await.map_err(Error::Query)?;
        let mut df = ctx.read_table(provider)?;
        if let Some(filter) = filter {
            df = df.filter(filter)?;
        }
        let mut stream = df
            .select(vec![col(self.key_column)])?
            .execute_stream()
            .await?;
        let mut keys = KeySet::default();
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            let cast = arrow::compute::cast(batch.column(0), &arrow::datatypes::DataType::Utf8)?;
            let strings = cast.as_string::<i32>();
            keys.extend(strings.iter().flatten().map(key_hash));
        }
        Ok(keys)
    }

    /// The SQL predicate naming what this append read, for conflict detection.
    fn read_predicate(&self) -> Option<String> {
        match self.scope {
            KeyScope::PerDay if !self.loaded_days.is_empty() => Some(format!(
                "day IN ({})",
                self.loaded_days
                    .iter()
                    .map(|d| format!("'{}'", day_string(*d)))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            _ => None,
        }
    }

    /// Deletes the files this append wrote; used when it is abandoned. Best effort: files that
    /// stay behind are unreferenced, invisible, and removed by `maintain`.
    pub async fn abort(mut self) {
        let _ = self.flush().await;
        super::delete_files(&self.table, &self.adds).await;
    }

    /// Commits everything written in one table version.
    pub async fn commit(
        mut self,
        metadata: HashMap<String, serde_json::Value>,
    ) -> Result<CommitResult> {
        self.flush().await?;
        if self.adds.is_empty() {
            return Ok(CommitResult::Done(AppendOutcome {
                inserted: 0,
                duplicates: self.duplicates,
                version: None,
            }));
        }
        let actions: Vec<Action> = self.adds.iter().cloned().map(Action::Add).collect();
        for _attempt in 0..20 {
            let predicate = self.read_predicate();
            match self
                .storage
                .commit(
                    &mut self.table,
                    actions.clone(),
                    predicate,
                    metadata.clone(),
                )
                .await
            {
                Ok(version) => {
                    return Ok(CommitResult::Done(AppendOutcome {
                        inserted: self.inserted,
                        duplicates: self.duplicates,
                        version: Some(version),
                    }));
                }
                Err(CommitFailure::Failed(e)) => {
                    self.abort().await;
                    return Err(e);
                }
                Err(CommitFailure::Conflict) => {
                    // Someone wrote into the days we read. Re-read them at the new version: if
                    // none of our keys arrived meanwhile, our files are still right.
                    self.table
                        .update_state()
                        .await
                        .map_err(|e| Error::delta(&self.spec.name, e))?;
                    self.empty = table_is_empty(&self.table, &self.spec.name)?;
                    let days: Vec<i32> = self.loaded_days.iter().copied().collect();
                    let now = self.scan_keys(Some(days_filter(&days))).await?;
                    if now.iter().any(|h| self.written.contains(h)) {
                        self.abort().await;
                        return Ok(CommitResult::Redo);
                    }
                }
            }
        }
        let name = self.spec.name.clone();
        self.abort().await;
        Err(Error::Other(format!(
            "table {name}: gave up committing after 20 conflicting concurrent writes"
        )))
    }
}

fn table_is_empty(table: &DeltaTable, name: &str) -> Result<bool> {
    let snapshot = table.snapshot().map_err(|e| Error::delta(name, e))?;
    Ok(snapshot.log_data().num_files() == 0)
}

pub(super) fn new_writer(table: &DeltaTable, name: &str) -> Result<RecordBatchWriter> {
    Ok(RecordBatchWriter::for_table(table)
        .map_err(|e| Error::delta(name, e))?
        .with_writer_properties(writer_properties(name))
        .with_target_file_size(TARGET_FILE_SIZE))
}

/// A batch's `day` column. It is never null: every row has a timestamp.
fn day_column(batch: &RecordBatch) -> Result<&arrow::array::Date32Array> {
    let column = batch
        .column_by_name("day")
        .ok_or_else(|| Error::Other("batch has no day column".into()))?;
    let days = column.as_primitive::<Date32Type>();
    if arrow::array::Array::null_count(days) > 0 {
        return Err(Error::Other("batch has rows without a day".into()));
    }
    Ok(days)
}

/// The distinct UTC days of a batch's `day` column.
fn batch_days(batch: &RecordBatch) -> Result<BTreeSet<i32>> {
    Ok(day_column(batch)?.values().iter().copied().collect())
}

fn batch_strings(batch: &RecordBatch, column: &str) -> Result<BTreeSet<String>> {
    let array = batch
        .column_by_name(column)
        .ok_or_else(|| Error::Other(format!("batch has no {column} column")))?;
    let strings = array.as_string::<i32>();
    Ok(strings.iter().flatten().map(str::to_string).collect())
}

fn days_filter(days: &[i32]) -> datafusion::prelude::Expr {
    let days = days
        .iter()
        .map(|d| lit(datafusion::scalar::ScalarValue::Date32(Some(*d))))
        .collect();
    col("day").in_list(days, false)
}

/// `YYYY-MM-DD` of a day number.
pub fn day_string(day: i32) -> String {
    chrono::NaiveDate::from_num_days_from_ce_opt(day + 719_163)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| day.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_strings() {
        assert_eq!(day_string(0), "1970-01-01");
        assert_eq!(day_string(20_454), "2026-01-01");
    }
}
