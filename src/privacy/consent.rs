//! Consent statements made through `tribe privacy consent`: one row per statement in
//! `privacy_consent` (identifier, channel, granted or denied, when, by which source). Identity
//! resolution reads them like record rows, so they join the consent of records and identify
//! traits under the same rule: per channel, the latest statement wins (a denial wins a tie).

use std::sync::Arc;

use arrow::array::BooleanArray;
use arrow::datatypes::{DataType, Field};
use datafusion::prelude::SessionContext;
use deltalake::DeltaTable;
use deltalake::kernel::Add;
use futures::TryStreamExt;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::identity::sightings::{Kind, Sighting, ints, strings};
use crate::identity::tables::{self, text};
use crate::storage::schema::timestamp_type;
use crate::storage::{TableSpec, WriteMode};
use crate::workspace::Workspace;

pub const TABLE: &str = "privacy_consent";

pub fn spec() -> TableSpec {
    tables::spec(
        TABLE,
        vec![
            text("statement_id", false),
            text("id_type", false),
            text("id_value", false),
            text("channel", false),
            Field::new("granted", DataType::Boolean, false),
            Field::new("stated_at", timestamp_type(), false),
            text("source", false),
            Field::new("recorded_at", timestamp_type(), false),
        ],
        &[],
    )
}

/// One consent statement.
#[derive(Debug, Clone, Serialize)]
pub struct Statement {
    pub statement_id: String,
    pub id_type: String,
    /// The normalised identifier the statement is about.
    pub id_value: String,
    pub channel: String,
    pub granted: bool,
    pub stated_at: i64,
    pub source: String,
}

/// Whether `channel` can be a consent channel (it becomes the column `consent_<channel>`).
pub fn valid_channel(channel: &str) -> bool {
    !channel.is_empty()
        && channel
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Appends a statement in its own commit.
pub async fn record(ws: &Workspace, s: &Statement) -> Result<()> {
    if !valid_channel(&s.channel) {
        return Err(Error::Input(format!(
            "--channel {:?}: a channel is lower-case letters, digits and _ (email, sms, ads, analytics)",
            s.channel
        )));
    }
    let spec = spec();
    let one = |v: &str| tables::strings([Some(v)]);
    let batch = tables::rows(
        &spec,
        vec![
            one(&s.statement_id),
            one(&s.id_type),
            one(&s.id_value),
            one(&s.channel),
            Arc::new(BooleanArray::from(vec![s.granted])),
            tables::times([Some(s.stated_at)])?,
            one(&s.source),
            tables::times([Some(chrono::Utc::now().timestamp_micros())])?,
        ],
    )?;
    ws.storage
        .write(&spec, vec![batch], WriteMode::Append)
        .await?;
    Ok(())
}

/// The statements of `table` (only those in `files` when given) as sightings: the identifier
/// with the consent it states, at the time it was stated.
pub async fn scan(
    ctx: &SessionContext,
    table: &DeltaTable,
    files: Option<Vec<Add>>,
) -> Result<Vec<Sighting>> {
    let name = "src_privacy_consent";
    if !crate::identity::sightings::register(ctx, name, table, files).await? {
        return Ok(Vec::new());
    }
    let query = format!(
        "select id_type, id_value, channel, granted, cast(stated_at as bigint), source from {name}"
    );
    let mut out = Vec::new();
    let mut stream = ctx.sql(&query).await?.execute_stream().await?;
    while let Some(b) = stream.try_next().await? {
        let (ty, value, channel, source) = (
            strings(b.column(0))?,
            strings(b.column(1))?,
            strings(b.column(2))?,
            strings(b.column(5))?,
        );
        let granted = arrow::array::AsArray::as_boolean(b.column(3).as_ref()).clone();
        let at = ints(b.column(4))?;
        for i in 0..b.num_rows() {
            let mut consent = Map::new();
            consent.insert(channel.value(i).to_string(), Value::Bool(granted.value(i)));
            out.push(Sighting {
                kind: Kind::Record,
                source: source.value(i).to_string(),
                user_id: None,
                anonymous_id: None,
                previous_id: None,
                message_id: None,
                external_ids: vec![(ty.value(i).to_string(), value.value(i).to_string())],
                traits: None,
                context_traits: None,
                consent: Some(Value::Object(consent).to_string()),
                first_seen: at.value(i),
                last_seen: at.value(i),
                count: 1,
            });
        }
    }
    Ok(out)
}
