//! Who a privacy request is about: the profile an identifier names, every identifier of it, the
//! raw spellings under which its rows are stored, and for each table the condition that picks
//! out its rows. Show, export and forget all read rows through these same conditions.

use std::collections::{BTreeMap, BTreeSet};

use arrow::array::{Array, RecordBatch};
use arrow::datatypes::Schema;
use datafusion::common::{Column, ScalarValue};
use datafusion::logical_expr::{Expr, col, lit};
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::identity::normalize::Normalisers;
use crate::identity::sightings::strings;
use crate::storage::schema;
use crate::workspace::Workspace;

/// A person as a privacy request sees them. Serialised into the plan of an erasure, so that a
/// re-run after a crash deletes exactly what the first run meant to.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Person {
    pub profile_id: Option<String>,
    /// Ids of profiles that merged into this one (rows computed before a merge carry them).
    #[serde(default)]
    pub former_ids: Vec<String>,
    /// (type, normalised value) of every identifier of the profile.
    pub identifiers: Vec<(String, String)>,
    /// Raw `user_id`, `anonymous_id` values of the profile's events, and the message ids of
    /// its events that carry neither (as `profile_keys` has them).
    pub user_ids: Vec<String>,
    pub anonymous_ids: Vec<String>,
    pub message_ids: Vec<String>,
    /// Record table -> identifier column -> raw values that normalise to one of `identifiers`.
    pub record_values: BTreeMap<String, BTreeMap<String, Vec<String>>>,
    /// First and last day (days since the epoch) of the events with their identifiers.
    pub days: Option<(i32, i32)>,
}

/// What picks a person's rows out of one column.
#[derive(Debug, Clone, PartialEq)]
pub enum Match {
    /// The column's value is one of these.
    Equals(String, Vec<String>),
    /// The column's text contains one of these (JSON and raw input text).
    Contains(String, Vec<String>),
}

/// A table and how to find the person's rows in it.
#[derive(Debug, Clone)]
pub struct TableMatch {
    pub table: String,
    pub path: String,
    /// A row is the person's when any of these holds.
    pub any: Vec<Match>,
    /// Only rows of these event days (a partition filter that prunes files).
    pub days: Option<(i32, i32)>,
}

impl Person {
    /// Whether nothing is known about the person.
    pub fn is_empty(&self) -> bool {
        self.profile_id.is_none() && self.identifiers.is_empty()
    }

    /// The profile's id and the ids it had before merges.
    pub fn profile_ids(&self) -> Vec<String> {
        self.profile_id
            .iter()
            .chain(&self.former_ids)
            .cloned()
            .collect()
    }

    /// The identifier of the person that `key` names (normalised per type), if any.
    pub fn named(&self, normalisers: &Normalisers, key: &str) -> Option<&(String, String)> {
        self.identifiers
            .iter()
            .find(|(t, v)| normalisers.normalise(t, key).is_ok_and(|n| &n == v))
    }

    /// Every value that identifies the person, raw and normalised, for text search.
    pub fn texts(&self) -> Vec<String> {
        let mut all: BTreeSet<String> = BTreeSet::new();
        all.extend(self.identifiers.iter().map(|(_, v)| v.clone()));
        all.extend(self.user_ids.iter().cloned());
        all.extend(self.anonymous_ids.iter().cloned());
        all.extend(self.message_ids.iter().cloned());
        for columns in self.record_values.values() {
            for values in columns.values() {
                all.extend(values.iter().cloned());
            }
        }
        // Very short values would match inside unrelated text.
        all.into_iter().filter(|v| v.trim().len() >= 3).collect()
    }

