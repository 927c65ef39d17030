//! The segment language (`DSL.md`): `.seg` files are lexed and parsed into a syntax tree with
//! spans, bound against the workspace's catalog and compiled into one SQL query per segment
//! (a sqlparser syntax tree), which DataFusion plans and runs. This module owns the commands on
//! segments: list, check, run (and save into `segment_members`), compile, explain and why.

pub mod ast;
pub mod catalog;
pub mod compile;
pub mod diag;
pub mod lexer;
pub mod library;
pub mod parser;
pub mod sqlast;

use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema};
use chrono::{DateTime, Utc};
use datafusion::prelude::{DataFrame, SessionContext};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::storage::{TableSpec, WriteMode, schema::timestamp_type};
use crate::workspace::Workspace;

pub use catalog::{Catalog, Ty};
pub use compile::{Compiled, compile};
pub use diag::{Diagnostic, Source};
pub use library::Library;
pub use sqlast::Dialect;

/// A workspace's segments with everything needed to compile and run them.
pub struct Segments {
    pub ctx: SessionContext,
    pub library: Library,
    pub catalog: Catalog,
}

impl Segments {
    /// Opens the workspace's tables and reads its `.seg` files.
    pub async fn open(ws: &Workspace) -> Result<Segments> {
        Self::in_session(ws, crate::sql::session(ws).await?.0).await
    }

    /// As `open`, in a session for many queries (`sql::session_for_many_queries`).
    pub async fn open_for_many_queries(ws: &Workspace) -> Result<Segments> {
        Self::in_session(ws, crate::sql::session_for_many_queries(ws).await?.0).await
    }

    async fn in_session(ws: &Workspace, ctx: SessionContext) -> Result<Segments> {
        {
            let state = ctx.state_ref();
            let mut state = state.write();
            let options = state.config_mut().options_mut();
            // A hash join builds its table from its left side. The compiler puts the smaller,
            // aggregated side there (`Compiled::members`); DataFusion's reordering by estimated
            // statistics would swap it for the 3.5M rows of `profile_routes` at 1M people,
            // because it estimates an aggregation's output as large as its input.
            options.optimizer.join_reordering = false;
            // Four partitions per core: each partition's hash tables (per-route aggregates,
            // the join to `profile_routes`, the grouping by profile) are then a quarter the
            // size and stay in cache. window_shoppers at 1M people: join 0.92 -> 0.56, the
            // two final aggregations 0.59 -> 0.34 CPU-seconds (`EXPLAIN ANALYZE`).
            options.execution.target_partitions *= 4;
            // No row group statistics: they never prune what segments read. A day of events
            // is one row group (two at 1M people) spanning the whole day and, sorted by event
            // name, pruned finer by the page index; profile fields and traits are not sorted
            // by what segments filter on. Evaluating them per file cost 5% at 100,000 people
            // (lapsed_loyalists 0.090-0.092 s against 0.084-0.086 s, new_visitor_signups
            // 0.170-0.184 s against 0.164-0.165 s; no change at 1M). Page index and row
            // filters still apply.
            options.execution.parquet.pruning = false;
        }
        let catalog = Catalog::load(ws, &ctx).await?;
        let library = Library::load(&ws.dir.join(&ws.config.segments.dir), &ws.dir)?;
        Ok(Segments {
            ctx,
            library,
            catalog,
        })
    }

    /// Compiles one segment, or fails with every error rendered as text.
    pub fn compile(&self, name: &str, as_of: DateTime<Utc>, dialect: Dialect) -> Result<Compiled> {
        if let Some((file, _)) = self.library.segment(name) {
            let f = &self.library.files[file];
            if !f.errors.is_empty() {
                return Err(Error::Input(diag::render(&f.source, &f.errors, false)));
            }
        }
        compile(&self.library, &self.catalog, name, as_of, dialect)
            .map_err(|errors| Error::Input(self.render(&errors, false)))
    }

    /// Renders errors grouped by file.
    pub fn render(&self, errors: &compile::Errors, color: bool) -> String {
        let mut out = String::new();
        for (file, d) in errors {
            match self.library.files.get(*file) {
                Some(f) => out.push_str(&diag::render(&f.source, std::slice::from_ref(d), color)),
                None => out.push_str(&format!("error: {}\n", d.message)),
            }
        }
        out
    }

    /// Every segment, for `segment list`.
    pub fn list(&self) -> Vec<SegmentInfo> {
        self.library
            .segments()
            .map(|(file, s)| {
                let source = &self.library.files[file].source;
                SegmentInfo {
                    name: s.name.text.clone(),
                    title: s.title.clone().unwrap_or_default(),
                    file: source.path.clone(),
                    line: source.line_col(s.span.start).0,
                }
            })
            .collect()
    }

