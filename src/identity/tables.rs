//! The tables identity resolution writes, and their rows as Arrow batches: `identities`,
//! `profiles`, `profile_keys` (each user id, anonymous id and id-less event of a profile),
//! `profile_routes` (how the `profile_events` view finds an event's profile),
//! `identity_conflicts`, `profile_merges` and `resolve_runs`.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanBuilder, Int64Array, Int64Builder, RecordBatch, StringBuilder,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema};

use crate::error::Result;
use crate::identity::profiles::{Profile, traits_json};
use crate::identity::trait_columns;
use crate::storage::TableSpec;
use crate::storage::schema::{ROUTE_HI, ROUTE_LO, route_key, timestamp_type};

/// A table stored under the root by its own name (the tables of stages after ingestion).
pub fn spec(name: &str, fields: Vec<Field>, partition: &[&str]) -> TableSpec {
    TableSpec {
        name: name.into(),
        path: name.into(),
        schema: Arc::new(Schema::new(fields)),
        partition_columns: partition.iter().map(|s| s.to_string()).collect(),
    }
}

/// A text column.
pub fn text(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Utf8, nullable)
}
/// A nullable UTC timestamp column (microseconds).
pub fn ts(name: &str) -> Field {
    Field::new(name, timestamp_type(), true)
}
fn long(name: &str) -> Field {
    Field::new(name, DataType::Int64, false)
}

pub fn identities() -> TableSpec {
    spec(
        "identities",
        vec![
            text("id_type", false),
            text("id_value", false),
            text("profile_id", false),
            ts("first_seen"),
            ts("last_seen"),
            text("sources", false),
        ],
        &[],
    )
}

pub fn profile_keys() -> TableSpec {
    spec(
        "profile_keys",
        vec![
            text("key", false),
            text("profile_id", false),
            text("key_type", false),
        ],
        &["key_type"],
    )
}

/// One row per distinct (user id, anonymous id) pair of the events seen, and per event that
/// carries neither (by message id), with the profile its events belong to: what the
/// `profile_events` view joins events on, in one join.
pub fn profile_routes() -> TableSpec {
    spec(
        "profile_routes",
        vec![
            text("user_id", true),
            text("anonymous_id", true),
            text("message_id", true),
            text("profile_id", false),
            Field::new(ROUTE_HI, DataType::Int64, false),
            Field::new(ROUTE_LO, DataType::Int64, false),
        ],
        &[],
    )
}

/// A `profile_keys` row: (key type, key, profile id).
pub type Key<'a> = (&'a str, &'a str, &'a str);

pub fn profile_keys_batch(keys: &[Key]) -> Result<RecordBatch> {
    rows(
        &profile_keys(),
        vec![
            strings(keys.iter().map(|k| Some(k.1))),
            strings(keys.iter().map(|k| Some(k.2))),
            strings(keys.iter().map(|k| Some(k.0))),
        ],
    )
}

/// A `profile_routes` row: (user id, anonymous id, message id of an event with neither,
/// profile id).
pub type Route<'a> = (Option<&'a str>, Option<&'a str>, Option<&'a str>, &'a str);

