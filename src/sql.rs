//! SQL over the workspace: a DataFusion session with every table of the workspace registered,
//! JSON functions for the JSON text columns, and a memory pool that spills to disk instead of
//! growing without bound. It runs queries; printing them is `output`'s job.

use std::sync::Arc;

use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use deltalake::DeltaTable;
use deltalake::kernel::Add;

use crate::error::{Error, Result};
use crate::storage::{TableSpec, schema};
use crate::workspace::Workspace;

/// A table visible to SQL and where it is stored.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TableInfo {
    pub name: String,
    pub url: String,
    pub version: i64,
    pub files: u64,
}

/// Every table the workspace may hold, by SQL name and storage folder.
pub fn known_tables(ws: &Workspace) -> Vec<(String, String)> {
    let mut tables = vec![
        (schema::EVENTS.to_string(), schema::EVENTS.to_string()),
        (schema::REJECTED.to_string(), schema::REJECTED.to_string()),
    ];
    for name in ws.config.records.keys() {
        tables.push((name.clone(), format!("records/{name}")));
    }
    // Tables of later stages live directly under the root under their own names.
    for name in schema::RESERVED_TABLES {
        if !tables.iter().any(|(n, _)| n == name) {
            tables.push((name.to_string(), name.to_string()));
        }
    }
    tables
}

/// A session over the workspace, with every existing table registered.
pub async fn session(ws: &Workspace) -> Result<(SessionContext, Vec<TableInfo>)> {
    open_session(ws, false).await
}

/// A session for many queries (the shell, a benchmark): as `session`, and it keeps the footer
/// and page index of every file of `events` in memory (`cache_page_indexes`), read while the
/// table is opened. One-shot commands do not: at 1M people that takes 80 ms and 65 MB, which a
/// query over a few days would not repay.
pub async fn session_for_many_queries(ws: &Workspace) -> Result<(SessionContext, Vec<TableInfo>)> {
    open_session(ws, true).await
}

async fn open_session(
    ws: &Workspace,
    keep_page_indexes: bool,
) -> Result<(SessionContext, Vec<TableInfo>)> {
    let ctx = new_context(ws.config.workspace.memory_limit_mb)?;
    let mut infos = Vec::new();
    for (name, path) in known_tables(ws) {
        let Some(table) = ws.storage.open(&TableSpec::existing(&name, &path)).await? else {
            continue;
        };
        register(&ctx, &name, &table, None).await?;
        if keep_page_indexes && name == schema::EVENTS {
            cache_page_indexes(&ctx, &name, &table).await?;
        }
        let files = table
            .snapshot()
            .map(|s| s.log_data().num_files() as u64)
            .unwrap_or(0);
        infos.push(TableInfo {
            name,
            url: table.table_url().to_string(),
            version: table.version().map_or(-1, |v| v as i64),
            files,
        });
    }
    define_profile_events(&ctx).await?;
    Ok((ctx, infos))
}

/// Defines (or redefines) the `profile_events` view once `events` and `profile_routes` are
/// registered; a view plans against the tables registered when it is defined.
pub async fn define_profile_events(ctx: &SessionContext) -> Result<()> {
    if ctx.table_exist("events")? && ctx.table_exist("profile_routes")? {
        let view = if joins_on_route_keys(ctx).await? {
            PROFILE_EVENTS_BY_KEY
        } else {
            PROFILE_EVENTS
        };
        ctx.sql(view).await?;
    }
    Ok(())
}

/// Whether `profile_events` can join on route keys: every file of `events` has them and the
/// last resolve wrote them into `profile_routes` (false while either table is missing).
pub async fn joins_on_route_keys(ctx: &SessionContext) -> Result<bool> {
    if !(ctx.table_exist("events")? && ctx.table_exist("profile_routes")?) {
        return Ok(false);
    }
    let events = ctx.table_provider("events").await?.schema();
    let routes = ctx.table_provider("profile_routes").await?.schema();
    Ok(schema::has_route_keys(&events) && routes.index_of(schema::ROUTE_LO).is_ok())
}

