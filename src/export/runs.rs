//! The `export_runs` table: the history of every export run, one row per change of a run's state
//! (running, delivered, failed, abandoned, skipped), partitioned by export. It is also the lock:
//! a run starts by committing its `running` row with the export's partition declared as read,
//! so of two processes starting the same export at once, one commit conflicts and that process
//! reads again and sees the other's claim.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, TimestampMicrosecondType};
use deltalake::DeltaTable;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::sql::lit;
use crate::storage::schema::timestamp_type;
use crate::storage::{Storage, TableSpec};

pub const TABLE: &str = "export_runs";

/// The states a run goes through.
pub mod status {
    pub const RUNNING: &str = "running";
    pub const DELIVERED: &str = "delivered";
    pub const FAILED: &str = "failed";
    /// A run whose process died before its manifest; its files were removed.
    pub const ABANDONED: &str = "abandoned";
    /// A missed scheduled time that was not run (`missed = "latest"`).
    pub const SKIPPED: &str = "skipped";
}

/// One row of `export_runs`. Times are microseconds since the epoch, UTC.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RunRow {
    pub export: String,
    pub run_id: String,
    pub status: String,
    /// `manual` or `schedule`.
    pub trigger: String,
    pub scheduled_for: Option<i64>,
    pub as_of: i64,
    /// 1 for the first attempt at a scheduled time, then 2, 3, ...
    pub attempt: i64,
    /// The process that wrote the row: host/pid/start time.
    pub owner: String,
    pub recorded_at: i64,
    pub destination: Option<String>,
    pub definition_hash: Option<String>,
    pub audience: Option<i64>,
    pub adds: Option<i64>,
    pub removes: Option<i64>,
    pub files: Option<i64>,
    pub error: Option<String>,
    /// A failed scheduled run is tried again from this time.
    pub retry_at: Option<i64>,
    pub previous_run: Option<String>,
}

pub fn spec() -> TableSpec {
    let ts = |name: &str, nullable| Field::new(name, timestamp_type(), nullable);
    let text = |name: &str, nullable| Field::new(name, DataType::Utf8, nullable);
    let long = |name: &str| Field::new(name, DataType::Int64, true);
    TableSpec {
        name: TABLE.into(),
        path: TABLE.into(),
        schema: Arc::new(Schema::new(vec![
            text("export", false),
            text("run_id", false),
            text("status", false),
            text("trigger", false),
            ts("scheduled_for", true),
            ts("as_of", false),
            Field::new("attempt", DataType::Int64, false),
            text("owner", false),
            ts("recorded_at", false),
            text("destination", true),
            text("definition_hash", true),
            long("audience"),
            long("adds"),
            long("removes"),
            long("files"),
            text("error", true),
            ts("retry_at", true),
            text("previous_run", true),
        ])),
        partition_columns: vec!["export".into()],
    }
}

fn to_batch(rows: &[RunRow]) -> Result<RecordBatch> {
    let text = |f: fn(&RunRow) -> Option<&str>| -> ArrayRef {
        Arc::new(StringArray::from(rows.iter().map(f).collect::<Vec<_>>()))
    };
    let ts = |f: fn(&RunRow) -> Option<i64>| -> ArrayRef {
        Arc::new(
            TimestampMicrosecondArray::from(rows.iter().map(f).collect::<Vec<_>>())
                .with_timezone("UTC"),
        )
    };
    let long = |f: fn(&RunRow) -> Option<i64>| -> ArrayRef {
        Arc::new(Int64Array::from(rows.iter().map(f).collect::<Vec<_>>()))
    };
    Ok(RecordBatch::try_new(
        spec().schema,
        vec![
            text(|r| Some(&r.export)),
            text(|r| Some(&r.run_id)),
            text(|r| Some(&r.status)),
            text(|r| Some(&r.trigger)),
            ts(|r| r.scheduled_for),
            ts(|r| Some(r.as_of)),
            long(|r| Some(r.attempt)),
            text(|r| Some(&r.owner)),
            ts(|r| Some(r.recorded_at)),
            text(|r| r.destination.as_deref()),
            text(|r| r.definition_hash.as_deref()),
            long(|r| r.audience),
            long(|r| r.adds),
            long(|r| r.removes),
            long(|r| r.files),
            text(|r| r.error.as_deref()),
            ts(|r| r.retry_at),
            text(|r| r.previous_run.as_deref()),
        ],
    )?)
}

