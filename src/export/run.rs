//! One export run, from claim to manifest. The steps, and what a crash after each leaves:
//!
//! 1. claim: a `running` row in `export_runs` (a crash leaves a claim whose process is gone;
//!    the next run of the export notices, removes the run's files and records it `abandoned`);
//! 2. the audience query, then the diff against the last delivered run's state;
//! 3. the files: audience, adds, removes into the run's own folder, and the state (member ids
//!    with the rows as delivered) under the workspace's `export_state/` (a crash leaves files
//!    without a manifest: invisible to consumers, removed by the next run);
//! 4. the manifest, written last: from here on the run is delivered (a crash before step 5 is
//!    found by the next run, which reads the manifest and records the run `delivered`);
//! 5. the `delivered` row.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{AsArray, BooleanArray, RecordBatch};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use chrono::{DateTime, Utc};
use datafusion::prelude::SessionContext;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::audience;
use super::definition::ExportConfig;
use super::files::{self, Location, MANIFEST, Manifest};
use super::runs::{self, RunRow, Runs, status, time_text};
use crate::error::{Error, Result};
use crate::segment::{Dialect, Segments};
use crate::workspace::Workspace;

/// What to run.
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub as_of: DateTime<Utc>,
    /// The scheduled time this run is for; `None` for a run by hand.
    pub scheduled_for: Option<DateTime<Utc>>,
    pub attempt: i64,
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct RunOutcome {
    pub export: String,
    pub run_id: String,
    /// `delivered`; `already delivered` when the scheduled time had been delivered before;
    /// `recovered` when a crashed run of the same request turned out to be delivered.
    pub status: String,
    pub segment: String,
    pub as_of: String,
    pub scheduled_for: Option<String>,
    pub audience: u64,
    pub adds: u64,
    pub removes: u64,
    pub files: u64,
    pub destination: String,
    pub previous_run: Option<String>,
    pub seconds: f64,
    /// Seconds per step: prepare, query, diff, encode, write.
    pub phases: Vec<(String, f64)>,
    pub notes: Vec<String>,
}

/// An export ready to run: its definition and audience query.
struct Prepared {
    name: String,
    def: ExportConfig,
    audience: audience::Audience,
    definition_hash: String,
    /// The session the audience query runs in (`Segments::session_for`).
    session: SessionContext,
}

async fn prepare(ws: &Workspace, name: &str, as_of: DateTime<Utc>) -> Result<Prepared> {
    let def = find(ws, name)?.clone();
    let segments = Segments::open(ws).await?;
    let members = segments.compile(&def.segment, as_of, Dialect::Datafusion)?;
    let suppress = match &def.suppress {
        Some(s) => Some(segments.compile(s, as_of, Dialect::Datafusion)?),
        None => None,
    };
    let profiles = table_schema(&segments, "profiles").await.ok_or_else(|| {
        Error::Input(format!(
            "export {name}: there are no profiles yet; run `tribe resolve` first"
        ))
    })?;
    let traits = table_schema(&segments, "traits").await;
    let audience = audience::plan(
        &def,
        &members.members().to_string(),
        suppress
            .as_ref()
            .map(|s| s.members().to_string())
            .as_deref(),
        &profiles,
        traits.as_ref(),
    )
    .map_err(|m| Error::Input(format!("export {name}: {m}")))?;
    // The definition hash covers what decides the rows: the export's settings and the
    // segments' compiled SQL (with every segment and event it uses), at a fixed as-of time.
    let epoch = DateTime::<Utc>::UNIX_EPOCH;
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(&def).expect("definition serialises"));
    h.update(
        segments
            .compile(&def.segment, epoch, Dialect::Datafusion)?
            .members()
            .to_string(),
    );
    if let Some(s) = &def.suppress {
        h.update(
            segments
                .compile(s, epoch, Dialect::Datafusion)?
                .members()
                .to_string(),
        );
    }
    let join_filters_prune =
        members.join_filters_prune || suppress.as_ref().is_some_and(|s| s.join_filters_prune);
    Ok(Prepared {
        name: name.to_string(),
        def,
        audience,
        definition_hash: hex::encode(h.finalize()),
        session: segments.session_for(join_filters_prune),
    })
}

async fn table_schema(segments: &Segments, table: &str) -> Option<Schema> {
    let df = segments.ctx.table(table).await.ok()?;
    Some(df.schema().as_arrow().clone())
}

