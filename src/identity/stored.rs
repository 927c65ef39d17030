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
}

/// The rows of `t` in `ctx` in which one of `columns` holds one of `ids`. The filter runs
/// inside the Parquet scan: the other columns are decoded for those rows only.
async fn rows_of(
    ctx: &SessionContext,
    columns: &[&str],
    ids: Arc<incremental::Ids>,
) -> Result<Vec<RecordBatch>> {
    ctx.register_udf(incremental::member_of("is_affected", ids));
    let condition: Vec<String> = columns
        .iter()
        .map(|c| format!("is_affected({c})"))
        .collect();
    let query = format!("select * from t where {}", condition.join(" or "));
    Ok(ctx.sql(&query).await?.collect().await?)
}

/// The number of rows of `t` in `ctx` (from its file statistics).
async fn count(ctx: &SessionContext) -> Result<u64> {
    let batches = ctx.sql("select count(*) from t").await?.collect().await?;
    Ok(match batches.first() {
        Some(b) if b.num_rows() > 0 => sightings::ints(b.column(0))?.value(0) as u64,
        _ => 0,
    })
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
/// profile not in `affected`; `in_memory` holds the stored rows of tables already read, by
/// name. A table whose stored rows of the affected profiles are the recomputed ones needs no
/// new version: it is returned among the unchanged, with its row count. Tables not in memory
/// are first read for the affected rows only, and whole only when they changed.
pub async fn keep(
    source: &Source,
    outputs: &mut [Output],
    mut in_memory: HashMap<String, Vec<RecordBatch>>,
    affected: Arc<incremental::Ids>,
) -> Result<HashMap<String, u64>> {
    let tasks: Vec<_> = outputs
        .iter()
        .map(|(spec, batches, _)| {
            tokio::spawn(keep_table(
                source.clone(),
                spec.clone(),
                batches.clone(),
                in_memory.remove(&spec.name),
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
    let columns: &[&str] = if spec.name == tables::conflicts().name {
        &["profile_id", "other_profile_id"]
    } else {
        &["profile_id"]
    };
    // The stored rows, and whether they are already known to differ from `new`.
    let (stored, changed) = match in_memory {
        Some(rows) => (rows, false),
        None => {
            let Some(ctx) = source.context(&spec).await? else {
                return Ok(if new.is_empty() {
                    Kept::Unchanged(0)
                } else {
                    Kept::Rows(Vec::new())
                });
            };
            let old = rows_of(&ctx, columns, affected.clone()).await?;
            if incremental::same_rows(&old, &new, &spec.schema)? {
                return Ok(Kept::Unchanged(count(&ctx).await?));
            }
            (ctx.sql("select * from t").await?.collect().await?, true)
        }
    };
    let split = incremental::split(&stored, columns, &affected, &spec.schema)?;
    if !changed && incremental::same_rows(&split.replaced, &new, &spec.schema)? {
        let rows = |bs: &[RecordBatch]| bs.iter().map(|b| b.num_rows() as u64).sum::<u64>();
        return Ok(Kept::Unchanged(rows(&split.kept) + rows(&split.replaced)));
    }
    Ok(Kept::Rows(split.kept))
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