fn from_batch(b: &RecordBatch, out: &mut Vec<RunRow>) -> Result<()> {
    let col = |name: &str| -> Result<&ArrayRef> {
        b.column_by_name(name)
            .ok_or_else(|| Error::Other(format!("{TABLE} has no column {name}")))
    };
    let text = |name: &str, i: usize| -> Result<Option<String>> {
        let c = col(name)?;
        let c = arrow::compute::cast(c, &DataType::Utf8)?;
        let s = c.as_string::<i32>();
        Ok((!s.is_null(i)).then(|| s.value(i).to_string()))
    };
    let ts = |name: &str, i: usize| -> Result<Option<i64>> {
        let c = col(name)?;
        let c = c
            .as_primitive_opt::<TimestampMicrosecondType>()
            .ok_or_else(|| Error::Other(format!("{TABLE}.{name} is not a timestamp")))?;
        Ok((!c.is_null(i)).then(|| c.value(i)))
    };
    let long = |name: &str, i: usize| -> Result<Option<i64>> {
        let c = col(name)?.as_primitive::<Int64Type>();
        Ok((!c.is_null(i)).then(|| c.value(i)))
    };
    for i in 0..b.num_rows() {
        out.push(RunRow {
            export: text("export", i)?.unwrap_or_default(),
            run_id: text("run_id", i)?.unwrap_or_default(),
            status: text("status", i)?.unwrap_or_default(),
            trigger: text("trigger", i)?.unwrap_or_default(),
            scheduled_for: ts("scheduled_for", i)?,
            as_of: ts("as_of", i)?.unwrap_or_default(),
            attempt: long("attempt", i)?.unwrap_or(1),
            owner: text("owner", i)?.unwrap_or_default(),
            recorded_at: ts("recorded_at", i)?.unwrap_or_default(),
            destination: text("destination", i)?,
            definition_hash: text("definition_hash", i)?,
            audience: long("audience", i)?,
            adds: long("adds", i)?,
            removes: long("removes", i)?,
            files: long("files", i)?,
            error: text("error", i)?,
            retry_at: ts("retry_at", i)?,
            previous_run: text("previous_run", i)?,
        });
    }
    Ok(())
}

/// The runs of one export as of one version of the table.
pub struct Runs {
    pub table: DeltaTable,
    /// Every row, oldest first.
    pub rows: Vec<RunRow>,
}

impl Runs {
    /// Reads the rows of `export` at the table's latest version (creating the table if needed).
    pub async fn load(storage: &Storage, export: &str) -> Result<Runs> {
        let table = storage.open_or_create(&spec()).await?;
        let rows = read(&table, Some(export)).await?;
        Ok(Runs { table, rows })
    }

    /// The latest state of each run, in the order the runs started.
    pub fn latest(&self) -> Vec<RunRow> {
        let mut order: Vec<&str> = Vec::new();
        let mut last: HashMap<&str, &RunRow> = HashMap::new();
        for r in &self.rows {
            if last.insert(&r.run_id, r).is_none() {
                order.push(&r.run_id);
            }
        }
        order.iter().map(|id| last[id].clone()).collect()
    }

    /// The most recently delivered run.
    pub fn last_delivered(&self) -> Option<RunRow> {
        self.latest()
            .into_iter()
            .filter(|r| r.status == status::DELIVERED)
            .max_by_key(|r| r.recorded_at)
    }

    /// Appends rows, declaring the export's partition as read: `false` when another process
    /// committed rows of the same export since this was loaded (read again and decide again).
    pub async fn append(&mut self, storage: &Storage, rows: &[RunRow]) -> Result<bool> {
        let Some(export) = rows.first().map(|r| r.export.clone()) else {
            return Ok(true);
        };
        let predicate = format!("export = {}", lit(&export));
        let done = storage
            .append_checked(&mut self.table, to_batch(rows)?, predicate)
            .await?;
        if done {
            self.rows.extend_from_slice(rows);
        }
        Ok(done)
    }
}

