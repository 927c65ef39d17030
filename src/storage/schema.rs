//! The shapes of the tables ingestion writes: `events`, `rejected` and one table per record
//! source. Later stages define their own tables next to their code.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

use crate::config::{Config, RecordSource, ValueType};
use crate::storage::TableSpec;

/// Name and folder of the events table.
pub const EVENTS: &str = "events";
/// Name and folder of the table of rejected input rows.
pub const REJECTED: &str = "rejected";
/// Prefix of typed property columns in `events` (`prop_revenue`).
pub const PROP_PREFIX: &str = "prop_";
/// The partition column of `events`: the UTC day of `timestamp`.
pub const DAY: &str = "day";

/// Table names no record source may take, because tribe's own tables use them.
pub const RESERVED_TABLES: &[&str] = &[
    "events",
    "rejected",
    "profiles",
    "identities",
    "profile_merges",
    "profile_events",
    "profile_keys",
    "profile_routes",
    "identity_links",
    "identity_conflicts",
    "resolve_runs",
    "traits",
    "trait_models",
    "segment_members",
    "export_runs",
    "profile_consent",
    "privacy_log",
    "privacy_consent",
    "privacy_tombstones",
];

/// Properties of the Segment e-commerce and page specs that always get typed columns.
pub const DEFAULT_PROPERTIES: &[(&str, ValueType)] = &[
    ("revenue", ValueType::Double),
    ("total", ValueType::Double),
    ("value", ValueType::Double),
    ("price", ValueType::Double),
    ("quantity", ValueType::Long),
    ("currency", ValueType::String),
    ("order_id", ValueType::String),
    ("product_id", ValueType::String),
    ("sku", ValueType::String),
    ("category", ValueType::String),
    ("url", ValueType::String),
    ("path", ValueType::String),
    ("referrer", ValueType::String),
    ("title", ValueType::String),
];

/// A timestamp column type: microseconds, UTC.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// The typed properties of a workspace: defaults plus those declared in the config, by name.
pub fn typed_properties(config: &Config) -> BTreeMap<String, ValueType> {
    let mut props: BTreeMap<String, ValueType> = DEFAULT_PROPERTIES
        .iter()
        .map(|(n, t)| (n.to_string(), *t))
        .collect();
    props.extend(config.events.properties.clone());
    props
}

/// The `events` table: one row per Segment message, partitioned by UTC day.
pub fn events(config: &Config) -> TableSpec {
    let text = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
    let mut fields = vec![
        text("message_id", false),
        text("type", false),
        text("event", true),
        text("name", true),
        text("user_id", true),
        text("anonymous_id", true),
        text("previous_id", true),
        text("group_id", true),
        Field::new("timestamp", timestamp_type(), false),
        Field::new("received_at", timestamp_type(), false),
        Field::new("sent_at", timestamp_type(), true),
        text("source", false),
        // The message id again, only for events that carry neither a user nor an anonymous
        // id: what `profile_events` routes them to their profile by. Mostly null, so a scan
        // that needs it reads almost nothing, where `message_id` is a unique string per event.
        text("route_id", true),
        // The route again as a 128-bit hash in two integers: what `profile_events` joins on
        // when every file of the table has it (see `route_key`). An equality join on two
        // integers costs a fraction of one on three nullable strings.
        Field::new(ROUTE_HI, DataType::Int64, true),
        Field::new(ROUTE_LO, DataType::Int64, true),
    ];
    for (name, ty) in typed_properties(config) {
        fields.push(Field::new(format!("{PROP_PREFIX}{name}"), ty.arrow(), true));
    }
    fields.extend([
        text("properties", true),
        text("traits", true),
        text("context", true),
        text("integrations", true),
        Field::new(DAY, DataType::Date32, false),
    ]);
    TableSpec {
        name: EVENTS.into(),
        path: EVENTS.into(),
        schema: Arc::new(Schema::new(fields)),
        partition_columns: vec![DAY.into()],
    }
}

/// The two halves of an event's route key, in `events` and in `profile_routes`.
pub const ROUTE_HI: &str = "route_hi";
pub const ROUTE_LO: &str = "route_lo";