pub fn profile_routes_batch(routes: &[Route]) -> Result<RecordBatch> {
    let keys: Vec<(i64, i64)> = routes.iter().map(|r| route_key(r.0, r.1, r.2)).collect();
    rows(
        &profile_routes(),
        vec![
            strings(routes.iter().map(|r| r.0)),
            strings(routes.iter().map(|r| r.1)),
            strings(routes.iter().map(|r| r.2)),
            strings(routes.iter().map(|r| Some(r.3))),
            Arc::new(Int64Array::from(
                keys.iter().map(|k| k.0).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(
                keys.iter().map(|k| k.1).collect::<Vec<_>>(),
            )),
        ],
    )
}

pub fn conflicts() -> TableSpec {
    spec(
        "identity_conflicts",
        vec![
            text("id_type", false),
            text("id_value", false),
            text("other_type", false),
            text("other_value", false),
            text("limited_type", false),
            text("profile_id", false),
            text("other_profile_id", false),
            ts("first_seen"),
            text("reason", false),
        ],
        &[],
    )
}

/// `profile_consent`: each profile's latest consent statement per channel, with its time and
/// source (the `consent_<channel>` columns of `profiles` hold only the decision).
pub fn profile_consent() -> TableSpec {
    spec(
        "profile_consent",
        vec![
            text("profile_id", false),
            text("channel", false),
            Field::new("granted", DataType::Boolean, false),
            ts("stated_at"),
            text("source", false),
        ],
        &[],
    )
}

/// The rows of `profile_consent` for `profiles`.
pub fn profile_consent_batch(profiles: &[Profile]) -> Result<RecordBatch> {
    let stated: Vec<(&str, &str, &crate::identity::profiles::Consent)> = profiles
        .iter()
        .flat_map(|p| {
            p.consent
                .iter()
                .map(move |(ch, c)| (p.id.as_str(), ch.as_str(), c))
        })
        .collect();
    let mut granted = BooleanBuilder::new();
    stated
        .iter()
        .for_each(|r| granted.append_value(r.2.granted));
    rows(
        &profile_consent(),
        vec![
            strings(stated.iter().map(|r| Some(r.0))),
            strings(stated.iter().map(|r| Some(r.1))),
            Arc::new(granted.finish()),
            times(stated.iter().map(|r| Some(r.2.at)))?,
            strings(stated.iter().map(|r| Some(r.2.source.as_str()))),
        ],
    )
}

pub fn merges() -> TableSpec {
    spec(
        "profile_merges",
        vec![
            text("from_profile", false),
            text("into_profile", false),
            text("kind", false),
            ts("at"),
            text("reason", false),
            text("run_id", false),
        ],
        &[],
    )
}

pub fn runs() -> TableSpec {
    spec(
        "resolve_runs",
        vec![
            text("run_id", false),
            text("mode", false),
            ts("started_at"),
            ts("finished_at"),
            text("versions", false),
            long("sightings"),
            long("new_sightings"),
            long("identifiers"),
            long("profiles"),
            long("merges"),
            long("splits"),
            long("conflicts"),
            text("skipped", false),
            text("rules", true),
        ],
        &[],
    )
}

/// Builds a batch column by column: each column is (field, array).
fn batch(columns: Vec<(Field, ArrayRef)>) -> Result<RecordBatch> {
    let (fields, arrays): (Vec<Field>, Vec<ArrayRef>) = columns.into_iter().unzip();
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?)
}

pub fn strings<'a>(values: impl IntoIterator<Item = Option<&'a str>>) -> ArrayRef {
    let mut b = StringBuilder::new();
    for v in values {
        b.append_option(v);
    }
    Arc::new(b.finish())
}

pub fn times(values: impl IntoIterator<Item = Option<i64>>) -> Result<ArrayRef> {
    let mut b = Int64Builder::new();
    for v in values {
        b.append_option(v);
    }
    Ok(cast(&b.finish(), &timestamp_type())?)
}

pub fn longs(values: impl IntoIterator<Item = i64>) -> ArrayRef {
    let mut b = Int64Builder::new();
    for v in values {
        b.append_value(v);
    }
    Arc::new(b.finish())
}

/// A batch in `spec`'s schema from arrays in its column order.
pub fn rows(spec: &TableSpec, arrays: Vec<ArrayRef>) -> Result<RecordBatch> {
    Ok(RecordBatch::try_new(spec.schema.clone(), arrays)?)
}

