//! `tribe maintain`: keeps tables fast and storage lean. Compaction rewrites the many small files
//! that frequent ingests leave into files near the target size (a change of layout, not of data,
//! so it never conflicts with concurrent ingests); vacuum then deletes files no table version
//! within the retention period needs, including files of ingests that crashed before committing.
//! Days of `events` that received new files are rewritten sorted by event name (a Delta z-order
//! on `event`), so a scan for one kind of event reads only that event's pages. Each table ends
//! with a checkpoint of its log.

use std::collections::BTreeMap;
use std::num::NonZeroU64;

use deltalake::DeltaTable;
use deltalake::kernel::schema::partitions::{FilterOp, FilterValue};
use deltalake::operations::optimize::OptimizeType;
use deltalake::operations::vacuum::VacuumMode;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::sql::known_tables;
use crate::storage::{TARGET_FILE_SIZE, TableSpec, schema, writer_properties};
use crate::workspace::Workspace;

/// What maintenance did to one table.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MaintainReport {
    pub table: String,
    pub files_before: u64,
    pub files_after: u64,
    /// Small files rewritten by compaction.
    pub files_compacted: u64,
    /// New files compaction wrote.
    pub files_written: u64,
    /// Files deleted from storage by vacuum.
    pub files_vacuumed: u64,
    pub version: i64,
}

/// Options of a maintenance run.
#[derive(Debug, Clone, Default)]
pub struct MaintainOptions {
    /// Only these tables (default: all).
    pub tables: Vec<String>,
    /// Keep unreferenced files younger than this (default: the workspace setting).
    pub retention_hours: Option<u64>,
    /// Skip compaction, only vacuum.
    pub vacuum_only: bool,
}

/// Compacts and vacuums the workspace's tables.
pub async fn maintain(ws: &Workspace, options: &MaintainOptions) -> Result<Vec<MaintainReport>> {
    let known = known_tables(ws);
    for wanted in &options.tables {
        if !known.iter().any(|(n, _)| n == wanted) {
            return Err(Error::Input(format!("no table named {wanted:?}")));
        }
    }
    let retention = options
        .retention_hours
        .unwrap_or(ws.config.workspace.vacuum_retention_hours);
    let mut reports = Vec::new();
    for (name, path) in known {
        if !options.tables.is_empty() && !options.tables.contains(&name) {
            continue;
        }
        let spec = TableSpec {
            name: name.clone(),
            path,
            schema: std::sync::Arc::new(arrow::datatypes::Schema::empty()),
            partition_columns: vec![],
        };
        let Some(table) = ws.storage.open(&spec).await? else {
            continue;
        };
        let files_before = file_count(&table);
        let (mut table, compacted, written) = if options.vacuum_only {
            (table, 0, 0)
        } else {
            compact(table, &name).await?
        };
        let (vacuumed_table, vacuum) = table
            .clone()
            .vacuum()
            .with_retention_period(chrono::Duration::hours(retention as i64))
            .with_enforce_retention_duration(false)
            .with_mode(VacuumMode::Full)
            .await
            .map_err(|e| Error::delta(&name, e))?;
        table = vacuumed_table;
        // Readers then open the table from one Parquet checkpoint instead of replaying every
        // JSON commit since the last one (tables created before tribe set a checkpoint
        // interval of 10 get one only every 100 commits otherwise).
        deltalake::checkpoints::create_checkpoint(&table, None)
            .await
            .map_err(|e| Error::delta(&name, e))?;
        reports.push(MaintainReport {
            table: name,
            files_before,
            files_after: file_count(&table),
            files_compacted: compacted,
            files_written: written,
            files_vacuumed: vacuum.files_deleted.len() as u64,
            version: table.version().map_or(-1, |v| v as i64),
        });
    }
    Ok(reports)
}

/// Rewrites small files into files near the target size: for a table with a sort key
/// (`events`), only the days with more than one small file (new data since the last run),
/// sorted by the key; elsewhere by plain bin-packing. Returns the table and the files removed and added.
async fn compact(table: DeltaTable, name: &str) -> Result<(DeltaTable, u64, u64)> {
    let target = NonZeroU64::new(TARGET_FILE_SIZE).expect("non-zero");
    let optimize = |table: DeltaTable| {
        table
            .optimize()
            .with_target_size(target)
            .with_writer_properties(writer_properties(name))
    };
    let (table, metrics) = if let Some(key) = schema::sort_key(name) {
        let days = days_to_sort(&table, name)?;
        if days.is_empty() {
            return Ok((table, 0, 0));
        }
        let filter = [(
            schema::DAY,
            FilterOp::In,
            FilterValue::Set(days.iter().map(String::as_str).collect()),
        )];
        optimize(table)
            .with_type(OptimizeType::ZOrder(vec![key.into()]))
            .with_filters(&filter)
            .await
    } else {
        optimize(table).await
    }
    .map_err(|e| Error::delta(name, e))?;
    Ok((table, metrics.num_files_removed, metrics.num_files_added))
}

/// The days of `events` holding more than one file below the target size. A sorted day keeps
/// at most one (its last file), so these are exactly the days that got data since they were
/// last sorted; the other days are not rewritten again.
fn days_to_sort(table: &DeltaTable, name: &str) -> Result<Vec<String>> {
    let snapshot = table.snapshot().map_err(|e| Error::delta(name, e))?;
    let mut small: BTreeMap<String, usize> = BTreeMap::new();
    for file in snapshot.log_data().iter() {
        if file.size() as u64 >= TARGET_FILE_SIZE {
            continue;
        }
        if let Some(Some(day)) = file.partition_values_map().remove(schema::DAY) {
            *small.entry(day).or_default() += 1;
        }
    }
    Ok(small
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(d, _)| d)
        .collect())
}

fn file_count(table: &DeltaTable) -> u64 {
    table
        .snapshot()
        .map(|s| s.log_data().num_files() as u64)
        .unwrap_or(0)
}
