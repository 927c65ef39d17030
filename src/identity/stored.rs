//! The stored identity tables as a run reads them: whole, by query, or for the affected
//! profiles only, and what an incremental run keeps of them. Each table is kept in a task of
//! its own, so that reading one overlaps with splitting another on the other core; the
//! profiles table is made here too, while the others are kept and written.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;

use crate::error::{Error, Result};
use crate::identity::profiles::Profile;
use crate::identity::{Output, incremental, sightings, tables};
use crate::storage::{Storage, TableSpec};

/// Where the stored tables are and how much memory a query over one may use.
#[derive(Clone)]
pub struct Source {
    storage: Storage,
    memory_limit_mb: usize,
}

impl Source {
    pub fn new(ws: &crate::workspace::Workspace) -> Source {
        Source {
            storage: ws.storage.clone(),
            memory_limit_mb: ws.config.workspace.memory_limit_mb,
        }
    }

    /// A session with the table of `spec` registered as `t`; None when it does not exist.
    async fn context(&self, spec: &TableSpec) -> Result<Option<SessionContext>> {
        let Some(table) = self.storage.open(spec).await? else {
            return Ok(None);
        };
        let ctx = crate::sql::new_context(self.memory_limit_mb)?;
        crate::sql::register(&ctx, "t", &table, None).await?;
        Ok(Some(ctx))
    }

    /// The result of `query` over the table of `spec` (named `t`); None when the table does
    /// not exist.
    pub async fn stream(
        &self,
        spec: &TableSpec,
        query: &str,
    ) -> Result<Option<SendableRecordBatchStream>> {
        let Some(ctx) = self.context(spec).await? else {
            return Ok(None);
        };
        Ok(Some(ctx.sql(query).await?.execute_stream().await?))
    }

    /// The rows of `query` over the table of `spec` as text; none when it does not exist.
    pub async fn text_rows(&self, spec: &TableSpec, query: &str) -> Result<Vec<Vec<String>>> {
        let Some(mut stream) = self.stream(spec, query).await? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        while let Some(b) = stream.try_next().await? {
            out.extend(sightings::text_rows(&b)?);
        }
        Ok(out)
    }

    /// Every row of the table of `spec` (none when it does not exist).
    pub async fn all(&self, spec: &TableSpec) -> Result<Vec<RecordBatch>> {
        match self.stream(spec, "select * from t").await? {
            Some(stream) => Ok(stream.try_collect().await?),
            None => Ok(Vec::new()),
        }
    }

    /// The rows of the table of `spec` in which one of `columns` holds one of `ids`. The
    /// filter runs inside the Parquet scan: the other columns are decoded for those rows only.
    async fn rows_of(
        &self,
        spec: &TableSpec,
        columns: &[&str],
        ids: Arc<incremental::Ids>,
    ) -> Result<Vec<RecordBatch>> {
        let Some(ctx) = self.context(spec).await? else {
            return Ok(Vec::new());
        };
        ctx.register_udf(incremental::member_of("is_affected", ids));
        let condition: Vec<String> = columns
            .iter()
            .map(|c| format!("is_affected({c})"))
            .collect();
        let query = format!("select * from t where {}", condition.join(" or "));
        Ok(ctx.sql(&query).await?.collect().await?)
    }

    /// The number of rows of the table of `spec` (from its file statistics).
    async fn count(&self, spec: &TableSpec) -> Result<u64> {
        let rows = self.text_rows(spec, "select count(*) from t").await?;
        Ok(rows.first().and_then(|r| r[0].parse().ok()).unwrap_or(0))
    }
}

/// Stored tables an incremental run rewrites, read when first needed and kept while they are
/// needed again.
pub struct Stored {
    pub source: Source,
    read: HashMap<String, Vec<RecordBatch>>,
}

impl Stored {
    pub fn new(source: Source) -> Stored {
        Stored {
            source,
            read: HashMap::new(),
        }
    }

    /// Every row of the table of `spec` (none when it does not exist).
    pub async fn take(&mut self, spec: &TableSpec) -> Result<Vec<RecordBatch>> {
        match self.read.remove(&spec.name) {
            Some(rows) => Ok(rows),
            None => self.source.all(spec).await,
        }
    }

    /// Rows taken and needed again later.
    pub fn put_back(&mut self, spec: &TableSpec, rows: Vec<RecordBatch>) {
        self.read.insert(spec.name.clone(), rows);
    }
}

