//! `tribe privacy forget`: erases a person everywhere. The steps, each safe to repeat:
//!
//! 1. find the person (after an incremental resolve if data arrived since the last one) and
//!    store the plan in `_privacy/pending/` (the only place their identifiers wait in the clear
//!    until the erasure is complete);
//! 2. tombstones: the salted hashes of every identifier, so ingestion refuses them from now on;
//! 3. a Delta delete per table that holds their rows (events only in the days they were active);
//! 4. their rows out of past export files and states the workspace owns;
//! 5. the superseded data files that still hold their rows (older table versions, compacted
//!    or deleted-from files) are deleted from storage: time travel cannot bring them back;
//! 6. the log records the outcome and the plan is deleted.
//!
//! A crash anywhere leaves the plan; running the same request again resumes from it.

use std::collections::BTreeSet;
use std::time::Instant;

use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};

use super::log::{self, Entry};
use super::person::{self, Person, TableMatch};
use super::{exports, folder, hash_identifier, tombstone};
use crate::error::{Error, Result};
use crate::identity::normalize::Normalisers;
use crate::storage::{TableSpec, table_schema, writer_properties};
use crate::workspace::Workspace;

/// What one table gave up.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TableErasure {
    pub table: String,
    pub rows_deleted: u64,
    /// Data files the delete rewrote (or dropped) in the new table version.
    pub files_rewritten: u64,
    /// Superseded data files holding the person that were deleted from storage.
    pub old_files_removed: u64,
    /// Seconds the delete took.
    pub seconds: f64,
}

impl TableErasure {
    /// Whether the erasure changed anything in this table.
    pub fn touched(&self) -> bool {
        self.rows_deleted + self.old_files_removed > 0
    }
}

/// What `forget` did.
#[derive(Debug, Clone, Serialize)]
pub struct ForgetReport {
    pub request_id: String,
    pub identifier_hash: String,
    /// `completed`, or `not found` when nothing was stored about the identifier.
    pub outcome: String,
    /// Whether this run finished an erasure an earlier run started.
    pub resumed: bool,
    pub profile_id: Option<String>,
    pub identifiers: usize,
    pub rows_deleted: u64,
    pub tables: Vec<TableErasure>,
    pub export_files_rewritten: u64,
    pub export_rows_removed: u64,
    pub seconds: f64,
    /// Seconds per step: plan (finding the person), tombstones, delete, exports, purge.
    pub phases: Vec<(String, f64)>,
}

/// An erasure under way, as stored in `_privacy/pending/<request_id>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Plan {
    request_id: String,
    reason: Option<String>,
    /// Hashes the request can be recognised by (the key under every type it normalises to).
    key_hashes: Vec<String>,
    /// The hash the log shows for the request.
    identifier_hash: String,
    started_at: i64,
    person: Person,
}

