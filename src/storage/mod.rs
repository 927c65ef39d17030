//! Storage: the workspace's root URL and the Delta Lake tables under it. Every stage reads and
//! writes tables through this module: opening, creating, writing Parquet files and committing
//! them atomically. It knows nothing of what the tables mean (see `schema` for their shapes).

pub mod append;
pub mod schema;

use std::collections::HashMap;
use std::path::Path;

use arrow::datatypes::SchemaRef;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties, TransactionError};
use deltalake::kernel::{Action, Add, StructType};
use deltalake::parquet::basic::{Compression, ZstdLevel};
use deltalake::parquet::file::properties::{EnabledStatistics, WriterProperties};
use deltalake::parquet::schema::types::ColumnPath;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use url::Url;

use crate::error::{Error, Result};

/// The storage root of a workspace: a URL; credentials and endpoints come from the standard
/// environment variables (`AWS_ENDPOINT`, `AWS_ALLOW_HTTP`, keys, region, ...).
#[derive(Debug, Clone)]
pub struct Storage {
    root: Url,
}

/// A table's fixed shape: where it lives under the root, its columns and partitioning.
#[derive(Debug, Clone)]
pub struct TableSpec {
    /// Name in SQL and in messages.
    pub name: String,
    /// Folder below the storage root.
    pub path: String,
    pub schema: SchemaRef,
    pub partition_columns: Vec<String>,
}

impl TableSpec {
    /// A spec for opening a table that may exist, when its shape is whatever was stored.
    pub fn existing(name: &str, path: &str) -> TableSpec {
        TableSpec {
            name: name.into(),
            path: path.into(),
            schema: std::sync::Arc::new(arrow::datatypes::Schema::empty()),
            partition_columns: vec![],
        }
    }
}

/// Why a commit did not happen; a conflict means "read again and retry".
#[derive(Debug)]
pub enum CommitFailure {
    /// A concurrent writer added data this commit had read; redo the work on the new version.
    Conflict,
    Failed(Error),
}

impl Storage {
    /// Resolves a storage setting: a URL (`s3://`, `gs://`, `az://`, `file://`, `memory://`) or a
    /// folder, relative to the workspace folder.
    pub fn resolve(workspace_dir: &Path, spec: &str) -> Result<Storage> {
        let bad = |message: String| Error::StorageUrl {
            url: spec.to_string(),
            message,
        };
        let spec = spec.trim();
        if spec.is_empty() {
            return Err(bad("empty".into()));
        }
        let root = if spec.contains("://") {
            let url = Url::parse(spec).map_err(|e| bad(e.to_string()))?;
            match url.scheme() {
                "s3" | "s3a" | "gs" | "az" | "abfs" | "abfss" | "azure" | "file" | "memory" => {}
                other => {
                    return Err(bad(format!(
                        "unsupported scheme {other:?} (use a folder, s3://, gs://, az:// or file://)"
                    )));
                }
            }
            if url.scheme() != "file" && url.scheme() != "memory" && url.host_str().is_none() {
                return Err(bad("the URL names no bucket or container".into()));
            }
            url
        } else {
            let path = workspace_dir.join(spec);
            std::fs::create_dir_all(&path).map_err(|e| Error::io(&path, e))?;
            let path = path.canonicalize().map_err(|e| Error::io(&path, e))?;
            Url::from_directory_path(&path).map_err(|_| bad("not an absolute path".into()))?
        };
        Ok(Storage {
            root: with_trailing_slash(root),
        })
    }

    /// The root URL.
    pub fn root(&self) -> &Url {
        &self.root
    }

    /// The URL of a table folder below the root.
    pub fn table_url(&self, path: &str) -> Result<Url> {
        self.root
            .join(&format!("{}/", path.trim_matches('/')))
            .map_err(|e| Error::StorageUrl {
                url: self.root.to_string(),
                message: e.to_string(),
            })
    }

    fn builder(&self, spec: &TableSpec) -> Result<DeltaTableBuilder> {
        let url = self.table_url(&spec.path)?;
        DeltaTableBuilder::from_url(url).map_err(|e| Error::delta(&spec.name, e))
    }