/// What an incremental run does with one output table.
enum Kept {
    /// The stored rows of the affected profiles are the recomputed ones: the table needs no
    /// new version. It holds this many rows.
    Unchanged(u64),
    /// The stored rows of every other profile, to be written with the recomputed ones.
    Rows(Vec<RecordBatch>),
}

/// Adds to the identity, key, route, conflict and consent outputs the stored rows of every
/// profile not in `affected` (`identities` holds the stored identities, already read). A
/// table whose stored rows of the affected profiles are the recomputed ones needs no new
/// version: it is returned among the unchanged, with its row count. Tables not in memory are
/// first read for the affected rows only, and whole only when they changed.
pub async fn keep(
    stored: &mut Stored,
    outputs: &mut [Output],
    identities: &[RecordBatch],
    affected: Arc<incremental::Ids>,
) -> Result<HashMap<String, u64>> {
    let tasks: Vec<_> = outputs
        .iter()
        .map(|(spec, batches, _)| {
            let in_memory = if spec.name == tables::identities().name {
                Some(identities.to_vec())
            } else {
                stored.read.remove(&spec.name)
            };
            tokio::spawn(keep_table(
                stored.source.clone(),
                spec.clone(),
                batches.clone(),
                in_memory,
                affected.clone(),
            ))
        })
        .collect();
    let mut unchanged = HashMap::new();
    for ((spec, batches, _), task) in outputs.iter_mut().zip(tasks) {
        let kept = task
            .await
            .map_err(|e| Error::Other(format!("keeping the rows of {}: {e}", spec.name)))??;
        match kept {
            Kept::Unchanged(rows) => {
                unchanged.insert(spec.name.clone(), rows);
            }
            Kept::Rows(rows) => batches.extend(rows),
        }
    }
    Ok(unchanged)
}

/// What to do with the table of `spec`, given the recomputed rows `new` of the affected
/// profiles and the stored rows when already read.
async fn keep_table(
    source: Source,
    spec: TableSpec,
    new: Vec<RecordBatch>,
    in_memory: Option<Vec<RecordBatch>>,
    affected: Arc<incremental::Ids>,
) -> Result<Kept> {
    let count = |bs: &[RecordBatch]| -> u64 { bs.iter().map(|b| b.num_rows() as u64).sum() };
    let columns: &[&str] = if spec.name == tables::conflicts().name {
        &["profile_id", "other_profile_id"]
    } else {
        &["profile_id"]
    };
    let (old, kept) = match in_memory {
        Some(rows) => {
            let split = incremental::split(&rows, columns, &affected, &spec.schema)?;
            (split.replaced, Some(split.kept))
        }
        None => (
            source.rows_of(&spec, columns, affected.clone()).await?,
            None,
        ),
    };
    if incremental::same_rows(&old, &new, &spec.schema)? {
        let rows = match &kept {
            Some(kept) => count(kept) + count(&old),
            None => source.count(&spec).await?,
        };
        return Ok(Kept::Unchanged(rows));
    }
    Ok(Kept::Rows(match kept {
        Some(kept) => kept,
        None => {
            let rows = source.all(&spec).await?;
            incremental::split(&rows, columns, &affected, &spec.schema)?.kept
        }
    }))
}

/// The rows of `profiles`: those of the recomputed `profiles`, and in an incremental run the
/// stored rows of every profile not in `affected`.
pub async fn profiles_table(
    source: Source,
    profiles: Vec<Profile>,
    affected: Option<Arc<incremental::Ids>>,
    skip_traits: Vec<String>,
) -> Result<(TableSpec, RecordBatch)> {
    let stored = match &affected {
        Some(_) => {
            source
                .all(&TableSpec::existing("profiles", "profiles"))
                .await?
        }
        None => Vec::new(),
    };
    let made = tokio::task::spawn_blocking(move || {
        let kept: Vec<RecordBatch> = match &affected {
            Some(affected) => stored
                .iter()
                .map(|b| incremental::keep_rows(b, &["profile_id"], affected))
                .collect::<Result<_>>()?,
            None => Vec::new(),
        };
        tables::profiles_batch(&profiles, &kept, &skip_traits)
    });
    made.await
        .map_err(|e| Error::Other(format!("making the profiles table: {e}")))?
}