    /// The conditions for every table of the workspace that can hold the person's rows.
    pub fn matches(&self) -> Vec<TableMatch> {
        let mut out = Vec::new();
        let mut push = |table: &str, path: &str, any: Vec<Match>, days| {
            let any: Vec<Match> = any
                .into_iter()
                .filter(|m| match m {
                    Match::Equals(_, v) | Match::Contains(_, v) => !v.is_empty(),
                })
                .collect();
            if !any.is_empty() {
                out.push(TableMatch {
                    table: table.into(),
                    path: path.into(),
                    any,
                    days,
                });
            }
        };
        let keys: Vec<String> = self
            .user_ids
            .iter()
            .chain(&self.anonymous_ids)
            .cloned()
            .collect();
        let key_matches = || {
            vec![
                Match::Equals("user_id".into(), self.user_ids.clone()),
                Match::Equals("anonymous_id".into(), self.anonymous_ids.clone()),
                Match::Equals("previous_id".into(), keys.clone()),
                Match::Equals("message_id".into(), self.message_ids.clone()),
            ]
        };
        push(schema::EVENTS, schema::EVENTS, key_matches(), self.days);
        // A route names the person's ids also when another profile owns it (someone else who
        // logged in on their device): matched by ids like events, and by profile.
        let mut routes = key_matches();
        routes.push(Match::Equals("profile_id".into(), self.profile_ids()));
        push("profile_routes", "profile_routes", routes, None);
        for (table, columns) in &self.record_values {
            let any = columns
                .iter()
                .map(|(c, v)| Match::Equals(c.clone(), v.clone()))
                .collect();
            push(table, &format!("records/{table}"), any, None);
        }
        let texts = self.texts();
        push(
            schema::REJECTED,
            schema::REJECTED,
            vec![Match::Contains("raw".into(), texts.clone())],
            None,
        );
        let mut links = key_matches();
        for column in ["external_ids", "traits", "context_traits"] {
            links.push(Match::Contains(column.into(), texts.clone()));
        }
        push("identity_links", "identity_links", links, None);
        let values: Vec<String> = self.identifiers.iter().map(|(_, v)| v.clone()).collect();
        push(
            "privacy_consent",
            "privacy_consent",
            vec![Match::Equals("id_value".into(), values.clone())],
            None,
        );
        let me = self.profile_ids();
        if me.is_empty() {
            return out;
        }
        let by_profile = |column: &str| vec![Match::Equals(column.into(), me.clone())];
        for table in [
            "identities",
            "profiles",
            "profile_keys",
            "profile_consent",
            "traits",
            "segment_members",
        ] {
            push(table, table, by_profile("profile_id"), None);
        }
        push(
            "profile_merges",
            "profile_merges",
            vec![
                Match::Equals("from_profile".into(), me.clone()),
                Match::Equals("into_profile".into(), me.clone()),
            ],
            None,
        );
        push(
            "identity_conflicts",
            "identity_conflicts",
            vec![
                Match::Equals("profile_id".into(), me.clone()),
                Match::Equals("other_profile_id".into(), me.clone()),
                Match::Equals("id_value".into(), values.clone()),
                Match::Equals("other_value".into(), values),
            ],
            None,
        );
        out
    }
}

impl TableMatch {
    /// The condition as a DataFusion expression over the columns `schema` has (files written
    /// before a column existed simply lack it).
    pub fn expr(&self, schema: &Schema) -> Option<Expr> {
        let has = |c: &str| schema.field_with_name(c).is_ok();
        let column = |c: &str| Expr::Column(Column::from_name(c));
        let text =
            |c: &str| datafusion::logical_expr::cast(column(c), arrow::datatypes::DataType::Utf8);
        let mut any: Option<Expr> = None;
        for m in &self.any {
            let e = match m {
                Match::Equals(c, values) if has(c) => {
                    text(c).in_list(values.iter().map(|v| lit(v.as_str())).collect(), false)
                }
                Match::Contains(c, values) if has(c) => values
                    .iter()
                    .map(|v| {
                        datafusion::functions::expr_fn::strpos(text(c), lit(v.as_str()))
                            .gt(lit(0i32))
                    })
                    .reduce(Expr::or)?,
                _ => continue,
            };
            any = Some(match any {
                Some(a) => a.or(e),
                None => e,
            });
        }
        let any = any?;
        match (self.days, has(schema::DAY)) {
            (Some((first, last)), true) => Some(
                col(schema::DAY)
                    .between(
                        lit(ScalarValue::Date32(Some(first))),
                        lit(ScalarValue::Date32(Some(last))),
                    )
                    .and(any),
            ),
            _ => Some(any),
        }
    }