/// The definition of export `name`.
pub fn find<'a>(ws: &'a Workspace, name: &str) -> Result<&'a ExportConfig> {
    ws.config.exports.get(name).ok_or_else(|| {
        let hint = crate::segment::diag::closest(name, ws.config.exports.keys().map(String::as_str))
            .map(|k| format!(" (did you mean `{k}`?)"))
            .unwrap_or_default();
        Error::Input(format!(
            "no export `{name}`{hint}; exports are [exports.NAME] in tribe.toml or exports/NAME.toml"
        ))
    })
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// The folder holding the state (delivered rows with their profile ids) of export `name`.
fn state_location(ws: &Workspace, name: &str) -> Result<Location> {
    Location::resolve(ws.storage.root(), &format!("export_state/{name}/"))
}

/// Runs export `name` once: see the module doc for the steps.
pub async fn run(ws: &Workspace, name: &str, req: &RunRequest) -> Result<RunOutcome> {
    let started = Instant::now();
    let run_id = new_run_id(req.scheduled_for.unwrap_or(req.as_of));
    let p = match prepare(ws, name, req.as_of).await {
        Ok(p) => p,
        Err(e) => {
            // A scheduled run that cannot even start (a broken segment, a missing column) is
            // recorded like any failure, so the schedule shows it and retries it.
            if let (Some(_), Ok(def)) = (req.scheduled_for, find(ws, name)) {
                let mut row = request_row(name, &run_id, req);
                row.destination = None;
                let failed = failed_row(&row, def, req, &e);
                let mut runs = Runs::load(&ws.storage, name).await?;
                append_until_done(ws, &mut runs, &failed).await?;
            }
            return Err(e);
        }
    };
    let destination = files::render(
        &p.def.destination,
        name,
        &run_id,
        &p.def.segment,
        &req.as_of.format("%Y-%m-%d").to_string(),
    );
    let dest = Location::resolve(ws.storage.root(), &destination)?;
    let claim = RunRow {
        destination: Some(dest.url.clone()),
        definition_hash: Some(p.definition_hash.clone()),
        ..request_row(name, &run_id, req)
    };
    let mut runs = loop {
        let mut runs = Runs::load(&ws.storage, name).await?;
        let mut conflict = false;
        let mut recovered = Vec::new();
        for r in runs.latest().iter().filter(|r| r.status == status::RUNNING) {
            if !runs::claim_dead(r, Utc::now()) {
                return Err(Error::Busy(format!(
                    "export {name}: run {} is in progress (started {} by {})",
                    r.run_id,
                    time_text(r.recorded_at),
                    r.owner
                )));
            }
            let row = recover(ws, r).await?;
            let delivered = row.status == status::DELIVERED;
            if !runs.append(&ws.storage, std::slice::from_ref(&row)).await? {
                conflict = true;
                break;
            }
            if delivered {
                recovered.push(row);
            }
        }
        if conflict {
            continue;
        }
        let same = |r: &RunRow| match req.scheduled_for {
            Some(s) => r.scheduled_for == Some(micros(s)),
            None => r.scheduled_for.is_none() && r.as_of == micros(req.as_of),
        };
        if let Some(r) = recovered.iter().find(|r| same(r)) {
            return Ok(outcome_of(r, &p, "recovered", started));
        }
        if req.scheduled_for.is_some()
            && let Some(r) = runs
                .latest()
                .into_iter()
                .find(|r| r.status == status::DELIVERED && same(r))
        {
            return Ok(outcome_of(&r, &p, "already delivered", started));
        }
        if runs
            .append(&ws.storage, std::slice::from_ref(&claim))
            .await?
        {
            break runs;
        }
    };
    crate::pause_point("claimed");
    let mut phases = crate::output::Phases::since(started);
    phases.mark("prepare");
    match deliver(ws, &p, &claim, &runs, &dest, &mut phases).await {
        Ok(row) => {
            append_until_done(ws, &mut runs, &row).await?;
            let mut outcome = outcome_of(&row, &p, status::DELIVERED, started);
            outcome.phases = phases.into_vec();
            Ok(outcome)
        }
        Err(e) => {
            // Files without a manifest are invisible, but they are ours to remove.
            let _ = dest.delete_all().await;
            let failed = failed_row(&claim, &p.def, req, &e);
            append_until_done(ws, &mut runs, &failed).await?;
            Err(e)
        }
    }
}