    /// Opens a table at its latest version; `None` when it has never been written.
    pub async fn open(&self, spec: &TableSpec) -> Result<Option<DeltaTable>> {
        let url = self.table_url(&spec.path)?;
        if let Ok(dir) = url.to_file_path()
            && !dir.join("_delta_log").is_dir()
        {
            return Ok(None);
        }
        let mut table = self
            .builder(spec)?
            .build()
            .map_err(|e| Error::delta(&spec.name, e))?;
        match table.load().await {
            Ok(()) => Ok(Some(table)),
            Err(e) if is_missing_table(&e) => Ok(None),
            Err(e) => Err(Error::delta(&spec.name, e)),
        }
    }

    /// Opens a table, creating it empty when it does not exist yet. Two processes creating the
    /// same table at once both end up with the one that won.
    pub async fn open_or_create(&self, spec: &TableSpec) -> Result<DeltaTable> {
        if let Some(table) = self.open(spec).await? {
            return Ok(table);
        }
        let schema: StructType = spec
            .schema
            .as_ref()
            .try_into_kernel()
            .map_err(|e| Error::delta(&spec.name, e.into()))?;
        let table = self
            .builder(spec)?
            .build()
            .map_err(|e| Error::delta(&spec.name, e))?;
        let created = deltalake::operations::create::CreateBuilder::new()
            .with_log_store(table.log_store())
            .with_table_name(spec.name.clone())
            .with_columns(schema.fields().cloned())
            .with_partition_columns(spec.partition_columns.clone())
            .with_configuration(TABLE_PROPERTIES.map(|(k, v)| (k, Some(v))))
            .with_save_mode(SaveMode::Ignore)
            .await;
        if let Err(e) = created {
            // Lost a creation race to another process: the winner's table is as good as ours.
            return match self.open(spec).await? {
                Some(table) => Ok(table),
                None => Err(Error::delta(&spec.name, e)),
            };
        }
        self.open(spec).await?.ok_or_else(|| {
            Error::Other(format!(
                "table {} was created but cannot be opened",
                spec.name
            ))
        })
    }