    /// Compiles every segment and collects every error of every file.
    pub fn check(&self, as_of: DateTime<Utc>) -> CheckReport {
        let mut errors: compile::Errors = Vec::new();
        for (i, f) in self.library.files.iter().enumerate() {
            errors.extend(f.errors.iter().map(|d| (i, d.clone())));
        }
        for name in self.library.event_names() {
            errors.extend(compile::check_event(&self.library, &self.catalog, name));
        }
        let mut ok = 0;
        let names: Vec<String> = self.library.segment_names().map(String::from).collect();
        for name in &names {
            match compile(
                &self.library,
                &self.catalog,
                name,
                as_of,
                Dialect::Datafusion,
            ) {
                Ok(_) => ok += 1,
                Err(errs) => {
                    for e in errs {
                        // A segment that uses a broken one repeats nothing new.
                        if e.1.message.contains("has errors") || errors.contains(&e) {
                            continue;
                        }
                        errors.push(e);
                    }
                }
            }
        }
        errors.sort_by_key(|(f, d)| (*f, d.span.start));
        CheckReport {
            files: self.library.files.len(),
            segments: names.len(),
            compiled: ok,
            errors,
        }
    }

    /// The session to run a compiled segment's queries in (`Compiled::join_filters_prune` of
    /// each segment they read). DataFusion's dynamic join filters (each hash join's build
    /// side turned into a filter in its probe side's scan) stay on where they prune event
    /// rows before a join (new_visitor_signups at 1M people: 1.7 s with them, 2.1 s without).
    /// Elsewhere they only repeat the route join's own hash lookup row by row in the
    /// `profile_routes` scan, whose random route keys no statistics can prune:
    /// email_engaged_not_buying takes 0.47 s without them, 0.59 s with.
    ///
    /// Without them, the scans also leave the query's filters to a filter after the scan
    /// instead of evaluating them row by row while decoding (`pushdown_filters`). The event
    /// names already chose the pages to read (a day is sorted by event name) and the windows
    /// the days, so the rows read nearly all pass, and the per-file cost of building a row
    /// filter is what remains: at 100,000 people (a year of small daily files) lapsed_loyalists
    /// took 0.13 s this way against 0.15-0.17 s. With dynamic filters the row filter is what
    /// applies them, so it stays (new_visitor_signups at 1M: 2.1 s without it).
    pub fn session_for(&self, join_filters_prune: bool) -> SessionContext {
        if join_filters_prune {
            return self.ctx.clone();
        }
        let mut state = self.ctx.state();
        let options = state.config_mut().options_mut();
        options.optimizer.enable_join_dynamic_filter_pushdown = false;
        options.execution.parquet.pushdown_filters = false;
        SessionContext::new_with_state(state)
    }

    /// The members of a compiled segment, ordered by profile id.
    pub async fn members(&self, c: &Compiled) -> Result<Vec<RecordBatch>> {
        Ok(self.members_frame(c).await?.collect().await?)
    }

    /// The planned query of a compiled segment's members, ordered by profile id.
    pub async fn members_frame(&self, c: &Compiled) -> Result<DataFrame> {
        let sql = format!("{} ORDER BY 1", c.members());
        Ok(self.session_for(c.join_filters_prune).sql(&sql).await?)
    }

    /// How many members a compiled segment has.
    pub async fn count(&self, c: &Compiled) -> Result<u64> {
        let sql = format!("SELECT count(*) FROM ({})", c.members());
        let session = self.session_for(c.join_filters_prune);
        let batches = session.sql(&sql).await?.collect().await?;
        Ok(batches
            .first()
            .and_then(|b| {
                b.column(0)
                    .as_primitive_opt::<arrow::datatypes::Int64Type>()
            })
            .map_or(0, |a| a.value(0) as u64))
    }