/// The `running` row of a request, before its destination is known.
fn request_row(name: &str, run_id: &str, req: &RunRequest) -> RunRow {
    RunRow {
        export: name.to_string(),
        run_id: run_id.to_string(),
        status: status::RUNNING.into(),
        trigger: if req.scheduled_for.is_some() {
            "schedule"
        } else {
            "manual"
        }
        .into(),
        scheduled_for: req.scheduled_for.map(micros),
        as_of: micros(req.as_of),
        attempt: req.attempt,
        owner: runs::owner(),
        recorded_at: micros(Utc::now()),
        ..Default::default()
    }
}

/// The `failed` row of a run; a scheduled run with attempts left gets a retry time, after a
/// wait that doubles with each attempt (at most an hour).
fn failed_row(claim: &RunRow, def: &ExportConfig, req: &RunRequest, e: &Error) -> RunRow {
    let mut failed = claim.clone();
    failed.status = status::FAILED.into();
    failed.recorded_at = micros(Utc::now());
    failed.error = Some(e.to_string());
    if req.scheduled_for.is_some() && req.attempt < def.max_attempts as i64 {
        let doubling = 1u64 << (req.attempt - 1).clamp(0, 20);
        let wait = def.retry_seconds.saturating_mul(doubling).min(3600) as i64;
        failed.retry_at = Some(failed.recorded_at + wait * 1_000_000);
    }
    failed
}

/// Appends a row whose content does not depend on what was read (an outcome of our own claim).
async fn append_until_done(ws: &Workspace, runs: &mut Runs, row: &RunRow) -> Result<()> {
    for _ in 0..50 {
        if runs.append(&ws.storage, std::slice::from_ref(row)).await? {
            return Ok(());
        }
        *runs = Runs::load(&ws.storage, &row.export).await?;
    }
    Err(Error::Other(format!(
        "{}: gave up recording run {} after 50 conflicting writes",
        runs::TABLE,
        row.run_id
    )))
}

/// A run id: the time it is for, then random digits so that attempts differ.
fn new_run_id(t: DateTime<Utc>) -> String {
    format!(
        "{}-{:06x}",
        t.format("%Y%m%dT%H%M%SZ"),
        rand::random::<u32>() & 0xff_ffff
    )
}

fn outcome_of(r: &RunRow, p: &Prepared, status: &str, started: Instant) -> RunOutcome {
    RunOutcome {
        export: p.name.clone(),
        run_id: r.run_id.clone(),
        status: status.into(),
        segment: p.def.segment.clone(),
        as_of: time_text(r.as_of),
        scheduled_for: r.scheduled_for.map(time_text),
        audience: r.audience.unwrap_or(0) as u64,
        adds: r.adds.unwrap_or(0) as u64,
        removes: r.removes.unwrap_or(0) as u64,
        files: r.files.unwrap_or(0) as u64,
        destination: r.destination.clone().unwrap_or_default(),
        previous_run: r.previous_run.clone(),
        seconds: crate::output::round3(started.elapsed().as_secs_f64()),
        phases: Vec::new(),
        notes: p.audience.notes.clone(),
    }
}

/// The state row for a claim whose process died: `delivered` when its manifest exists (the
/// crash came after delivery), else `abandoned`, after removing its files.
async fn recover(ws: &Workspace, claim: &RunRow) -> Result<RunRow> {
    let mut row = claim.clone();
    row.owner = runs::owner();
    row.recorded_at = micros(Utc::now());
    let dest = claim
        .destination
        .as_deref()
        .map(|d| Location::resolve(ws.storage.root(), d))
        .transpose()?;
    let manifest = match &dest {
        Some(d) => d.get(MANIFEST).await?,
        None => None,
    };
    if let Some(bytes) = manifest {
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
            Error::Other(format!(
                "{}{MANIFEST}: not a manifest: {e}",
                dest.as_ref().map(|d| d.url.as_str()).unwrap_or("")
            ))
        })?;
        row.status = status::DELIVERED.into();
        row.audience = Some(m.audience as i64);
        row.adds = Some(m.adds as i64);
        row.removes = Some(m.removes as i64);
        row.files = Some(m.files.len() as i64);
        row.previous_run = m.previous_run;
        return Ok(row);
    }
    row.status = status::ABANDONED.into();
    row.error = Some("the process running it ended before delivering".into());
    if let Some(d) = &dest
        && let Err(e) = d.delete_all().await
    {
        row.error = Some(format!(
            "the process running it ended before delivering; its files could not be removed: {e}"
        ));
    }
    let state = state_location(ws, &claim.export)?;
    let _ = state.delete(&format!("{}.parquet", claim.run_id)).await;
    Ok(row)
}

