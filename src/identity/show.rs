//! One person at a glance: `tribe profile show` finds a profile by its id or by any of its
//! identifiers (normalised as resolution does), and gathers its row, its identifiers and its
//! recent events.

use arrow::array::RecordBatch;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::identity::normalize::Normalisers;
use crate::workspace::Workspace;

/// A profile with its identifiers and latest events.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProfileView {
    pub profile: Record,
    pub identifiers: Vec<Record>,
    pub recent_events: Vec<Record>,
}

/// A row as (column, value) pairs in column order.
#[derive(Debug, Clone, Default)]
pub struct Record(pub Vec<(String, Value)>);

impl Serialize for Record {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// The profile id that `key` names: a profile id, or any identifier (normalised as resolution
/// does). Errors when nothing, or more than one profile, matches.
pub async fn find_profile(
    ws: &Workspace,
    ctx: &datafusion::prelude::SessionContext,
    key: &str,
) -> Result<String> {
    let ids = find_profiles(ws, ctx, key).await?;
    let Some(id) = ids.first().cloned() else {
        return Err(Error::Input(format!(
            "no profile has the id or identifier {key:?}"
        )));
    };
    if ids.len() > 1 {
        return Err(Error::Input(format!(
            "{key:?} is an identifier of {} profiles ({}); name the type-specific value or a profile id",
            ids.len(),
            ids.join(", ")
        )));
    }
    Ok(id)
}

/// Every profile `key` names: the profile with that id, else the profiles holding it as an
/// identifier of any type (normalised per type); none when there are no profiles yet.
pub async fn find_profiles(
    ws: &Workspace,
    ctx: &datafusion::prelude::SessionContext,
    key: &str,
) -> Result<Vec<String>> {
    if !ctx.table_exist("profiles").unwrap_or(false) {
        return Ok(Vec::new());
    }
    let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let mut ids = column(
        ctx,
        &format!(
            "select profile_id from profiles where profile_id = {}",
            quote(key)
        ),
    )
    .await?;
    if ids.is_empty() && ctx.table_exist("identities").unwrap_or(false) {
        let normalisers = Normalisers::new(&ws.config.identity)?;
        let types = column(ctx, "select distinct id_type from identities").await?;
        let mut alternatives = Vec::new();
        for ty in types {
            if let Ok(v) = normalisers.normalise(&ty, key) {
                alternatives.push(format!(
                    "(id_type = {} and id_value = {})",
                    quote(&ty),
                    quote(&v)
                ));
            }
        }
        if !alternatives.is_empty() {
            let query = format!(
                "select distinct profile_id from identities where {} order by 1",
                alternatives.join(" or ")
            );
            ids = column(ctx, &query).await?;
        }
    }
    Ok(ids)
}

/// Finds the profile `key` names (a profile id, or any identifier) and reads what it holds.
pub async fn show(ws: &Workspace, key: &str, events: usize) -> Result<ProfileView> {
    let (ctx, tables) = crate::sql::session(ws).await?;
    if !tables.iter().any(|t| t.name == "profiles") {
        return Err(Error::Input(
            "no profiles yet: run `tribe resolve` first".into(),
        ));
    }
    let id = find_profile(ws, &ctx, key).await?;
    let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let id = quote(&id);
    let profile = records(
        &ctx,
        &format!("select * from profiles where profile_id = {id}"),
    )
    .await?;
    let identifiers = records(
        &ctx,
        &format!("select id_type, id_value, first_seen, last_seen, sources from identities where profile_id = {id} order by id_type, id_value"),
    )
    .await?;
    let recent_events = records(
        &ctx,
        &format!(
            "select timestamp, type, coalesce(event, name) as event, source, prop_revenue as revenue \
             from profile_events where profile_id = {id} order by timestamp desc limit {events}"
        ),
    )
    .await?;
    Ok(ProfileView {
        profile: profile.into_iter().next().unwrap_or_default(),
        identifiers,
        recent_events,
    })
}

async fn column(ctx: &datafusion::prelude::SessionContext, query: &str) -> Result<Vec<String>> {
    Ok(records(ctx, query)
        .await?
        .into_iter()
        .filter_map(|r| match r.0.into_iter().next() {
            Some((_, Value::String(s))) => Some(s),
            _ => None,
        })
        .collect())
}

async fn records(ctx: &datafusion::prelude::SessionContext, query: &str) -> Result<Vec<Record>> {
    let batches: Vec<RecordBatch> = ctx.sql(query).await?.collect().await?;
    to_records(&batches)
}

/// Rows as records in column order (values as JSON).
pub fn to_records(batches: &[RecordBatch]) -> Result<Vec<Record>> {
    let mut out = Vec::new();
    for batch in batches {
        let schema = batch.schema();
        let mut writer = arrow::json::ArrayWriter::new(Vec::new());
        writer.write(batch)?;
        writer.finish()?;
        let text = writer.into_inner();
        let rows: Vec<serde_json::Map<String, Value>> = if text.is_empty() {
            Vec::new()
        } else {
            serde_json::from_slice(&text).map_err(|e| Error::Other(e.to_string()))?
        };
        for mut row in rows {
            let ordered = schema
                .fields()
                .iter()
                .map(|f| {
                    (
                        f.name().clone(),
                        row.remove(f.name()).unwrap_or(Value::Null),
                    )
                })
                .collect();
            out.push(Record(ordered));
        }
    }
    Ok(out)
}