/// Stored rows as one batch with plain strings. They come back from the scan as string views,
/// and every column built from them (fixed, traits JSON, reused trait columns) is `Utf8`: one
/// cast here instead of one per use.
fn plain_strings(batches: &[RecordBatch]) -> Result<RecordBatch> {
    let batch = arrow::compute::concat_batches(&batches[0].schema(), batches)?;
    let mut fields = Vec::with_capacity(batch.num_columns());
    let mut columns = Vec::with_capacity(batch.num_columns());
    for (f, c) in batch.schema().fields().iter().zip(batch.columns()) {
        if *c.data_type() == DataType::Utf8View {
            fields.push(f.as_ref().clone().with_data_type(DataType::Utf8));
            columns.push(cast(c, &DataType::Utf8)?);
        } else {
            fields.push(f.as_ref().clone());
            columns.push(c.clone());
        }
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// Columns every profile has, before consent and trait columns.
pub const FIXED: &[&str] = &[
    "profile_id",
    "is_known",
    "user_id",
    "email",
    "phone",
    "identifiers",
    "first_seen",
    "last_seen",
    "events",
    "sources",
    "traits",
];

/// The `profiles` table: fixed columns, `consent_<channel>`, then one typed column per trait.
///
/// `kept` are rows of the stored table that stay as they are (an incremental run keeps the
/// profiles it did not recompute); they come first. Their trait columns get the types and the
/// set of columns a full run would give them (see `trait_columns`).
pub fn profiles_batch(
    profiles: &[Profile],
    kept: &[RecordBatch],
    skip_traits: &[String],
) -> Result<(TableSpec, RecordBatch)> {
    let kept = if kept.is_empty() {
        None
    } else {
        Some(plain_strings(kept)?)
    };
    // A fixed column: the kept rows' values, then the new profiles'.
    let with_kept = |field: Field, new: ArrayRef| -> Result<(Field, ArrayRef)> {
        let Some(kept) = &kept else {
            return Ok((field, new));
        };
        let old = cast(
            kept.column_by_name(field.name())
                .expect("a stored profiles table has every fixed column"),
            field.data_type(),
        )?;
        Ok((field, arrow::compute::concat(&[&old, &new])?))
    };
    let opt = |f: fn(&Profile) -> Option<&str>| strings(profiles.iter().map(f));
    let mut cols: Vec<(Field, ArrayRef)> = vec![
        with_kept(
            text("profile_id", false),
            strings(profiles.iter().map(|p| Some(p.id.as_str()))),
        )?,
        with_kept(Field::new("is_known", DataType::Boolean, false), {
            let mut b = BooleanBuilder::new();
            profiles.iter().for_each(|p| b.append_value(p.is_known));
            Arc::new(b.finish())
        })?,
        with_kept(text("user_id", true), opt(|p| p.user_id.as_deref()))?,
        with_kept(text("email", true), opt(|p| p.email.as_deref()))?,
        with_kept(text("phone", true), opt(|p| p.phone.as_deref()))?,
        with_kept(
            long("identifiers"),
            longs(profiles.iter().map(|p| p.identifiers)),
        )?,
        with_kept(
            ts("first_seen"),
            times(profiles.iter().map(|p| Some(p.first_seen)))?,
        )?,
        with_kept(
            ts("last_seen"),
            times(profiles.iter().map(|p| Some(p.last_seen)))?,
        )?,
        with_kept(long("events"), longs(profiles.iter().map(|p| p.events)))?,
        with_kept(
            text("sources", false),
            strings(profiles.iter().map(|p| Some(p.sources.as_str()))),
        )?,
        with_kept(text("traits", false), {
            let json: Vec<String> = profiles.iter().map(traits_json).collect();
            strings(json.iter().map(|s| Some(s.as_str())))
        })?,
    ];
    // Consent channels: those of the new profiles, and those any kept row has a value for.
    let kept_rows = kept.as_ref().map_or(0, RecordBatch::num_rows);
    let mut channels: BTreeMap<String, Option<ArrayRef>> = BTreeMap::new();
    if let Some(kept) = &kept {
        for (field, col) in kept.schema().fields().iter().zip(kept.columns()) {
            if let Some(channel) = field.name().strip_prefix("consent_")
                && col.null_count() < col.len()
            {
                channels.insert(channel.to_string(), Some(cast(col, &DataType::Boolean)?));
            }
        }
    }
    for p in profiles {
        for channel in p.consent.keys() {
            channels.entry(channel.clone()).or_insert(None);
        }
    }
    for (channel, old) in channels {
        let mut b = BooleanBuilder::new();
        match old {
            Some(old) => b.extend(
                old.as_any()
                    .downcast_ref::<arrow::array::BooleanArray>()
                    .expect("cast to Boolean")
                    .iter(),
            ),
            None => b.append_nulls(kept_rows),
        }
        profiles
            .iter()
            .for_each(|p| b.append_option(p.consent.get(&channel).map(|c| c.granted)));
        cols.push((
            Field::new(format!("consent_{channel}"), DataType::Boolean, true),
            Arc::new(b.finish()),
        ));
    }
    let names = cols.iter().map(|(f, _)| f.name().clone()).collect();
    cols.extend(trait_columns::build(
        kept.as_ref(),
        profiles,
        skip_traits,
        names,
    )?);
    let batch = batch(cols)?;
    let spec = TableSpec {
        name: "profiles".into(),
        path: "profiles".into(),
        schema: batch.schema(),
        partition_columns: vec![],
    };
    Ok((spec, batch))
}