/// Steps 2 to 4: query, diff, files, state, manifest. Returns the `delivered` row.
async fn deliver(
    ws: &Workspace,
    p: &Prepared,
    claim: &RunRow,
    runs: &Runs,
    dest: &Location,
    phases: &mut crate::output::Phases,
) -> Result<RunRow> {
    let df = p.session.sql(&p.audience.sql).await?;
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    let current = df.collect().await?;
    let previous = runs.last_delivered();
    let state = state_location(ws, &p.name)?;
    let before = match &previous {
        Some(prev) => {
            let bytes = state
                .get(&format!("{}.parquet", prev.run_id))
                .await?
                .ok_or_else(|| {
                    Error::Other(format!(
                        "export {}: the state of the last delivered run {} is missing from {}; \
                         adds and removes cannot be computed",
                        p.name, prev.run_id, state.url
                    ))
                })?;
            Some(files::read_parquet(bytes)?)
        }
        None => None,
    };
    phases.mark("query");
    let (adds, removes) = diff(&schema, &current, before.as_deref().unwrap_or(&[]))?;
    phases.mark("diff");
    let out_schema = Arc::new(without_id(&schema));
    let strip = |batches: &[RecordBatch]| -> Result<Vec<RecordBatch>> {
        batches
            .iter()
            .map(|b| {
                RecordBatch::try_new(out_schema.clone(), b.columns()[1..].to_vec())
                    .map_err(Error::from)
            })
            .collect()
    };
    let (audience_rows, adds_rows, removes_rows) =
        (strip(&current)?, strip(&adds)?, strip(&removes)?);
    let count = |b: &[RecordBatch]| b.iter().map(|b| b.num_rows() as u64).sum::<u64>();
    let def = &p.def;
    let encode = |kind: &str, rows: &[RecordBatch]| {
        files::files_of(
            kind,
            &def.format,
            def.extension(),
            &out_schema,
            rows,
            def.max_rows_per_file,
        )
    };
    let (encoded, state_bytes) = rayon::join(
        || -> Result<Vec<files::Encoded>> {
            let audience = encode("audience", &audience_rows)?;
            // Adds are a subset of the audience in the same order: when they are all of it (a
            // first run), their files are the audience's bytes under other names.
            let adds = if count(&adds_rows) == count(&audience_rows) {
                files::renamed(&audience, "adds")
            } else {
                encode("adds", &adds_rows)?
            };
            Ok(vec![audience, adds, encode("removes", &removes_rows)?])
        },
        || files::encode_state(&schema, &current),
    );
    let (encoded, state_bytes) = (encoded?, state_bytes?);
    phases.mark("encode");
    // All files at once: the object store takes them in parallel, and the state with them.
    let state_name = format!("{}.parquet", claim.run_id);
    let mut entries = Vec::new();
    let mut pending = Vec::new();
    for (i, (entry, bytes)) in encoded.into_iter().flatten().enumerate() {
        if i == 0 {
            // The first file alone, so that a crash test can stop between files.
            dest.put(&entry.name, bytes).await?;
            crate::pause_point("first-file");
        } else {
            pending.push(dest.put_owned(entry.name.clone(), bytes));
        }
        entries.push(entry);
    }
    pending.push(state.put_owned(state_name, state_bytes));
    futures::future::try_join_all(pending).await?;
    crate::pause_point("files");
    phases.mark("write");
    let manifest = Manifest {
        run_id: claim.run_id.clone(),
        export: p.name.clone(),
        segment: def.segment.clone(),
        definition_hash: p.definition_hash.clone(),
        as_of: time_text(claim.as_of),
        scheduled_for: claim.scheduled_for.map(time_text),
        created_at: time_text(micros(Utc::now())),
        format: def.format.clone(),
        columns: p.audience.columns.clone(),
        previous_run: previous.as_ref().map(|r| r.run_id.clone()),
        audience: count(&audience_rows),
        adds: count(&adds_rows),
        removes: count(&removes_rows),
        files: entries,
    };
    let text = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
    dest.put(MANIFEST, text).await?;
    crate::pause_point("manifest");
    let mut row = claim.clone();
    row.status = status::DELIVERED.into();
    row.recorded_at = micros(Utc::now());
    row.audience = Some(manifest.audience as i64);
    row.adds = Some(manifest.adds as i64);
    row.removes = Some(manifest.removes as i64);
    row.files = Some(manifest.files.len() as i64);
    row.previous_run = manifest.previous_run.clone();
    Ok(row)
}

