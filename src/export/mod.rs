//! Activation: audience exports. An export names a segment, the columns (or a platform preset
//! with its normalisation and hashing), a format and a destination on any object store. Each run
//! writes the full audience, the adds and removes against the last delivered run, and a
//! manifest last; `export_runs` records every run and is what makes a scheduled time delivered
//! at most once (see `run` for the steps and what a crash at each leaves, and `crate::schedule`
//! for when runs happen).

pub mod audience;
pub mod definition;
pub mod files;
pub mod run;
pub mod runs;

use chrono::{DateTime, Utc};
use serde::Serialize;

pub use definition::ExportConfig;
pub use run::{RunOutcome, RunRequest};

use crate::error::Result;
use crate::schedule::Schedule;
use crate::workspace::Workspace;

/// One line of `export list`.
#[derive(Debug, Clone, Serialize)]
pub struct ExportInfo {
    pub export: String,
    pub segment: String,
    pub format: String,
    pub columns: String,
    pub consent: String,
    pub suppress: String,
    pub destination: String,
    pub schedule: String,
    pub last_run: String,
    pub last_status: String,
    pub last_at: String,
    pub next_run: String,
}

/// Every export with its schedule, last run and next run.
pub async fn list(ws: &Workspace, now: DateTime<Utc>) -> Result<Vec<ExportInfo>> {
    let table = ws.storage.open(&runs::spec()).await?;
    let rows = match &table {
        Some(t) => runs::read(t, None).await?,
        None => Vec::new(),
    };
    let mut out = Vec::new();
    for (name, def) in &ws.config.exports {
        let last = rows
            .iter()
            .filter(|r| &r.export == name && r.status != runs::status::SKIPPED)
            .max_by_key(|r| r.recorded_at);
        let schedule = Schedule::of(def)?;
        let columns = match &def.preset {
            Some(p) => format!("preset {p}"),
            None => def
                .columns
                .iter()
                .map(|c| c.output_name())
                .collect::<Vec<_>>()
                .join(", "),
        };
        out.push(ExportInfo {
            export: name.clone(),
            segment: def.segment.clone(),
            format: def.format.clone(),
            columns,
            consent: def.consent.clone().unwrap_or_default(),
            suppress: def.suppress.clone().unwrap_or_default(),
            destination: def.destination.clone(),
            schedule: def
                .schedule
                .as_ref()
                .map(|c| format!("{c} ({})", def.timezone))
                .unwrap_or_default(),
            last_run: last.map(|r| r.run_id.clone()).unwrap_or_default(),
            last_status: last.map(|r| r.status.clone()).unwrap_or_default(),
            last_at: last
                .map(|r| runs::time_text(r.recorded_at))
                .unwrap_or_default(),
            next_run: schedule
                .and_then(|s| s.next_after(now))
                .map(|t| runs::time_text(t.timestamp_micros()))
                .unwrap_or_default(),
        });
    }
    Ok(out)
}

/// One line of `export history`: a run in its latest state.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryRow {
    pub run_id: String,
    pub trigger: String,
    pub scheduled_for: String,
    pub as_of: String,
    pub status: String,
    pub attempt: i64,
    pub audience: Option<i64>,
    pub adds: Option<i64>,
    pub removes: Option<i64>,
    pub files: Option<i64>,
    pub recorded_at: String,
    pub destination: String,
    pub error: String,
}

/// The runs of an export, oldest first, each in its latest state.
pub async fn history(ws: &Workspace, name: &str) -> Result<Vec<HistoryRow>> {
    run::find(ws, name)?;
    let Some(table) = ws.storage.open(&runs::spec()).await? else {
        return Ok(Vec::new());
    };
    let all = runs::Runs {
        rows: runs::read(&table, Some(name)).await?,
        table,
    };
    Ok(all
        .latest()
        .into_iter()
        .map(|r| HistoryRow {
            run_id: r.run_id,
            trigger: r.trigger,
            scheduled_for: r.scheduled_for.map(runs::time_text).unwrap_or_default(),
            as_of: runs::time_text(r.as_of),
            status: r.status,
            attempt: r.attempt,
            audience: r.audience,
            adds: r.adds,
            removes: r.removes,
            files: r.files,
            recorded_at: runs::time_text(r.recorded_at),
            destination: r.destination.unwrap_or_default(),
            error: r.error.unwrap_or_default(),
        })
        .collect())
}
