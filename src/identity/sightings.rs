//! Sightings: what the sources say about who is who. A sighting is one distinct combination of
//! identifiers (and traits) seen together, with when and how often. They are extracted from
//! record tables by SQL here and from events by one grouping pass (`scan`), stored in the
//! `identity_links` table, and every resolve run rebuilds profiles from them, so rule changes
//! apply to everything seen so far.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::prelude::SessionContext;
use deltalake::DeltaTable;
use deltalake::kernel::Add;
use futures::TryStreamExt;
use serde_json::{Map, Value};

use crate::config::{Config, ValueType};
use crate::error::{Error, Result};
use crate::storage::TableSpec;
use crate::storage::schema::timestamp_type;

/// Where a sighting came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Event,
    Record,
}

/// Identifiers (and traits) seen together.
#[derive(Debug, Clone, PartialEq)]
pub struct Sighting {
    pub kind: Kind,
    /// The event `source` column, or the record source name.
    pub source: String,
    pub user_id: Option<String>,
    pub anonymous_id: Option<String>,
    pub previous_id: Option<String>,
    /// Set for events that carry neither a user id nor an anonymous id.
    pub message_id: Option<String>,
    /// Typed identifiers: `context.externalIds` of events, identifier columns of records.
    pub external_ids: Vec<(String, String)>,
    /// Trait values (JSON object text).
    pub traits: Option<String>,
    /// `context.traits` of events (JSON object text).
    pub context_traits: Option<String>,
    /// Consent per channel from record consent columns (JSON object text).
    pub consent: Option<String>,
    pub first_seen: i64,
    pub last_seen: i64,
    /// How many events or rows the sighting stands for.
    pub count: i64,
}

/// The column of `identity_links` naming one identifier of each sighting (its strongest, as
/// `type:value`): the identifier's profile holds all of the sighting's identifiers, so an
/// incremental run finds the stored sightings of the profiles it recomputes by it.
pub const ANCHOR: &str = "anchor";

/// The `identity_links` table.
pub fn spec() -> TableSpec {
    let text = |n: &str| Field::new(n, DataType::Utf8, true);
    TableSpec {
        name: "identity_links".into(),
        path: "identity_links".into(),
        schema: Arc::new(Schema::new(vec![
            Field::new("run_id", DataType::Utf8, false),
            Field::new("kind", DataType::Utf8, false),
            Field::new("source", DataType::Utf8, false),
            text("user_id"),
            text("anonymous_id"),
            text("previous_id"),
            text("message_id"),
            text("external_ids"),
            text("traits"),
            text("context_traits"),
            text("consent"),
            Field::new("first_seen", timestamp_type(), false),
            Field::new("last_seen", timestamp_type(), false),
            Field::new("count", DataType::Int64, false),
            text(ANCHOR),
        ])),
        partition_columns: vec![],
    }
}

/// Sightings as a batch of the `identity_links` table, stamped with `run_id`, each with its
/// anchor (None for sightings without a usable identifier).
pub fn to_batch(
    run_id: &str,
    sightings: &[Sighting],
    anchors: &[Option<String>],
) -> Result<RecordBatch> {
    use crate::identity::tables::{longs, rows, strings as text, times};
    let text_of = |f: fn(&Sighting) -> Option<&str>| text(sightings.iter().map(f));
    let external: Vec<Option<String>> = sightings
        .iter()
        .map(|s| {
            (!s.external_ids.is_empty())
                .then(|| serde_json::to_string(&s.external_ids).expect("strings serialise"))
        })
        .collect();
    rows(
        &spec(),
        vec![
            text(sightings.iter().map(|_| Some(run_id))),
            text(sightings.iter().map(|s| {
                Some(match s.kind {
                    Kind::Event => "event",
                    Kind::Record => "record",
                })
            })),
            text_of(|s| Some(s.source.as_str())),
            text_of(|s| s.user_id.as_deref()),
            text_of(|s| s.anonymous_id.as_deref()),
            text_of(|s| s.previous_id.as_deref()),
            text_of(|s| s.message_id.as_deref()),
            text(external.iter().map(Option::as_deref)),
            text_of(|s| s.traits.as_deref()),
            text_of(|s| s.context_traits.as_deref()),
            text_of(|s| s.consent.as_deref()),
            times(sightings.iter().map(|s| Some(s.first_seen)))?,
            times(sightings.iter().map(|s| Some(s.last_seen)))?,
            longs(sightings.iter().map(|s| s.count)),
            text(anchors.iter().map(Option::as_deref)),
        ],
    )
}