    /// Commits written files in one atomic table version. `read_predicate` (SQL over partition
    /// columns) names the data this commit's work depended on: if another writer committed files
    /// matching it since `table` was loaded, the commit fails with [`CommitFailure::Conflict`].
    pub async fn commit(
        &self,
        table: &mut DeltaTable,
        actions: Vec<Action>,
        read_predicate: Option<String>,
        metadata: HashMap<String, serde_json::Value>,
    ) -> std::result::Result<i64, CommitFailure> {
        let name = table_name(table);
        let snapshot = table
            .snapshot()
            .map_err(|e| CommitFailure::Failed(Error::delta(&name, e)))?;
        let partition_by = {
            let cols = snapshot.metadata().partition_columns().to_vec();
            (!cols.is_empty()).then_some(cols)
        };
        let operation = DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by,
            predicate: read_predicate,
        };
        let result = CommitBuilder::from(CommitProperties::default().with_metadata(metadata))
            .with_actions(actions)
            .build(Some(snapshot), table.log_store(), operation)
            .await;
        match result {
            Ok(done) => {
                let version = done.version();
                // Reload rather than keep the returned state: the caller reads from `table` next.
                table
                    .update_state()
                    .await
                    .map_err(|e| CommitFailure::Failed(Error::delta(&name, e)))?;
                Ok(version as i64)
            }
            Err(DeltaTableError::Transaction {
                source: TransactionError::CommitConflict(_),
            }) => Err(CommitFailure::Conflict),
            Err(e) => Err(CommitFailure::Failed(Error::delta(&name, e))),
        }
    }

    /// Appends `batch` in one commit that declares `read_predicate` (SQL over partition
    /// columns) as read: `Ok(false)`, with the written files removed, when another writer
    /// committed matching data since `table` was loaded. Decisions made from what was read can
    /// then be made again on the new version; this is how a row can act as a lock.
    pub async fn append_checked(
        &self,
        table: &mut DeltaTable,
        batch: arrow::array::RecordBatch,
        read_predicate: String,
    ) -> Result<bool> {
        use deltalake::writer::DeltaWriter;
        let name = table_name(table);
        let mut writer = append::new_writer(table, &name)?;
        writer
            .write(batch)
            .await
            .map_err(|e| Error::delta(&name, e))?;
        let adds = writer.flush().await.map_err(|e| Error::delta(&name, e))?;
        let actions = adds.iter().cloned().map(Action::Add).collect();
        match self
            .commit(table, actions, Some(read_predicate), HashMap::new())
            .await
        {
            Ok(_) => Ok(true),
            Err(CommitFailure::Conflict) => {
                delete_files(table, &adds).await;
                Ok(false)
            }
            Err(CommitFailure::Failed(e)) => Err(e),
        }
    }

    /// Writes `batches` as one commit: appended to the table, or replacing its rows (and its
    /// schema, with `Replace`). Readers see the old version or the new one, never a mix.
    pub async fn write(
        &self,
        spec: &TableSpec,
        batches: Vec<arrow::array::RecordBatch>,
        mode: WriteMode<'_>,
    ) -> Result<i64> {
        let table = match self.open(spec).await? {
            Some(t) => t,
            None => self
                .builder(spec)?
                .build()
                .map_err(|e| Error::delta(&spec.name, e))?,
        };
        let batches = if batches.is_empty() {
            vec![arrow::array::RecordBatch::new_empty(spec.schema.clone())]
        } else {
            batches
        };
        let mut builder = table
            .write(batches)
            .with_table_name(spec.name.clone())
            .with_writer_properties(writer_properties(&spec.name))
            .with_configuration(TABLE_PROPERTIES.map(|(k, v)| (k, Some(v))))
            .with_partition_columns(spec.partition_columns.clone());
        builder = match mode {
            WriteMode::Append => builder.with_save_mode(SaveMode::Append),
            WriteMode::Replace => builder
                .with_save_mode(SaveMode::Overwrite)
                .with_schema_mode(deltalake::operations::write::SchemaMode::Overwrite),
            WriteMode::ReplaceWhere(column, value) => {
                use datafusion::prelude::{col, lit};
                builder
                    .with_save_mode(SaveMode::Overwrite)
                    .with_replace_where(col(column).eq(lit(value)))
            }
        };
        let written = builder.await.map_err(|e| Error::delta(&spec.name, e))?;
        Ok(written.version().map_or(-1, |v| v as i64))
    }

    /// Adds the columns of `spec` that an existing table lacks (a newly declared property or
    /// record column). Existing columns are never changed or dropped.
    pub async fn evolve(&self, spec: &TableSpec) -> Result<()> {
        let Some(table) = self.open(spec).await? else {
            return Ok(());
        };
        let current = table_schema(&table)?;
        let missing: Vec<arrow::datatypes::Field> = spec
            .schema
            .fields()
            .iter()
            .filter(|f| current.field_with_name(f.name()).is_err())
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let missing = arrow::datatypes::Schema::new(missing);
        let fields: StructType = (&missing)
            .try_into_kernel()
            .map_err(|e| Error::delta(&spec.name, e.into()))?;
        table
            .add_columns()
            .with_fields(fields.fields().cloned().collect::<Vec<_>>())
            .await
            .map_err(|e| Error::delta(&spec.name, e))?;
        Ok(())
    }
}

/// Delta properties of every table tribe creates. A checkpoint every 10 commits instead of
/// Delta's default 100: opening a table replays the JSON commits since its last checkpoint,
/// and each daily ingest of `events` commits about 1 MB of file statistics, so at 100 commits
/// opening `events` parsed tens of megabytes (0.3 s of an incremental resolve after 28
/// commits, 0.14 s from a checkpoint).
pub const TABLE_PROPERTIES: [(&str, &str); 1] = [("delta.checkpointInterval", "10")];