fn without_id(schema: &Schema) -> Schema {
    Schema::new(schema.fields()[1..].to_vec())
}

fn ids(batches: &[RecordBatch]) -> Result<Vec<arrow::array::ArrayRef>> {
    batches
        .iter()
        .map(|b| Ok(arrow::compute::cast(b.column(0), &DataType::Utf8)?))
        .collect()
}

fn id_set(arrays: &[arrow::array::ArrayRef]) -> HashSet<&str> {
    arrays
        .iter()
        .flat_map(|a| a.as_string::<i32>().iter().flatten())
        .collect()
}

/// Adds (current rows whose profile was not delivered last time) and removes (rows delivered
/// last time whose profile is gone, as they were delivered, in the current columns).
fn diff(
    schema: &SchemaRef,
    current: &[RecordBatch],
    before: &[RecordBatch],
) -> Result<(Vec<RecordBatch>, Vec<RecordBatch>)> {
    if before.is_empty() {
        // A first run: everyone is an add, and nobody can be removed.
        return Ok((current.to_vec(), Vec::new()));
    }
    let now_ids = ids(current)?;
    let before_ids = ids(before)?;
    let (now_set, before_set) = (id_set(&now_ids), id_set(&before_ids));
    let keep = |batches: &[RecordBatch],
                arrays: &[arrow::array::ArrayRef],
                other: &HashSet<&str>|
     -> Result<Vec<RecordBatch>> {
        batches
            .iter()
            .zip(arrays)
            .map(|(b, ids)| {
                let mask: BooleanArray = ids
                    .as_string::<i32>()
                    .iter()
                    .map(|id| Some(!id.is_some_and(|id| other.contains(id))))
                    .collect();
                Ok(arrow::compute::filter_record_batch(b, &mask)?)
            })
            .filter(|b| !matches!(b, Ok(b) if b.num_rows() == 0))
            .collect()
    };
    let adds = keep(current, &now_ids, &before_set)?;
    let removes = keep(before, &before_ids, &now_set)?
        .iter()
        .map(|b| conform(b, schema))
        .collect::<Result<_>>()?;
    Ok((adds, removes))
}

/// A batch of an earlier run in the current columns (all nullable: an earlier run may lack
/// some).
fn conform(b: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let nullable = Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    ));
    crate::storage::conform(b, &nullable)
}

#[cfg(test)]
mod tests {
    use super::audience::PROFILE_ID;
    use super::*;
    use arrow::array::StringArray;
    use arrow::datatypes::Field;

    fn batch(rows: &[(&str, &str)]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new(PROFILE_ID, DataType::Utf8, true),
            Field::new("email", DataType::Utf8, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(
                    rows.iter().map(|r| r.0).collect::<Vec<_>>(),
                )),
                Arc::new(StringArray::from(
                    rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                )),
            ],
        )
        .unwrap()
    }

    #[test]
    fn diffs_are_by_profile_and_removes_keep_the_delivered_row() {
        let before = batch(&[("1", "a@x"), ("2", "b@x"), ("3", "c@x")]);
        let now = batch(&[("2", "b-new@x"), ("3", "c@x"), ("4", "d@x")]);
        let (adds, removes) = diff(&now.schema(), &[now], &[before]).unwrap();
        let col = |b: &[RecordBatch], i: usize| -> Vec<String> {
            b.iter()
                .flat_map(|b| {
                    b.column(i)
                        .as_string::<i32>()
                        .iter()
                        .map(|v| v.unwrap().to_string())
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        assert_eq!(col(&adds, 0), ["4"]);
        assert_eq!(col(&removes, 0), ["1"]);
        assert_eq!(col(&removes, 1), ["a@x"]);
    }
}