/// Forgets the person `key` names (a profile id or any identifier).
pub async fn forget(ws: &Workspace, key: &str, reason: Option<&str>) -> Result<ForgetReport> {
    let clock = Instant::now();
    let mut phases = crate::output::Phases::since(clock);
    let salt = super::salt(ws).await?;
    let normalisers = Normalisers::new(&ws.config.identity)?;
    let key_hashes = key_hashes(ws, &salt, &normalisers, key);
    let (plan, resumed) = match pending(ws).await?.into_iter().find(|p| {
        // The same request, or another identifier of the same person.
        p.key_hashes.iter().any(|h| key_hashes.contains(h))
            || p.person
                .identifiers
                .iter()
                .any(|(t, v)| key_hashes.contains(&hash_identifier(&salt, t, v)))
    }) {
        Some(plan) => (plan, true),
        None => {
            if crate::identity::is_stale(ws).await? {
                crate::identity::resolve(ws, crate::identity::Options::default()).await?;
            }
            let (ctx, _) = crate::sql::session(ws).await?;
            let found = person::find(ws, &ctx, key).await?;
            let plan = Plan {
                request_id: log::request_id("forget"),
                reason: reason.map(str::to_string),
                identifier_hash: request_hash(&salt, &normalisers, &found, key, &key_hashes),
                key_hashes,
                started_at: chrono::Utc::now().timestamp_micros(),
                person: found,
            };
            let text = serde_json::to_vec_pretty(&plan).expect("plan serialises");
            folder(ws)?.put(&plan_name(&plan.request_id), text).await?;
            (plan, false)
        }
    };
    let entry = |outcome: &str, details: Option<String>| Entry {
        logged_at: chrono::Utc::now().timestamp_micros(),
        request_id: plan.request_id.clone(),
        action: "forget".into(),
        identifier_hash: plan.identifier_hash.clone(),
        reason: plan.reason.clone(),
        outcome: outcome.into(),
        details,
    };
    log::append(
        ws,
        &[entry(if resumed { "resumed" } else { "started" }, None)],
    )
    .await?;
    phases.mark("plan");
    crate::pause_point("forget-planned");

    // Tombstones first: from here on, ingestion keeps the person out. The identifiers are
    // normalised, so they cover every raw spelling of the person's ids too.
    let hashes: Vec<(String, String)> = plan
        .person
        .identifiers
        .iter()
        .map(|(t, v)| (t.clone(), hash_identifier(&salt, t, v)))
        .collect();
    tombstone::write(ws, &plan.request_id, &hashes, plan.started_at).await?;
    phases.mark("tombstones");
    crate::pause_point("forget-tombstones");

    let matches = plan.person.matches();
    let mut tables = Vec::new();
    for m in &matches {
        let started = Instant::now();
        let (rows_deleted, files_rewritten) = delete_rows(ws, m).await?;
        tables.push(TableErasure {
            table: m.table.clone(),
            rows_deleted,
            files_rewritten,
            old_files_removed: 0,
            seconds: crate::output::round3(started.elapsed().as_secs_f64()),
        });
        crate::pause_point(&format!("forget-deleted-{}", m.table));
    }
    crate::identity::note_erasure(ws, &plan.request_id).await?;
    phases.mark("delete");
    let erased = exports::erase(ws, &plan.person.profile_ids()).await?;
    phases.mark("exports");
    for (m, t) in matches.iter().zip(tables.iter_mut()) {
        t.old_files_removed = purge_superseded(ws, m).await?;
    }
    phases.mark("purge");
    let rows_deleted: u64 = tables.iter().map(|t| t.rows_deleted).sum();
    let outcome = if plan.person.profile_id.is_none() && rows_deleted == 0 && !resumed {
        "not found"
    } else {
        "completed"
    };
    let report = ForgetReport {
        request_id: plan.request_id.clone(),
        identifier_hash: plan.identifier_hash.clone(),
        outcome: outcome.into(),
        resumed,
        profile_id: plan.person.profile_id.clone(),
        identifiers: plan.person.identifiers.len(),
        rows_deleted,
        tables,
        export_files_rewritten: erased.files_rewritten,
        export_rows_removed: erased.rows_removed,
        seconds: crate::output::round3(clock.elapsed().as_secs_f64()),
        phases: phases.into_vec(),
    };
    // The log gets the counts of the report, never the (pseudonymous) profile id.
    let details = serde_json::json!({
        "identifiers": report.identifiers,
        "rows_deleted": report.rows_deleted,
        "tables": report.tables.iter().filter(|t| t.touched()).collect::<Vec<_>>(),
        "export_files_rewritten": report.export_files_rewritten,
        "export_rows_removed": report.export_rows_removed,
    });
    log::append(ws, &[entry(outcome, Some(details.to_string()))]).await?;
    folder(ws)?.delete(&plan_name(&plan.request_id)).await?;
    Ok(report)
}

/// The hash a request shows in the log: of the identifier the key names among the person's,
/// else of the key under the first type that accepts it.
pub fn request_hash(
    salt: &[u8],
    normalisers: &Normalisers,
    found: &Person,
    key: &str,
    key_hashes: &[String],
) -> String {
    match found.named(normalisers, key) {
        Some((t, v)) => hash_identifier(salt, t, v),
        None => key_hashes[0].clone(),
    }
}

/// The hashes a request by `key` is known under: as a profile id, and under every identifier
/// type whose normaliser accepts it. The first is the one the log shows.
pub fn key_hashes(
    ws: &Workspace,
    salt: &[u8],
    normalisers: &Normalisers,
    key: &str,
) -> Vec<String> {
    let mut out: Vec<String> = person::guessed(ws, normalisers, key)
        .iter()
        .map(|(t, v)| hash_identifier(salt, t, v))
        .collect();
    out.push(hash_identifier(salt, "profile_id", key.trim()));
    out
}