/// How [`Storage::write`] treats the rows already in a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode<'a> {
    Append,
    Replace,
    /// Replaces the rows whose `column` equals `value`, keeping all others (one commit).
    ReplaceWhere(&'a str, &'a str),
}

/// Whether a load failed only because no table has been written there yet (a missing folder on a
/// local disk, no `_delta_log` on object storage).
fn is_missing_table(e: &DeltaTableError) -> bool {
    matches!(
        e,
        DeltaTableError::NotATable(_) | DeltaTableError::InvalidTableLocation(_)
    )
}

/// A batch read back (or of an earlier version) in the columns of `schema`: same-named columns,
/// cast when the type differs (a table read through DataFusion may come back with other
/// string encodings than it was written in), nulls where the batch has no such column.
pub fn conform(
    batch: &arrow::array::RecordBatch,
    schema: &SchemaRef,
) -> Result<arrow::array::RecordBatch> {
    let columns = schema
        .fields()
        .iter()
        .map(|f| match batch.column_by_name(f.name()) {
            Some(c) if c.data_type() == f.data_type() => Ok(c.clone()),
            Some(c) if arrow::compute::can_cast_types(c.data_type(), f.data_type()) => {
                Ok(arrow::compute::cast(c, f.data_type())?)
            }
            _ => Ok(arrow::array::new_null_array(
                f.data_type(),
                batch.num_rows(),
            )),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(arrow::array::RecordBatch::try_new(schema.clone(), columns)?)
}

/// Deletes data files that no commit references (written by a commit that did not happen).
/// Best effort: files that stay behind are invisible, and `maintain` removes them.
async fn delete_files(table: &DeltaTable, adds: &[Add]) {
    use object_store::ObjectStoreExt;
    let store = table.object_store();
    for add in adds {
        let _ = store
            .delete(&deltalake::Path::from(add.path.as_str()))
            .await;
    }
}

/// Data files aim at this size; `maintain` compacts small ones up to it.
pub const TARGET_FILE_SIZE: u64 = 128 * 1024 * 1024;

/// Columns of the identity tables whose values (nearly) never repeat within a row group. A
/// dictionary saves nothing there, and building one until it overflows was 40% of the time
/// spent writing `profiles` and `identities`. Elsewhere the same names repeat (a user's many
/// events share a `user_id`) and keep their dictionary.
fn unique_columns(table: &str) -> &'static [&'static str] {
    match table {
        "profiles" => &["profile_id", "user_id", "email", "phone"],
        "identities" => &["id_value"],
        "profile_keys" => &["key"],
        "profile_routes" => &["anonymous_id", schema::ROUTE_HI, schema::ROUTE_LO],
        _ => &[],
    }
}

/// Columns of `events` that keep zstd there; the others are LZ4. These are the ids and the JSON
/// text, which zstd makes two to eight times smaller than LZ4 does, and which segments do not
/// read. The columns segments scan (event names, timestamps, route keys, promoted properties)
/// are small or barely compressible (random route keys not at all), and the Parquet reader
/// creates a new zstd context for every zstd column chunk it reads: with one file per day, a
/// year-long segment at 100,000 people spent 9% of its time creating them.
const EVENTS_ZSTD_COLUMNS: &[&str] = &[
    "message_id",
    "user_id",
    "anonymous_id",
    "previous_id",
    "group_id",
    "route_id",
    "properties",
    "traits",
    "context",
    "integrations",
];

/// Parquet settings for the data files of `table`: zstd at a fast level (LZ4 for the columns
/// of `events` segments scan), and page statistics so that filters on timestamps and ids skip
/// data.
pub fn writer_properties(table: &str) -> WriterProperties {
    let zstd = Compression::ZSTD(ZstdLevel::try_new(1).expect("valid level"));
    let mut builder = WriterProperties::builder()
        .set_compression(zstd)
        .set_max_row_group_row_count(Some(128 * 1024))
        // Pages of at most 4,096 rows instead of 20,000, for every table: in a day of events
        // sorted by event name, a scan for a rare event (orders are 3% of events) then reads a
        // page or two of each column through the page index where it read a whole row group's
        // worth; other tables lose only a little compression.
        .set_data_page_row_count_limit(4096);
    // Values that never repeat gain nothing from a dictionary but the cost of trying one.
    for column in [
        "message_id",
        "timestamp",
        "received_at",
        "sent_at",
        "properties",
        "traits",
        "integrations",
        "reject_id",
        "_record_id",
    ]
    .into_iter()
    .chain(unique_columns(table).iter().copied())
    {
        builder = builder.set_column_dictionary_enabled(ColumnPath::from(column), false);
    }
    // JSON text is never filtered by range; min/max statistics on it are pure cost.
    for column in ["properties", "traits", "context", "integrations", "raw"] {
        builder = builder
            .set_column_statistics_enabled(ColumnPath::from(column), EnabledStatistics::None);
    }
    if table == schema::EVENTS {
        builder = builder.set_compression(Compression::LZ4_RAW);
        for column in EVENTS_ZSTD_COLUMNS {
            builder = builder.set_column_compression(ColumnPath::from(*column), zstd);
        }
    }
    builder.build()
}

pub fn table_name(table: &DeltaTable) -> String {
    table
        .table_url()
        .path_segments()
        .and_then(|mut s| s.rfind(|p| !p.is_empty()))
        .unwrap_or("table")
        .to_string()
}

fn with_trailing_slash(mut url: Url) -> Url {
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    url
}

/// The Arrow schema of a table as Delta stores it.
pub fn table_schema(table: &DeltaTable) -> Result<SchemaRef> {
    let snapshot = table
        .snapshot()
        .map_err(|e| Error::delta(&table_name(table), e))?;
    Ok(snapshot.snapshot().arrow_schema())
}

/// The actions of every commit after version `since`, oldest first; `None` when one of them
/// is no longer in the log (cleaned up after a checkpoint).
pub async fn commits_since(table: &DeltaTable, since: i64) -> Result<Option<Vec<Vec<Action>>>> {
    let name = table_name(table);
    let current = table.version().map_or(-1, |v| v as i64);
    let mut commits = Vec::new();
    for version in (since + 1)..=current {
        let Some(bytes) = table
            .log_store()
            .read_commit_entry(version as u64)
            .await
            .map_err(|e| Error::delta(&name, e))?
        else {
            return Ok(None);
        };
        commits.push(
            deltalake::logstore::get_actions(version as u64, &bytes)
                .map_err(|e| Error::delta(&name, e))?,
        );
    }
    Ok(Some(commits))
}

/// Files added with new data since `since`; `None` when they cannot be read on their own (then
/// everything is read again): data was removed, or a compaction rewrote one of the new files
/// together with older data. A compaction of older files only changes no data and is skipped.
pub async fn added_since(table: &DeltaTable, since: i64) -> Result<Option<Vec<Add>>> {
    let Some(commits) = commits_since(table, since).await? else {
        return Ok(None);
    };
    let mut adds = Vec::new();
    for actions in commits {
        for action in actions {
            match action {
                Action::Add(add) if add.data_change => adds.push(add),
                Action::Remove(r) if r.data_change => return Ok(None),
                Action::Remove(r) if adds.iter().any(|a| a.path == r.path) => return Ok(None),
                _ => {}
            }
        }
    }
    Ok(Some(adds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_resolve_against_the_workspace() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::resolve(dir.path(), "data").unwrap();
        assert_eq!(s.root().scheme(), "file");
        assert!(s.root().path().ends_with("/data/"));
        let t = s.table_url("records/crm").unwrap();
        assert!(t.path().ends_with("/data/records/crm/"));
    }

    #[test]
    fn urls_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::resolve(dir.path(), "s3://bucket/prefix").unwrap();
        assert_eq!(s.root().as_str(), "s3://bucket/prefix/");
        for bad in ["ftp://x/y", "s3:///nobucket", "", "not a url://x"] {
            assert!(
                Storage::resolve(dir.path(), bad).is_err(),
                "{bad} should be rejected"
            );
        }
    }
}