    /// Which rows of `batch` are the person's (the same condition as [`TableMatch::expr`],
    /// evaluated directly on a file's rows).
    pub fn rows(&self, batch: &RecordBatch) -> Result<Vec<bool>> {
        let mut hit = vec![false; batch.num_rows()];
        for m in &self.any {
            let (Match::Equals(c, values) | Match::Contains(c, values)) = m;
            let Some(array) = batch.column_by_name(c) else {
                continue;
            };
            let text = strings(array)?;
            let set: BTreeSet<&str> = values.iter().map(String::as_str).collect();
            for (i, h) in hit.iter_mut().enumerate() {
                if *h || text.is_null(i) {
                    continue;
                }
                let v = text.value(i);
                *h = match m {
                    Match::Equals(..) => set.contains(v),
                    Match::Contains(..) => values.iter().any(|s| v.contains(s.as_str())),
                };
            }
        }
        Ok(hit)
    }

    /// Columns [`TableMatch::rows`] reads.
    pub fn columns(&self) -> BTreeSet<&str> {
        self.any
            .iter()
            .map(|m| match m {
                Match::Equals(c, _) | Match::Contains(c, _) => c.as_str(),
            })
            .collect()
    }
}

/// Finds the person `key` names: a profile id or any identifier (normalised as resolution
/// does). An unknown key gives a person with only the key's own identifiers (every type whose
/// normaliser accepts it), and no profile.
pub async fn find(ws: &Workspace, ctx: &SessionContext, key: &str) -> Result<Person> {
    let normalisers = Normalisers::new(&ws.config.identity)?;
    let profiles = crate::identity::show::find_profiles(ws, ctx, key).await?;
    let Some(pid) = profiles.first().cloned() else {
        return Ok(Person {
            identifiers: guessed(ws, &normalisers, key),
            ..Person::default()
        });
    };
    if profiles.len() > 1 {
        return Err(crate::Error::Input(format!(
            "{key:?} is an identifier of {} profiles ({}); name a profile id",
            profiles.len(),
            profiles.join(", ")
        )));
    }
    let q = crate::sql::lit(&pid);
    let mut p = Person {
        profile_id: Some(pid.clone()),
        ..Person::default()
    };
    for row in text_rows(
        ctx,
        &format!("select id_type, id_value from identities where profile_id = {q} order by 1, 2"),
    )
    .await?
    {
        p.identifiers.push((row[0].clone(), row[1].clone()));
    }
    if table_exists(ctx, "profile_keys").await {
        for row in text_rows(
            ctx,
            &format!("select key_type, key from profile_keys where profile_id = {q} order by 1, 2"),
        )
        .await?
        {
            match row[0].as_str() {
                "user_id" => p.user_ids.push(row[1].clone()),
                "anonymous_id" => p.anonymous_ids.push(row[1].clone()),
                _ => p.message_ids.push(row[1].clone()),
            }
        }
    }
    if table_exists(ctx, "profile_merges").await {
        for row in text_rows(
            ctx,
            &format!(
                "select distinct from_profile from profile_merges \
                 where into_profile = {q} and kind = 'merge' and from_profile <> {q} order by 1"
            ),
        )
        .await?
        {
            p.former_ids.push(row[0].clone());
        }
    }
    // The days of every event carrying one of their identifiers, also events another profile
    // owns (someone else on their device): the identifiers' own first and last sightings.
    let days = text_rows(
        ctx,
        &format!(
            "select cast(cast(min(first_seen) as date) as bigint), cast(cast(max(last_seen) as date) as bigint) \
             from (select first_seen, last_seen from profiles where profile_id = {q} and events > 0 \
                   union all select first_seen, last_seen from identities where profile_id = {q})"
        ),
    )
    .await?;
    if let Some(row) = days.first()
        && let (Ok(a), Ok(b)) = (row[0].parse::<i32>(), row[1].parse::<i32>())
    {
        p.days = Some((a, b));
    }
    p.record_values = record_values(ws, ctx, &normalisers, &p.identifiers).await?;
    Ok(p)
}