fn plan_name(request_id: &str) -> String {
    format!("pending/{request_id}.json")
}

/// Erasures that were started and did not finish.
async fn pending(ws: &Workspace) -> Result<Vec<Plan>> {
    let place = folder(ws)?;
    let mut plans = Vec::new();
    for (name, _) in place.list().await? {
        if !(name.starts_with("pending/") && name.ends_with(".json")) {
            continue;
        }
        if let Some(bytes) = place.get(&name).await? {
            let plan: Plan = serde_json::from_slice(&bytes).map_err(|e| {
                Error::Other(format!(
                    "{}{name}: not a readable erasure plan: {e}",
                    place.url
                ))
            })?;
            plans.push(plan);
        }
    }
    Ok(plans)
}

/// Deletes the person's rows from one table: (rows, files rewritten).
async fn delete_rows(ws: &Workspace, m: &TableMatch) -> Result<(u64, u64)> {
    let spec = TableSpec::existing(&m.table, &m.path);
    // A concurrent writer can make the commit conflict; the delete is then done again on the
    // new version.
    for _ in 0..5 {
        let Some(table) = ws.storage.open(&spec).await? else {
            return Ok((0, 0));
        };
        let schema = table_schema(&table)?;
        let Some(predicate) = m.expr(&schema) else {
            return Ok((0, 0));
        };
        let result = table
            .delete()
            .with_predicate(predicate)
            .with_writer_properties(writer_properties(&spec.name))
            .await;
        match result {
            Ok((_, metrics)) => {
                return Ok((
                    metrics.num_deleted_rows.unwrap_or(0) as u64,
                    metrics.num_removed_files as u64,
                ));
            }
            Err(deltalake::DeltaTableError::Transaction {
                source: deltalake::kernel::transaction::TransactionError::CommitConflict(_),
            }) => continue,
            Err(e) => return Err(Error::delta(&m.table, e)),
        }
    }
    Err(Error::Other(format!(
        "{}: gave up deleting after 5 conflicts with concurrent writers",
        m.table
    )))
}

/// Deletes from storage the data files of `m`'s table that no longer belong to its current
/// version and still hold the person's rows; returns how many.
async fn purge_superseded(ws: &Workspace, m: &TableMatch) -> Result<u64> {
    let Some(table) = ws
        .storage
        .open(&TableSpec::existing(&m.table, &m.path))
        .await?
    else {
        return Ok(0);
    };
    let snapshot = table.snapshot().map_err(|e| Error::delta(&m.table, e))?;
    let live: BTreeSet<String> = snapshot
        .log_data()
        .iter()
        .map(|f| f.object_store_path().to_string())
        .collect();
    let store = table.object_store();
    let files: Vec<object_store::ObjectMeta> = store
        .list(None)
        .try_collect()
        .await
        .map_err(|e| Error::Other(format!("{}: listing files: {e}", m.table)))?;
    let columns = m.columns();
    let mut removed = 0;
    for meta in files {
        let path = meta.location.to_string();
        if path.starts_with("_delta_log") || !path.ends_with(".parquet") || live.contains(&path) {
            continue;
        }
        if let Some((first, last)) = m.days
            && let Some(day) = day_of_path(&path)
            && (day < first || day > last)
        {
            continue;
        }
        let holds = super::parquet_any(store.clone(), &meta.location, meta.size, &columns, |b| {
            Ok(m.rows(b)?.into_iter().any(|hit| hit))
        })
        .await?;
        if holds {
            match store.delete(&meta.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => removed += 1,
                Err(e) => {
                    return Err(Error::Other(format!("{}: deleting {path}: {e}", m.table)));
                }
            }
        }
    }
    Ok(removed)
}

/// The day of a file in a `day=YYYY-MM-DD` partition folder, as days since the epoch.
fn day_of_path(path: &str) -> Option<i32> {
    let part = path.split('/').find_map(|p| p.strip_prefix("day="))?;
    let date = chrono::NaiveDate::parse_from_str(part, "%Y-%m-%d").ok()?;
    Some((date - chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?).num_days() as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_days_are_read_from_paths() {
        assert_eq!(day_of_path("day=1970-01-02/part-0.parquet"), Some(1));
        assert_eq!(day_of_path("day=2026-06-30/x.parquet"), Some(20634));
        assert_eq!(day_of_path("part-0.parquet"), None);
    }
}