/// Whether a stored `identity_links` table has anchors (tables written before them do not).
pub fn has_anchors(table: &DeltaTable) -> Result<bool> {
    Ok(crate::storage::table_schema(table)?
        .field_with_name(ANCHOR)
        .is_ok())
}

/// Reads the stored sightings from `identity_links`, in one scan; with `anchors`, only the
/// sightings whose anchor is one of them (the filter runs inside the Parquet scan, so the
/// other columns are decoded only for those rows). A run checks `has_unfinished` first: rows
/// of a run that died before its record make it a full run, which reads none.
pub async fn load(
    ctx: &SessionContext,
    table: &DeltaTable,
    anchors: Option<std::sync::Arc<crate::identity::incremental::Ids>>,
) -> Result<Vec<Sighting>> {
    crate::sql::register(ctx, "identity_links", table, None).await?;
    let mut query = "select kind, source, user_id, anonymous_id, previous_id, message_id, \
         external_ids, traits, context_traits, consent, first_seen, last_seen, count from identity_links"
        .to_string();
    if let Some(anchors) = anchors {
        ctx.register_udf(crate::identity::incremental::member_of(
            "is_affected",
            anchors,
        ));
        query.push_str(" where is_affected(anchor)");
    }
    let mut out = Vec::new();
    let mut stream = ctx.sql(&query).await?.execute_stream().await?;
    while let Some(batch) = stream.try_next().await? {
        let s: Vec<StringArray> = (0..10)
            .map(|i| strings(batch.column(i)))
            .collect::<Result<_>>()?;
        let first = ints(batch.column(10))?;
        let last = ints(batch.column(11))?;
        let count = ints(batch.column(12))?;
        for row in 0..batch.num_rows() {
            let get = |i: usize| (!s[i].is_null(row)).then(|| s[i].value(row).to_string());
            let external_ids = match get(6) {
                Some(text) => serde_json::from_str(&text).map_err(|e| {
                    Error::Other(format!("identity_links: bad external_ids {text:?}: {e}"))
                })?,
                None => Vec::new(),
            };
            out.push(Sighting {
                kind: if s[0].value(row) == "record" {
                    Kind::Record
                } else {
                    Kind::Event
                },
                source: s[1].value(row).to_string(),
                user_id: get(2),
                anonymous_id: get(3),
                previous_id: get(4),
                message_id: get(5),
                external_ids,
                traits: get(7),
                context_traits: get(8),
                consent: get(9),
                first_seen: first.value(row),
                last_seen: last.value(row),
                count: count.value(row),
            });
        }
    }
    Ok(out)
}

