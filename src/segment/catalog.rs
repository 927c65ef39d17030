//! What segments can name in a workspace: profile fields and their types (from `profiles`),
//! computed traits (from `traits`, when it exists), typed event properties (from `events`), and
//! the event and page names found in the data or declared in `tribe.toml`.

use std::collections::{BTreeMap, BTreeSet};

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Schema};
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;

use crate::error::{Error, Result};
use crate::storage::TableSpec;
use crate::storage::schema::{EVENTS, PROP_PREFIX};
use crate::workspace::Workspace;

/// Value types of the segment language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Ty {
    Number,
    Text,
    Bool,
    Time,
    Duration,
    /// The `null` literal: compatible with every type.
    Null,
}

impl Ty {
    pub fn of(dt: &DataType) -> Ty {
        match dt {
            DataType::Boolean => Ty::Bool,
            DataType::Timestamp(..) | DataType::Date32 | DataType::Date64 => Ty::Time,
            d if d.is_numeric() => Ty::Number,
            _ => Ty::Text,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Ty::Number => "number",
            Ty::Text => "text",
            Ty::Bool => "boolean",
            Ty::Time => "time",
            Ty::Duration => "duration",
            Ty::Null => "null",
        }
    }

    /// Whether values of the two types can be compared.
    pub fn compatible(self, other: Ty) -> bool {
        self == other || self == Ty::Null || other == Ty::Null
    }
}

/// The names a segment may use, with their types.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Columns of `profiles`.
    pub profile: BTreeMap<String, Ty>,
    /// Columns of `traits` (computed traits), apart from its keys.
    pub traits: BTreeMap<String, Ty>,
    /// Typed event properties, by property name.
    pub properties: BTreeMap<String, Ty>,
    /// Names of track events (and record events).
    pub event_names: BTreeSet<String>,
    /// Names of page and screen views, by type.
    pub view_names: BTreeMap<String, BTreeSet<String>>,
    /// Whether `profile_events` joins `events` to `profile_routes` on route keys
    /// (`crate::sql::joins_on_route_keys`), which segments may then join themselves.
    pub route_keys: bool,
}

/// Columns of `traits` that identify a row rather than hold a trait.
pub const TRAIT_KEYS: &[&str] = &["profile_id", "as_of", "computed_at"];

impl Catalog {
    /// Reads the catalog of the workspace whose tables `ctx` has registered.
    pub async fn load(ws: &Workspace, ctx: &SessionContext) -> Result<Catalog> {
        let mut cat = Catalog::default();
        let Some(profiles) = schema_of(ctx, "profiles").await else {
            return Err(Error::Input(
                "segments need profiles: run `tribe resolve` first".into(),
            ));
        };
        for f in profiles.fields() {
            cat.profile.insert(f.name().clone(), Ty::of(f.data_type()));
        }
        if let Some(traits) = schema_of(ctx, "traits").await {
            for f in traits.fields() {
                if !TRAIT_KEYS.contains(&f.name().as_str()) {
                    cat.traits.insert(f.name().clone(), Ty::of(f.data_type()));
                }
            }
        }
        if let Some(events) = schema_of(ctx, "events").await {
            for f in events.fields() {
                if let Some(p) = f.name().strip_prefix(PROP_PREFIX) {
                    cat.properties.insert(p.to_string(), Ty::of(f.data_type()));
                }
            }
            let names = event_names(ws, ctx).await?;
            cat.event_names = names.events;
            cat.view_names = names.views;
        }
        cat.event_names
            .extend(ws.config.segments.events.iter().cloned());
        cat.route_keys = crate::sql::joins_on_route_keys(ctx).await?;
        Ok(cat)
    }
}

/// Names of track events and of page/screen views seen in `events`, with the table version
/// they were read at. Kept in `.tribe/event_names.json` in the workspace folder, so that a
/// command reads only the files added since the last one (the full table only after deletes).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct EventNames {
    table: String,
    version: i64,
    events: BTreeSet<String>,
    views: BTreeMap<String, BTreeSet<String>>,
}

const NAMES_CACHE: &str = ".tribe/event_names.json";

async fn event_names(ws: &Workspace, ctx: &SessionContext) -> Result<EventNames> {
    let spec = TableSpec::existing(EVENTS, EVENTS);
    let Some(table) = ws.storage.open(&spec).await? else {
        return Ok(EventNames::default());
    };
    let url = table.table_url().to_string();
    let version = table.version().map_or(-1, |v| v as i64);
    let path = ws.dir.join(NAMES_CACHE);
    let cached: Option<EventNames> = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(|c: &EventNames| c.table == url && c.version <= version);
    let mut names = match cached {
        Some(c) if c.version == version => return Ok(c),
        Some(mut c) => match crate::storage::added_since(&table, c.version).await? {
            Some(adds) if adds.is_empty() => c,
            Some(adds) => {
                let only_new = crate::sql::new_context(ws.config.workspace.memory_limit_mb)?;
                crate::sql::register(&only_new, EVENTS, &table, Some(adds)).await?;
                read_names(&only_new, &mut c).await?;
                c
            }
            None => {
                let mut fresh = EventNames::default();
                read_names(ctx, &mut fresh).await?;
                fresh
            }
        },
        None => {
            let mut fresh = EventNames::default();
            read_names(ctx, &mut fresh).await?;
            fresh
        }
    };
    names.table = url;
    names.version = version;
    // The cache only saves time; a workspace folder that cannot be written still works.
    if let Some(dir) = path.parent()
        && std::fs::create_dir_all(dir).is_ok()
        && let Ok(json) = serde_json::to_vec(&names)
    {
        let tmp = path.with_extension("json.tmp");
        if std::fs::write(&tmp, json).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }
    Ok(names)
}

async fn read_names(ctx: &SessionContext, names: &mut EventNames) -> Result<()> {
    let batches: Vec<_> = ctx
        .sql("select distinct type, coalesce(event, name) from events")
        .await?
        .execute_stream()
        .await?
        .try_collect()
        .await?;
    for b in batches {
        let types = arrow::compute::cast(b.column(0), &DataType::Utf8)?;
        let values = arrow::compute::cast(b.column(1), &DataType::Utf8)?;
        let (types, values) = (types.as_string::<i32>(), values.as_string::<i32>());
        for i in 0..b.num_rows() {
            if values.is_null(i) {
                continue;
            }
            let (ty, name) = (types.value(i), values.value(i).to_string());
            if ty == "page" || ty == "screen" {
                names.views.entry(ty.to_string()).or_default().insert(name);
            } else {
                names.events.insert(name);
            }
        }
    }
    Ok(())
}

async fn schema_of(ctx: &SessionContext, table: &str) -> Option<Schema> {
    let provider = ctx.table_provider(table).await.ok()?;
    Some(provider.schema().as_ref().clone())
}