/// Registers a Delta table in `ctx` under `name`; with `files`, only those data files of it.
pub async fn register(
    ctx: &SessionContext,
    name: &str,
    table: &DeltaTable,
    files: Option<Vec<Add>>,
) -> Result<()> {
    // The provider takes its scan settings from this session, except that it does not put
    // the query's filters into the Parquet scan itself: DataFusion's physical optimizer
    // pushes them there (`pushdown_filters`), and with both the scan evaluated every
    // condition twice (window_shoppers: `event`, `timestamp` and the OR of windows, twice).
    // The copy shares the context's runtime, so the table's object store registered through
    // it serves the context's queries too.
    let mut settings = ctx.state();
    table
        .update_datafusion_session(&settings)
        .map_err(|e| Error::delta(name, e))?;
    settings
        .config_mut()
        .options_mut()
        .execution
        .parquet
        .pushdown_filters = false;
    let builder = table.table_provider().with_session(Arc::new(settings));
    let provider = match files {
        None => builder.await?,
        Some(adds) => builder.with_adds(adds).await?,
    };
    ctx.register_table(name, provider)?;
    Ok(())
}

/// Loads the footer and page index of every data file of `table` into the session's Parquet
/// metadata cache, under the key its scans look up; files already there cost a lookup.
/// DataFusion's scan caches the footers it reads but loads each file's page index again on
/// every query (apache/datafusion#23978): a year of daily files at 100,000 people spent 8 ms
/// of each query's 50 ms of opening files on it. For sessions that run many queries: the SQL
/// endpoint (on every refresh of `events`) and `session_for_many_queries`.
pub async fn cache_page_indexes(
    ctx: &SessionContext,
    name: &str,
    table: &DeltaTable,
) -> Result<()> {
    use datafusion::datasource::physical_plan::parquet::metadata::DFParquetMetadata;
    use datafusion::execution::object_store::ObjectStoreUrl;
    use futures::{StreamExt, TryStreamExt};
    use object_store::path::Path;
    use parquet::file::metadata::PageIndexPolicy;

    let snapshot = table.snapshot().map_err(|e| Error::delta(name, e))?;
    let url = table.table_url();
    let store_url = ObjectStoreUrl::parse(&url[..url::Position::BeforePath])?;
    let runtime = ctx.runtime_env();
    let store = runtime.object_store(&store_url)?;
    let cache = runtime.cache_manager.get_file_metadata_cache();
    let root = Path::from_url_path(url.path()).map_err(|e| Error::Other(e.to_string()))?;
    // As the Delta scan describes its files: the table root's path joined with the file's,
    // the size from the log, no modification time.
    let files: Vec<object_store::ObjectMeta> = (snapshot.log_data().iter())
        .map(|f| object_store::ObjectMeta {
            location: root.parts().chain(f.object_store_path().parts()).collect(),
            last_modified: chrono::DateTime::from_timestamp_nanos(0),
            size: f.size() as u64,
            e_tag: None,
            version: None,
        })
        .collect();
    futures::stream::iter(files)
        .map(|meta| {
            let (store, cache) = (store.clone(), cache.clone());
            async move {
                DFParquetMetadata::new(store.as_ref(), &meta)
                    .with_file_metadata_cache(Some(cache))
                    .with_page_index_policy(Some(PageIndexPolicy::Optional))
                    .fetch_metadata()
                    .await
            }
        })
        .buffer_unordered(16)
        .try_for_each(|_| async { Ok(()) })
        .await?;
    Ok(())
}

/// Every event with the profile it belongs to, found by its (user id, anonymous id) pair, or
/// for events that carry neither (like orders from a shop system) by the event itself (its
/// `route_id`, the message id of exactly those events), in `profile_routes`, which identity
/// resolution writes. Events it has not seen yet have no profile. `IS NOT DISTINCT FROM`
/// makes absent ids match as equals in the one hash join.
pub const PROFILE_EVENTS: &str = "create or replace view profile_events as \
    select r.profile_id, e.* \
    from events e \
    left join profile_routes r \
      on (r.user_id is not distinct from e.user_id) \
     and (r.anonymous_id is not distinct from e.anonymous_id) \
     and (r.message_id is not distinct from e.route_id)";