    /// Runs a segment and stores its members in `segment_members`, replacing the segment's
    /// previous membership in one commit. Returns the number of members.
    pub async fn save(&self, ws: &Workspace, c: &Compiled) -> Result<u64> {
        let batches = self.members(c).await?;
        let ids: Vec<String> = batches
            .iter()
            .flat_map(|b| {
                let col = arrow::compute::cast(b.column(0), &DataType::Utf8).expect("text ids");
                let col = col.as_string::<i32>().clone();
                (0..col.len()).map(move |i| col.value(i).to_string())
            })
            .collect();
        let n = ids.len();
        let spec = members_spec();
        let now = Utc::now().timestamp_micros();
        let batch = RecordBatch::try_new(
            spec.schema.clone(),
            vec![
                Arc::new(StringArray::from(vec![c.name.as_str(); n])),
                Arc::new(StringArray::from(ids)),
                Arc::new(
                    TimestampMicrosecondArray::from(vec![c.as_of.timestamp_micros(); n])
                        .with_timezone("UTC"),
                ),
                Arc::new(TimestampMicrosecondArray::from(vec![now; n]).with_timezone("UTC")),
            ],
        )?;
        ws.storage
            .write(
                &spec,
                vec![batch],
                WriteMode::ReplaceWhere("segment", &c.name),
            )
            .await?;
        Ok(n as u64)
    }

    /// The compiled SQL with DataFusion's logical and physical plans for it.
    pub async fn explain(&self, c: &Compiled) -> Result<Explain> {
        let sql = c.members().to_string();
        let session = self.session_for(c.join_filters_prune);
        let df = session.sql(&sql).await?;
        let state = session.state();
        let optimized = state.optimize(df.logical_plan())?;
        let physical = state.create_physical_plan(&optimized).await?;
        Ok(Explain {
            sql,
            logical_plan: optimized.display_indent().to_string(),
            physical_plan: datafusion::physical_plan::displayable(physical.as_ref())
                .indent(true)
                .to_string(),
        })
    }

    /// Each leaf condition's value for one profile, whether it held, and the verdict.
    pub async fn why(&self, ws: &Workspace, c: &Compiled, key: &str) -> Result<Why> {
        let profile_id = crate::identity::show::find_profile(ws, &self.ctx, key).await?;
        let batches = self
            .ctx
            .sql(&c.why(&profile_id).to_string())
            .await?
            .collect()
            .await?;
        let Some(batch) = batches.iter().find(|b| b.num_rows() > 0) else {
            return Err(Error::Input(format!("no profile {profile_id}")));
        };
        let cell = |name: &str| -> Option<String> {
            let i = batch.schema().index_of(name).ok()?;
            let col = batch.column(i);
            if col.is_null(0) {
                return Some("null".into());
            }
            arrow::util::display::array_value_to_string(col, 0).ok()
        };
        let member = cell("member").as_deref() == Some("true");
        let conditions = c
            .leaves
            .iter()
            .enumerate()
            .map(|(i, leaf)| {
                let holds = match cell(&format!("holds_{i}")).as_deref() {
                    Some("true") => "yes",
                    Some("false") => "no",
                    _ => "unknown (null)",
                };
                WhyRow {
                    condition: leaf.text.clone(),
                    value: cell(&format!("value_{i}")).unwrap_or_else(|| "-".into()),
                    holds: holds.to_string(),
                }
            })
            .collect();
        Ok(Why {
            segment: c.name.clone(),
            profile_id,
            as_of: c.as_of.to_rfc3339(),
            member,
            conditions,
        })
    }
}

/// The `segment_members` table: one row per member of each saved segment.
pub fn members_spec() -> TableSpec {
    TableSpec {
        name: "segment_members".into(),
        path: "segment_members".into(),
        schema: Arc::new(Schema::new(vec![
            Field::new("segment", DataType::Utf8, false),
            Field::new("profile_id", DataType::Utf8, false),
            Field::new("as_of", timestamp_type(), false),
            Field::new("saved_at", timestamp_type(), false),
        ])),
        partition_columns: vec!["segment".into()],
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SegmentInfo {
    pub name: String,
    pub title: String,
    pub file: String,
    pub line: usize,
}

#[derive(Debug, Clone)]
pub struct CheckReport {
    pub files: usize,
    pub segments: usize,
    pub compiled: usize,
    pub errors: compile::Errors,
}

#[derive(Debug, Clone, Serialize)]
pub struct Explain {
    pub sql: String,
    pub logical_plan: String,
    pub physical_plan: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Why {
    pub segment: String,
    pub profile_id: String,
    pub as_of: String,
    pub member: bool,
    pub conditions: Vec<WhyRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WhyRow {
    pub condition: String,
    pub value: String,
    pub holds: String,
}

/// Parses `--as-of`: a date (midnight UTC) or an RFC 3339 timestamp; none means now.
pub fn parse_as_of(text: Option<&str>) -> Result<DateTime<Utc>> {
    let Some(text) = text else {
        return Ok(Utc::now());
    };
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).expect("midnight").and_utc());
    }
    Err(Error::Input(format!(
        "--as-of {text:?}: expected a date (2026-06-30) or a timestamp (2026-06-30T12:00:00Z)"
    )))
}