/// Every row of the table, or of one export, oldest first.
pub async fn read(table: &DeltaTable, export: Option<&str>) -> Result<Vec<RunRow>> {
    let ctx = datafusion::prelude::SessionContext::new();
    crate::sql::register(&ctx, TABLE, table, None).await?;
    let filter = export
        .map(|e| format!(" WHERE export = {}", lit(e)))
        .unwrap_or_default();
    let batches = ctx
        .sql(&format!(
            "SELECT * FROM {TABLE}{filter} ORDER BY recorded_at"
        ))
        .await?
        .collect()
        .await?;
    let mut rows = Vec::new();
    for b in &batches {
        from_batch(b, &mut rows)?;
    }
    Ok(rows)
}

/// This process, as written in `owner`: host, pid and the process's start time, so that a
/// reused pid is not mistaken for the same process.
pub fn owner() -> String {
    format!(
        "{}/{}/{}",
        host(),
        std::process::id(),
        start_ticks(std::process::id()).unwrap_or(0)
    )
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// A process's start time in clock ticks since boot (Linux), field 22 of `/proc/PID/stat`.
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; count fields after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the process that wrote `owner` is known to have ended: it ran on this host and no
/// process with its pid and start time exists. Other hosts' processes are judged by a lease.
pub fn owner_dead(owner: &str) -> Option<bool> {
    let mut parts = owner.rsplitn(3, '/');
    let start: u64 = parts.next()?.parse().ok()?;
    let pid: u32 = parts.next()?.parse().ok()?;
    let owner_host = parts.next()?;
    if owner_host != host() || start == 0 {
        return None;
    }
    Some(start_ticks(pid) != Some(start))
}

/// A claim older than this whose process cannot be checked (it ran on another host) is taken
/// to be dead.
pub const LEASE_SECONDS: i64 = 3600;

/// Whether a `running` row's process is gone: checked directly on this host, by the lease for
/// other hosts.
pub fn claim_dead(r: &RunRow, now: chrono::DateTime<chrono::Utc>) -> bool {
    owner_dead(&r.owner)
        .unwrap_or_else(|| now.timestamp_micros() - r.recorded_at > LEASE_SECONDS * 1_000_000)
}

/// A time of the table (microseconds, UTC) as RFC 3339 text to the second.
pub fn time_text(us: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(export: &str, run: &str, status: &str) -> RunRow {
        RunRow {
            export: export.into(),
            run_id: run.into(),
            status: status.into(),
            trigger: "manual".into(),
            owner: owner(),
            recorded_at: chrono::Utc::now().timestamp_micros(),
            attempt: 1,
            ..Default::default()
        }
    }

    #[test]
    fn this_process_is_alive() {
        assert_eq!(owner_dead(&owner()), Some(false));
        let host = host();
        assert_eq!(
            owner_dead(&format!("{host}/{}/12345", u32::MAX - 1)),
            Some(true)
        );
        assert_eq!(owner_dead("elsewhere/1/1"), None);
    }

    #[tokio::test]
    async fn claims_of_the_same_export_conflict_and_others_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::resolve(dir.path(), "data").unwrap();
        let mut a = Runs::load(&storage, "vip").await.unwrap();
        let mut b = Runs::load(&storage, "vip").await.unwrap();
        let mut c = Runs::load(&storage, "other").await.unwrap();
        assert!(
            a.append(&storage, &[row("vip", "r1", "running")])
                .await
                .unwrap()
        );
        assert!(
            !b.append(&storage, &[row("vip", "r2", "running")])
                .await
                .unwrap(),
            "the second claim on vip must conflict"
        );
        assert!(
            c.append(&storage, &[row("other", "r3", "running")])
                .await
                .unwrap()
        );
        let again = Runs::load(&storage, "vip").await.unwrap();
        assert_eq!(again.rows.len(), 1);
        assert_eq!(again.rows[0].run_id, "r1");
        assert_eq!(again.latest()[0].status, "running");
    }
}