/// The view on a workspace whose events all carry route keys (`schema::route_key`): one
/// equality join on two integers, where the text form compares up to three nullable strings
/// per event and holds them all in the join's hash table.
pub const PROFILE_EVENTS_BY_KEY: &str = "create or replace view profile_events as \
    select r.profile_id, e.* \
    from events e \
    left join profile_routes r on r.route_hi = e.route_hi and r.route_lo = e.route_lo";

/// The text form as two branches, events with a user or anonymous id and events with neither,
/// for engines that plan the one join poorly: DuckDB 2.0 takes 60 times longer over the
/// one-join text view.
pub const PROFILE_EVENTS_UNION: &str = "create or replace view profile_events as \
    select r.profile_id, e.* \
    from events e \
    left join (select * from profile_routes where message_id is null) r \
      on (r.user_id is not distinct from e.user_id) \
     and (r.anonymous_id is not distinct from e.anonymous_id) \
    where e.user_id is not null or e.anonymous_id is not null \
    union all \
    select r.profile_id, e.* \
    from events e \
    left join profile_routes r on r.message_id = e.route_id \
    where e.user_id is null and e.anonymous_id is null";

/// The `profile_events` view for another engine running `tribe segment compile --dialect`
/// output over the same files: the route key join when `joins_on_route_keys`, else the text
/// form in two branches.
pub fn portable_profile_events(by_key: bool) -> &'static str {
    if by_key {
        PROFILE_EVENTS_BY_KEY
    } else {
        PROFILE_EVENTS_UNION
    }
}

/// A DataFusion context with tribe's settings: all cores, a spilling memory pool of
/// `memory_mb`, filters pushed into Parquet scans, JSON functions, files queryable by path.
pub fn new_context(memory_mb: usize) -> Result<SessionContext> {
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(FairSpillPool::new(
            memory_mb.max(64) * 1024 * 1024,
        )))
        // Room for the page indexes `cache_page_indexes` holds (65 MB at 1M people) beside
        // the footers, instead of DataFusion's 50 MB.
        .with_metadata_cache_limit(512 * 1024 * 1024)
        .build_arc()?;
    let mut config = SessionConfig::new()
        .with_information_schema(true)
        .with_target_partitions(std::thread::available_parallelism().map_or(2, |n| n.get()));
    let options = config.options_mut();
    options.execution.parquet.pushdown_filters = true;
    options.execution.parquet.reorder_filters = true;
    // Expert tuning without a rebuild: TRIBE_DATAFUSION="datafusion.a.b=v,datafusion.c=w".
    if let Ok(settings) = std::env::var("TRIBE_DATAFUSION") {
        for setting in settings.split(',').filter(|s| !s.trim().is_empty()) {
            let (key, value) = setting.split_once('=').ok_or_else(|| {
                Error::Input(format!("TRIBE_DATAFUSION: {setting:?} is not key=value"))
            })?;
            options.set(key.trim(), value.trim())?;
        }
    }
    // Files can be queried by path, as in DuckDB: select * from 'truth.csv'.
    let mut ctx = SessionContext::new_with_config_rt(config, runtime).enable_url_table();
    datafusion_functions_json::register_all(&mut ctx)?;
    Ok(ctx)
}

/// A SQL string literal, for SQL text the library builds itself.
pub fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A SQL identifier, quoted.
pub fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// A SQL timestamp literal (UTC).
pub fn ts(at: chrono::DateTime<chrono::Utc>) -> String {
    format!(
        "CAST({} AS TIMESTAMP)",
        lit(&at.format("%Y-%m-%d %H:%M:%S%.6f").to_string())
    )
}

/// Runs one SQL statement and streams its result.
pub async fn run(ctx: &SessionContext, query: &str) -> Result<SendableRecordBatchStream> {
    let df = ctx.sql(query).await?;
    Ok(df.execute_stream().await?)
}