/// The identifiers an unknown key would be under: each type whose normaliser accepts it.
pub fn guessed(ws: &Workspace, normalisers: &Normalisers, key: &str) -> Vec<(String, String)> {
    let mut types: BTreeSet<String> = ["user_id", "anonymous_id", "email", "phone"]
        .into_iter()
        .map(String::from)
        .collect();
    types.extend(ws.config.identity.priority.iter().cloned());
    for source in ws.config.records.values() {
        types.extend(source.identifiers.keys().cloned());
    }
    types
        .into_iter()
        .filter_map(|t| normalisers.normalise(&t, key).ok().map(|v| (t, v)))
        .collect()
}

/// Raw values in record tables' identifier columns that normalise to one of `identifiers`.
async fn record_values(
    ws: &Workspace,
    ctx: &SessionContext,
    normalisers: &Normalisers,
    identifiers: &[(String, String)],
) -> Result<BTreeMap<String, BTreeMap<String, Vec<String>>>> {
    let wanted: BTreeSet<(&str, &str)> = identifiers
        .iter()
        .map(|(t, v)| (t.as_str(), v.as_str()))
        .collect();
    let mut out: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    for (name, source) in &ws.config.records {
        if !table_exists(ctx, name).await {
            continue;
        }
        for (ty, column) in &source.identifiers {
            let query = format!(
                "select distinct cast({} as varchar) from {} where {} is not null",
                crate::sql::ident(column),
                crate::sql::ident(name),
                crate::sql::ident(column)
            );
            let mut stream = ctx.sql(&query).await?.execute_stream().await?;
            while let Some(batch) = stream.try_next().await? {
                let values = strings(batch.column(0))?;
                for i in 0..values.len() {
                    let raw = values.value(i);
                    if let Ok(v) = normalisers.normalise(ty, raw)
                        && wanted.contains(&(ty.as_str(), v.as_str()))
                    {
                        out.entry(name.clone())
                            .or_default()
                            .entry(column.clone())
                            .or_default()
                            .push(raw.to_string());
                    }
                }
            }
        }
    }
    Ok(out)
}

async fn table_exists(ctx: &SessionContext, name: &str) -> bool {
    ctx.table_exist(name).unwrap_or(false)
}

/// The rows of a query as text (null as empty).
async fn text_rows(ctx: &SessionContext, query: &str) -> Result<Vec<Vec<String>>> {
    let mut out = Vec::new();
    for b in ctx.sql(query).await?.collect().await? {
        out.extend(crate::identity::sightings::text_rows(&b)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::StringArray;
    use arrow::datatypes::{DataType, Field};
    use std::sync::Arc;

    #[test]
    fn rows_match_by_value_and_by_text() {
        let m = TableMatch {
            table: "t".into(),
            path: "t".into(),
            any: vec![
                Match::Equals("user_id".into(), vec!["u1".into()]),
                Match::Contains("raw".into(), vec!["ana@example.com".into()]),
            ],
            days: None,
        };
        let schema = Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Utf8, true),
            Field::new("raw", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec![
                    Some("u1"),
                    Some("u2"),
                    None,
                    Some("u10"),
                ])),
                Arc::new(StringArray::from(vec![
                    None,
                    Some("{\"email\":\"ana@example.com\"}"),
                    Some("x"),
                    Some("bob@example.com"),
                ])),
            ],
        )
        .unwrap();
        assert_eq!(m.rows(&batch).unwrap(), vec![true, true, false, false]);
        assert!(m.expr(&schema).is_some());
        let other = Schema::new(vec![Field::new("z", DataType::Utf8, true)]);
        assert!(m.expr(&other).is_none(), "no column of the match: no rows");
    }
}
