//! Subject access: `tribe privacy show` and `tribe privacy export` gather every stored row about
//! a person, one section per table (plus the rows of export states the workspace keeps), with
//! the same conditions `forget` deletes by, so what is shown is exactly what would be erased.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::log::{self, Entry};
use super::person::{self, Person};
use crate::error::Result;
use crate::identity::normalize::Normalisers;
use crate::identity::show::Record;
use crate::workspace::Workspace;

/// Everything stored about a person.
#[derive(Debug, Clone, Serialize)]
pub struct Access {
    pub request_id: String,
    pub generated_at: String,
    pub profile_id: Option<String>,
    /// (type, value) of every identifier of the person.
    pub identifiers: Vec<Value>,
    /// Table name -> the person's rows in it (only tables that hold some).
    pub tables: BTreeMap<String, Vec<Record>>,
}

impl Access {
    pub fn rows(&self) -> usize {
        self.tables.values().map(Vec::len).sum()
    }
}

/// Gathers the person `key` names; `action` (`show` or `export`) and `reason` go to the log.
pub async fn gather(
    ws: &Workspace,
    key: &str,
    action: &str,
    reason: Option<&str>,
) -> Result<Access> {
    let (ctx, _) = crate::sql::session(ws).await?;
    let found: Person = person::find(ws, &ctx, key).await?;
    let mut tables = BTreeMap::new();
    for m in found.matches() {
        let Ok(df) = ctx.table(m.table.as_str()).await else {
            continue;
        };
        let schema = df.schema().as_arrow().clone();
        let Some(predicate) = m.expr(&schema) else {
            continue;
        };
        let batches = df.filter(predicate)?.collect().await?;
        let rows = crate::identity::show::to_records(&batches)?;
        if !rows.is_empty() {
            tables.insert(m.table.clone(), rows);
        }
    }
    let states = super::exports::state_rows(ws, &found.profile_ids()).await?;
    if !states.is_empty() {
        tables.insert("export_state".into(), states);
    }
    let request_id = log::request_id(action);
    let salt = super::salt(ws).await?;
    let normalisers = Normalisers::new(&ws.config.identity)?;
    let hashes = super::forget::key_hashes(ws, &salt, &normalisers, key);
    let access = Access {
        request_id: request_id.clone(),
        generated_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        profile_id: found.profile_id.clone(),
        identifiers: found
            .identifiers
            .iter()
            .map(|(t, v)| serde_json::json!({"type": t, "value": v}))
            .collect(),
        tables,
    };
    let outcome = if access.tables.is_empty() && access.profile_id.is_none() {
        "not found"
    } else {
        "completed"
    };
    let counts: BTreeMap<&String, usize> =
        access.tables.iter().map(|(k, v)| (k, v.len())).collect();
    log::append(
        ws,
        &[Entry {
            logged_at: chrono::Utc::now().timestamp_micros(),
            request_id,
            action: action.into(),
            identifier_hash: super::forget::request_hash(&salt, &normalisers, &found, key, &hashes),
            reason: reason.map(str::to_string),
            outcome: outcome.into(),
            details: Some(serde_json::json!({ "rows": counts }).to_string()),
        }],
    )
    .await?;
    Ok(access)
}