/// Whether `identity_links` holds rows of a run not in `finished`: one that died before its
/// run record.
pub async fn has_unfinished(
    ctx: &SessionContext,
    table: &DeltaTable,
    finished: &HashSet<String>,
) -> Result<bool> {
    crate::sql::register(ctx, "identity_link_runs", table, None).await?;
    let batches = ctx
        .sql("select distinct run_id from identity_link_runs")
        .await?
        .collect()
        .await?;
    for b in &batches {
        let runs = strings(b.column(0))?;
        if runs.iter().flatten().any(|r| !finished.contains(r)) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Registers `table` in `ctx` as `name`, restricted to `files` when given; false when there is
/// nothing to read.
pub(crate) async fn register(
    ctx: &SessionContext,
    name: &str,
    table: &DeltaTable,
    files: Option<Vec<Add>>,
) -> Result<bool> {
    if files.as_ref().is_some_and(Vec::is_empty) {
        return Ok(false);
    }
    crate::sql::register(ctx, name, table, files).await?;
    Ok(true)
}

/// Sightings in one record source's table: its identifier, trait and consent columns.
pub async fn scan_records(
    ctx: &SessionContext,
    config: &Config,
    name: &str,
    table: &DeltaTable,
    files: Option<Vec<Add>>,
) -> Result<Vec<Sighting>> {
    let source = &config.records[name];
    if source.identifiers.is_empty() {
        return Ok(Vec::new());
    }
    let src = format!("src_{name}");
    if !register(ctx, &src, table, files).await? {
        return Ok(Vec::new());
    }
    let quote = |c: &str| format!("\"{}\"", c.replace('"', "\"\""));
    let mut columns: Vec<(char, String, String)> = Vec::new();
    for (ty, col) in &source.identifiers {
        columns.push(('i', ty.clone(), col.clone()));
    }
    for (t, col) in &source.traits {
        columns.push(('t', t.clone(), col.clone()));
    }
    for (channel, col) in &source.consent {
        columns.push(('c', channel.clone(), col.clone()));
    }
    let time = source
        .event
        .as_ref()
        .map_or("_ingested_at".to_string(), |e| quote(&e.timestamp));
    let select: Vec<String> = columns
        .iter()
        .map(|(_, _, col)| format!("cast({} as varchar)", quote(col)))
        .collect();
    let groups: Vec<String> = (1..=columns.len()).map(|i| i.to_string()).collect();
    let query = format!(
        "select {}, min({time}) as first_seen, max({time}) as last_seen, count(*) as n from {src} group by {}",
        select.join(", "),
        groups.join(", ")
    );
    let mut out = Vec::new();
    let mut stream = ctx.sql(&query).await?.execute_stream().await?;
    let k = columns.len();
    while let Some(batch) = stream.try_next().await? {
        let s: Vec<StringArray> = (0..k)
            .map(|i| strings(batch.column(i)))
            .collect::<Result<_>>()?;
        let (first, last, n) = (
            ints(&cast(batch.column(k), &timestamp_type())?)?,
            ints(&cast(batch.column(k + 1), &timestamp_type())?)?,
            ints(batch.column(k + 2))?,
        );
        for row in 0..batch.num_rows() {
            let mut ids = Vec::new();
            let mut traits = Map::new();
            let mut consent = Map::new();
            for (i, (what, key, col)) in columns.iter().enumerate() {
                if s[i].is_null(row) {
                    continue;
                }
                let text = s[i].value(row);
                match what {
                    'i' => ids.push((key.clone(), text.to_string())),
                    't' => {
                        traits.insert(key.clone(), typed(text, source.columns.get(col)));
                    }
                    _ => {
                        consent.insert(key.clone(), Value::String(text.to_string()));
                    }
                }
            }
            let object =
                |m: Map<String, Value>| (!m.is_empty()).then(|| Value::Object(m).to_string());
            out.push(Sighting {
                kind: Kind::Record,
                source: name.to_string(),
                user_id: None,
                anonymous_id: None,
                previous_id: None,
                message_id: None,
                external_ids: ids,
                traits: object(traits),
                context_traits: None,
                consent: object(consent),
                first_seen: first.value(row),
                last_seen: last.value(row),
                count: n.value(row),
            });
        }
    }
    Ok(out)
}

/// A record cell as the JSON value its declared column type says it is.
fn typed(text: &str, ty: Option<&ValueType>) -> Value {
    let parsed = match ty {
        Some(ValueType::Double) => text
            .parse::<f64>()
            .ok()
            .and_then(|f| serde_json::Number::from_f64(f).map(Value::Number)),
        Some(ValueType::Long) => text.parse::<i64>().ok().map(Value::from),
        Some(ValueType::Boolean) => text.parse::<bool>().ok().map(Value::Bool),
        _ => None,
    };
    parsed.unwrap_or_else(|| Value::String(text.to_string()))
}

/// The rows of a batch as text, null as empty (for bookkeeping queries).
pub fn text_rows(b: &arrow::array::RecordBatch) -> Result<Vec<Vec<String>>> {
    let cols: Vec<StringArray> = b.columns().iter().map(strings).collect::<Result<_>>()?;
    Ok((0..b.num_rows())
        .map(|i| {
            cols.iter()
                .map(|c| {
                    if c.is_null(i) {
                        String::new()
                    } else {
                        c.value(i).to_string()
                    }
                })
                .collect()
        })
        .collect())
}

/// A string column of any string encoding as plain `Utf8`.
pub fn strings(col: &ArrayRef) -> Result<StringArray> {
    let utf8 = cast(col, &DataType::Utf8)?;
    Ok(utf8
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("cast to Utf8 gives a StringArray")
        .clone())
}

/// An integer or timestamp column as `i64` values (timestamps in microseconds).
pub fn ints(col: &ArrayRef) -> Result<Int64Array> {
    let col = match col.data_type() {
        DataType::Timestamp(_, _) => cast(col, &timestamp_type())?,
        _ => col.clone(),
    };
    let longs = cast(&col, &DataType::Int64)?;
    Ok(longs
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("cast to Int64 gives an Int64Array")
        .clone())
}

/// Record source names with identifier columns, in config order.
pub fn record_sources(config: &Config) -> Vec<String> {
    config
        .records
        .iter()
        .filter(|(_, s)| !s.identifiers.is_empty())
        .map(|(n, _)| n.clone())
        .collect()
}

/// Versions of the source tables a run read, by table name (`events`, `crm`, ...).
pub type Versions = BTreeMap<String, i64>;