/// The key of an event's route (its user id and anonymous id, or its message id when it
/// carries neither) as two 64-bit halves of a 128-bit xxh3 hash. An absent id and an empty one
/// hash differently. At 128 bits, two distinct routes sharing a key is as unlikely as two
/// random UUIDs being equal, so the key stands for the route in the join.
pub fn route_key(
    user_id: Option<&str>,
    anonymous_id: Option<&str>,
    message_id: Option<&str>,
) -> (i64, i64) {
    // Streamed into the hasher: computed for every event ingested, so nothing is allocated.
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for part in [user_id, anonymous_id, message_id] {
        match part {
            None => hasher.update(&[0]),
            Some(text) => {
                hasher.update(&[1]);
                hasher.update(&(text.len() as u64).to_le_bytes());
                hasher.update(text.as_bytes());
            }
        }
    }
    let hash = hasher.digest128();
    ((hash >> 64) as i64, hash as i64)
}

/// Whether every file of an `events` table with this schema carries route keys: the table was
/// created with them, right after `route_id`. Tables from before route keys get them appended
/// at the end by schema evolution, and their older files have none.
pub fn has_route_keys(schema: &Schema) -> bool {
    let position = |name: &str| schema.index_of(name).ok();
    match (position("route_id"), position(ROUTE_HI), position(ROUTE_LO)) {
        (Some(id), Some(hi), Some(lo)) => hi == id + 1 && lo == id + 2,
        _ => false,
    }
}

/// The column a table's partitions are kept sorted by (`tribe maintain` rewrites a partition
/// sorted when it gets new files): in `events`, the event name, so a scan for one kind of event
/// reads only its pages.
pub fn sort_key(table: &str) -> Option<&'static str> {
    (table == EVENTS).then_some("event")
}

/// The `rejected` table: input rows a stage refused, with where they came from and why.
pub fn rejected() -> TableSpec {
    let fields = vec![
        Field::new("reject_id", DataType::Utf8, false),
        Field::new("stage", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("file", DataType::Utf8, false),
        Field::new("line", DataType::Int64, true),
        Field::new("field", DataType::Utf8, true),
        Field::new("reason", DataType::Utf8, false),
        Field::new("raw", DataType::Utf8, true),
        Field::new("rejected_at", timestamp_type(), false),
    ];
    TableSpec {
        name: REJECTED.into(),
        path: REJECTED.into(),
        schema: Arc::new(Schema::new(fields)),
        partition_columns: vec![],
    }
}

/// Bookkeeping columns every record table starts with.
pub const RECORD_META: &[&str] = &["_record_id", "_file", "_line", "_ingested_at"];

/// A record source's table: bookkeeping columns, then the source's columns in the order given
/// (typed as the config says, text otherwise).
pub fn records(name: &str, source: &RecordSource, columns: &[String]) -> TableSpec {
    let mut fields = vec![
        Field::new("_record_id", DataType::Utf8, false),
        Field::new("_file", DataType::Utf8, false),
        Field::new("_line", DataType::Int64, false),
        Field::new("_ingested_at", timestamp_type(), false),
    ];
    for column in columns {
        let ty = source
            .columns
            .get(column)
            .map(|t| t.arrow())
            .unwrap_or(DataType::Utf8);
        fields.push(Field::new(column, ty, true));
    }
    TableSpec {
        name: name.into(),
        path: format!("records/{name}"),
        schema: Arc::new(Schema::new(fields)),
        partition_columns: vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_keys_tell_absent_empty_and_shifted_ids_apart_and_never_change() {
        let keys = [
            route_key(Some("u1"), None, None),
            route_key(Some("u1"), Some(""), None),
            route_key(None, Some("u1"), None),
            route_key(Some("u"), Some("1"), None),
            route_key(Some("u1"), Some("a1"), None),
            route_key(None, None, Some("m1")),
        ];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
        // Stored in every event: a change of the encoding would strand existing workspaces.
        assert_eq!(keys[4], route_key(Some("u1"), Some("a1"), None));
        assert_eq!(
            format!("{:016x}{:016x}", keys[4].0, keys[4].1),
            "2fe37d655d37a038007399bce81c3ec5"
        );
    }

    #[test]
    fn only_tables_created_with_route_keys_have_them_in_every_file() {
        let events = events(&Config::default()).schema;
        assert!(has_route_keys(&events));
        let mut evolved: Vec<Field> = events
            .fields()
            .iter()
            .filter(|f| !f.name().starts_with("route_") || f.name() == "route_id")
            .map(|f| f.as_ref().clone())
            .collect();
        assert!(!has_route_keys(&Schema::new(evolved.clone())));
        evolved.push(Field::new(ROUTE_HI, DataType::Int64, true));
        evolved.push(Field::new(ROUTE_LO, DataType::Int64, true));
        assert!(!has_route_keys(&Schema::new(evolved)));
    }
}
