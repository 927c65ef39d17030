//! What segments can name in a workspace: profile fields and their types (from `profiles`),
//! computed traits (from `traits`, when it exists), typed event properties (from `events`), and
//! the event and page names found in the data or declared in `tribe.toml`.

use std::collections::{BTreeMap, BTreeSet};

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Schema};
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;

use crate::error::{Error, Result};
use crate::storage::schema::PROP_PREFIX;
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
            let batches: Vec<_> = ctx
                .sql("select distinct type, coalesce(event, name) from events")
                .await?
                .execute_stream()
                .await?
                .try_collect()
                .await?;
            for b in batches {
                let types = arrow::compute::cast(b.column(0), &DataType::Utf8)?;
                let names = arrow::compute::cast(b.column(1), &DataType::Utf8)?;
                let (types, names) = (types.as_string::<i32>(), names.as_string::<i32>());
                for i in 0..b.num_rows() {
                    if names.is_null(i) {
                        continue;
                    }
                    let (ty, name) = (types.value(i), names.value(i).to_string());
                    if ty == "page" || ty == "screen" {
                        cat.view_names
                            .entry(ty.to_string())
                            .or_default()
                            .insert(name);
                    } else {
                        cat.event_names.insert(name);
                    }
                }
            }
        }
        cat.event_names
            .extend(ws.config.segments.events.iter().cloned());
        Ok(cat)
    }
}

async fn schema_of(ctx: &SessionContext, table: &str) -> Option<Schema> {
    let provider = ctx.table_provider(table).await.ok()?;
    Some(provider.schema().as_ref().clone())
}
