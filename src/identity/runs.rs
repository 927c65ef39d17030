//! The run record: `resolve_runs` holds one row per finished run (and per erasure), with the
//! versions of the source tables it read and a fingerprint of the identity rules it applied.
//! It is what tells the next run what is new, and whether it may stay incremental.

use std::collections::HashSet;

use crate::error::{Error, Result};
use crate::identity::sightings::{self, Versions};
use crate::identity::{Report, query_table, source_specs, tables};
use crate::storage::WriteMode;
use crate::workspace::Workspace;

/// A finished run.
pub struct Run {
    pub id: String,
    pub versions: Versions,
    /// The fingerprint of the identity rules it applied; None for runs recorded before
    /// fingerprints.
    pub rules: Option<String>,
}

/// A fingerprint of the `[identity]` rules: when it changes, a run recomputes every profile.
pub fn rules_fingerprint(config: &crate::config::IdentitySection) -> String {
    let text = serde_json::to_string(config).expect("the identity section serialises");
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(text.as_bytes()))
}

/// Why a run that could be incremental must recompute every profile from the stored
/// sightings instead, if it must: the rules changed, or the stored tables predate what an
/// incremental run relies on.
pub async fn rebuild_reason(
    ws: &Workspace,
    runs: &[Run],
    rules: &str,
    links: Option<&deltalake::DeltaTable>,
) -> Result<Option<String>> {
    let last = runs.last().expect("runs exist when incremental");
    if last.rules.as_deref() != Some(rules) {
        return Ok(Some(
            "the [identity] rules changed since the last run (or it did not record them)".into(),
        ));
    }
    match links {
        None => return Ok(Some("no stored sightings".into())),
        Some(t) if !sightings::has_anchors(t)? => {
            return Ok(Some("identity_links predates anchors".into()));
        }
        Some(_) => {}
    }
    for spec in [
        tables::identities(),
        tables::profile_keys(),
        tables::profile_routes(),
        tables::conflicts(),
        tables::profile_consent(),
    ] {
        let Some(t) = ws.storage.open(&spec).await? else {
            return Ok(Some(format!("{} does not exist", spec.name)));
        };
        let stored = crate::storage::table_schema(&t)?;
        let names: HashSet<&String> = stored.fields().iter().map(|f| f.name()).collect();
        if spec
            .schema
            .fields()
            .iter()
            .any(|f| !names.contains(f.name()))
        {
            return Ok(Some(format!("{} predates some of its columns", spec.name)));
        }
    }
    Ok(None)
}

/// Records a finished run: written last, so that a run that died before it is seen as
/// unfinished by the next one.
pub async fn write_run(
    ws: &Workspace,
    report: &Report,
    started: i64,
    versions: &Versions,
    rules: &str,
) -> Result<()> {
    let finished = chrono::Utc::now().timestamp_micros();
    let skipped_json = serde_json::to_string(&report.skipped).expect("serialises");
    let counts = [
        report.sightings,
        report.new_sightings,
        report.identifiers,
        report.profiles,
        report.merges,
        report.splits,
        report.conflicts,
    ];
    append(
        ws,
        (&report.run_id, &report.mode),
        (started, finished),
        versions,
        counts.map(|c| c as i64),
        &skipped_json,
        Some(rules),
    )
    .await
}

async fn append(
    ws: &Workspace,
    (id, mode): (&str, &str),
    (started, finished): (i64, i64),
    versions: &Versions,
    counts: [i64; 7],
    skipped_json: &str,
    rules: Option<&str>,
) -> Result<()> {
    let spec = tables::runs();
    // Tables written before the rules column get it.
    ws.storage.evolve(&spec).await?;
    let versions_json = serde_json::to_string(versions).expect("serialises");
    let mut columns = vec![
        tables::strings([Some(id)]),
        tables::strings([Some(mode)]),
        tables::times([Some(started)])?,
        tables::times([Some(finished)])?,
        tables::strings([Some(versions_json.as_str())]),
    ];
    columns.extend(counts.map(|c| tables::longs([c])));
    columns.push(tables::strings([Some(skipped_json)]));
    columns.push(tables::strings([rules]));
    let row = tables::rows(&spec, columns)?;
    ws.storage
        .write(&spec, vec![row], WriteMode::Append)
        .await?;
    Ok(())
}

/// Whether events, records or consent statements changed since the last resolve run (or
/// there is data and no run yet): profiles do not reflect everything stored.
pub async fn is_stale(ws: &Workspace) -> Result<bool> {
    let runs = load_runs(ws).await?;
    for spec in source_specs(ws) {
        let Some(table) = ws.storage.open(&spec).await? else {
            continue;
        };
        let version = table.version().map_or(-1, |v| v as i64);
        let seen = runs
            .last()
            .and_then(|r| r.versions.get(&spec.name).copied())
            .unwrap_or(-1);
        if version != seen {
            return Ok(true);
        }
    }
    Ok(false)
}

/// After an erasure: when every commit to the source tables since the last run is a delete
/// (the erasure's own), records a run of mode `erasure` at the new versions, so that the next
/// resolve stays incremental instead of reading everything again. The identity tables lost
/// exactly the erased person's rows, which is what a resolve would have done. Returns whether
/// it recorded one.
pub async fn note_erasure(ws: &Workspace, request_id: &str) -> Result<bool> {
    let runs = load_runs(ws).await?;
    let Some(last) = runs.last() else {
        return Ok(false);
    };
    let mut versions = last.versions.clone();
    for spec in source_specs(ws) {
        let Some(table) = ws.storage.open(&spec).await? else {
            continue;
        };
        let current = table.version().map_or(-1, |v| v as i64);
        let seen = last.versions.get(&spec.name).copied().unwrap_or(-1);
        let Some(commits) = crate::storage::commits_since(&table, seen).await? else {
            return Ok(false);
        };
        let all_deletes = commits.iter().all(|actions| {
            actions.iter().any(|a| {
                matches!(a, deltalake::kernel::Action::CommitInfo(c)
                    if c.operation.as_deref() == Some("DELETE"))
            })
        });
        if !all_deletes {
            return Ok(false);
        }
        versions.insert(spec.name.clone(), current);
    }
    let now = chrono::Utc::now().timestamp_micros();
    // The rules did not change: the next run may stay incremental.
    append(
        ws,
        (request_id, "erasure"),
        (now, now),
        &versions,
        [0; 7],
        "[]",
        last.rules.as_deref(),
    )
    .await?;
    Ok(true)
}

/// The completed runs, oldest first.
pub async fn load_runs(ws: &Workspace) -> Result<Vec<Run>> {
    let has_rules = match ws.storage.open(&tables::runs()).await? {
        Some(t) => crate::storage::table_schema(&t)?
            .field_with_name("rules")
            .is_ok(),
        None => return Ok(Vec::new()),
    };
    let rules = if has_rules { "rules" } else { "null" };
    let rows = query_table(
        ws,
        &tables::runs(),
        &format!("select run_id, versions, {rules} from t order by started_at, run_id"),
    )
    .await?;
    rows.into_iter()
        .map(|r| {
            let versions = serde_json::from_str(&r[1])
                .map_err(|e| Error::Other(format!("resolve_runs: bad versions {:?}: {e}", r[1])))?;
            Ok(Run {
                id: r[0].clone(),
                versions,
                rules: (!r[2].is_empty()).then(|| r[2].clone()),
            })
        })
        .collect()
}
