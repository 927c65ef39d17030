//! Tombstones: the salted hashes of a forgotten person's identifiers, in `privacy_tombstones`.
//! Ingestion (files and the collector alike) checks every event and record against them, so
//! that re-ingesting old data or new events from the same identifiers does not bring the
//! person back. With `[privacy] new_consent_overrides = true`, a message or record dated after
//! the erasure that grants consent on some channel is kept, and lifts the tombstone of its
//! identifiers from that time on (for the ingests that follow; older data stays out).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use arrow::array::{Array, ArrayRef, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema};
use serde_json::{Map, Value};

use crate::error::Result;
use crate::identity::normalize::Normalisers;
use crate::identity::profiles::consent_value;
use crate::ingest::message::EventRow;
use crate::storage::schema::timestamp_type;
use crate::storage::{TableSpec, WriteMode};
use crate::workspace::Workspace;

pub const TABLE: &str = "privacy_tombstones";

pub fn spec() -> TableSpec {
    TableSpec {
        name: TABLE.into(),
        path: TABLE.into(),
        schema: Arc::new(Schema::new(vec![
            Field::new("id_hash", DataType::Utf8, false),
            Field::new("id_type", DataType::Utf8, false),
            Field::new("request_id", DataType::Utf8, false),
            Field::new("forgotten_at", timestamp_type(), false),
            Field::new("lifted_at", timestamp_type(), true),
        ])),
        partition_columns: vec![],
    }
}

/// (id_type, id_hash) rows of one request, replacing earlier rows of the same request (so a
/// re-run after a crash writes them once).
pub async fn write(
    ws: &Workspace,
    request_id: &str,
    hashes: &[(String, String)],
    at: i64,
) -> Result<()> {
    let batch = rows(request_id, hashes, at, None)?;
    ws.storage
        .write(
            &spec(),
            vec![batch],
            WriteMode::ReplaceWhere("request_id", request_id),
        )
        .await?;
    Ok(())
}

fn rows(
    request_id: &str,
    hashes: &[(String, String)],
    forgotten_at: i64,
    lifted_at: Option<&[i64]>,
) -> Result<RecordBatch> {
    let n = hashes.len();
    let text = |f: &dyn Fn(usize) -> String| {
        Arc::new(StringArray::from((0..n).map(f).collect::<Vec<_>>())) as ArrayRef
    };
    let time = |v: Vec<Option<i64>>| {
        Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC")) as ArrayRef
    };
    Ok(RecordBatch::try_new(
        spec().schema,
        vec![
            text(&|i| hashes[i].1.clone()),
            text(&|i| hashes[i].0.clone()),
            text(&|_| request_id.to_string()),
            time(vec![Some(forgotten_at); n]),
            time(match lifted_at {
                Some(l) => l.iter().map(|t| Some(*t)).collect(),
                None => vec![None; n],
            }),
        ],
    )?)
}

/// What ingestion does with a row.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Keep,
    /// A forgotten person's row: not stored, only counted.
    Suppress,
}

#[derive(Debug, Clone, Copy)]
struct State {
    forgotten_at: i64,
    /// Rows at or after this time are kept (new consent after the erasure).
    lifted_from: Option<i64>,
}

/// The tombstones of a workspace, loaded once per ingest.
pub struct Tombstones {
    salt: Vec<u8>,
    normalisers: Option<Normalisers>,
    by_hash: HashMap<String, State>,
    trait_ids: Vec<String>,
    /// Trait keys that carry consent.
    consent_keys: Vec<String>,
    overrides: bool,
    /// Tombstones lifted by rows of this ingest: (type, hash) -> from when.
    lifts: Mutex<BTreeMap<(String, String), i64>>,
}

impl Tombstones {
    /// No tombstones: everything is kept.
    pub fn none() -> Tombstones {
        Tombstones {
            salt: Vec::new(),
            normalisers: None,
            by_hash: HashMap::new(),
            trait_ids: Vec::new(),
            consent_keys: Vec::new(),
            overrides: false,
            lifts: Mutex::new(BTreeMap::new()),
        }
    }

    /// The workspace's tombstones (none when nobody was ever forgotten).
    pub async fn load(ws: &Workspace) -> Result<Tombstones> {
        let rows = crate::identity::query_table(
            ws,
            &spec(),
            "select id_hash, cast(forgotten_at as bigint), cast(lifted_at as bigint) from t",
        )
        .await?;
        if rows.is_empty() {
            return Ok(Tombstones::none());
        }
        let mut by_hash: HashMap<String, State> = HashMap::new();
        for r in rows {
            let forgotten: i64 = r[1].parse().unwrap_or(i64::MIN);
            let lifted: Option<i64> = r[2].parse().ok();
            let s = by_hash.entry(r[0].clone()).or_insert(State {
                forgotten_at: i64::MIN,
                lifted_from: None,
            });
            match lifted {
                Some(l) => s.lifted_from = Some(s.lifted_from.map_or(l, |x| x.max(l))),
                None => s.forgotten_at = s.forgotten_at.max(forgotten),
            }
        }
        // A lift counts only when it came after the latest erasure.
        for s in by_hash.values_mut() {
            if s.lifted_from.is_some_and(|l| l <= s.forgotten_at) {
                s.lifted_from = None;
            }
        }
        let config = &ws.config.identity;
        Ok(Tombstones {
            salt: super::salt(ws).await?,
            normalisers: Some(Normalisers::new(config)?),
            by_hash,
            trait_ids: config.trait_identifiers.clone(),
            consent_keys: config.consent.values().cloned().collect(),
            overrides: ws.config.privacy.new_consent_overrides,
            lifts: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// Whether an event comes from a forgotten person.
    pub fn check_event(&self, row: &EventRow<'_>) -> Verdict {
        if self.is_empty() {
            return Verdict::Keep;
        }
        let mut ids: Vec<(&str, String)> = Vec::new();
        if let Some(u) = &row.user_id {
            ids.push(("user_id", u.to_string()));
        }
        if let Some(a) = &row.anonymous_id {
            ids.push(("anonymous_id", a.to_string()));
        }
        if let Some(p) = &row.previous_id {
            ids.push(("user_id", p.to_string()));
            ids.push(("anonymous_id", p.to_string()));
        }
        let mut grants = false;
        let traits = row.traits.as_deref().and_then(object);
        let context_traits = row
            .context
            .as_deref()
            .filter(|c| c.contains("\"traits\""))
            .and_then(object)
            .and_then(|c| match c.get("traits") {
                Some(Value::Object(t)) => Some(t.clone()),
                _ => None,
            });
        for t in [traits.as_ref(), context_traits.as_ref()]
            .into_iter()
            .flatten()
        {
            for key in &self.trait_ids {
                match t.get(key) {
                    Some(Value::String(v)) => ids.push((key, v.clone())),
                    Some(Value::Number(n)) => ids.push((key, n.to_string())),
                    _ => {}
                }
            }
            grants |= self
                .consent_keys
                .iter()
                .any(|k| t.get(k).and_then(consent_value) == Some(true));
        }
        self.check(&ids, row.timestamp, grants)
    }

    /// Whether a row carrying `ids` (type, raw value) at time `at` comes from a forgotten
    /// person; `grants` says the row grants consent on some channel.
    pub fn check(&self, ids: &[(&str, String)], at: i64, grants: bool) -> Verdict {
        let Some(normalisers) = &self.normalisers else {
            return Verdict::Keep;
        };
        let mut hit: Vec<(String, String, State)> = Vec::new();
        for (ty, raw) in ids {
            let Ok(v) = normalisers.normalise(ty, raw) else {
                continue;
            };
            let h = super::hash_identifier(&self.salt, ty, &v);
            if let Some(s) = self.by_hash.get(&h) {
                hit.push((ty.to_string(), h, *s));
            }
        }
        let blocked: Vec<&(String, String, State)> = hit
            .iter()
            .filter(|(_, _, s)| s.lifted_from.is_none_or(|l| at < l))
            .collect();
        if blocked.is_empty() {
            return Verdict::Keep;
        }
        if self.overrides && grants && blocked.iter().all(|(_, _, s)| at > s.forgotten_at) {
            let mut lifts = self.lifts.lock().expect("not poisoned");
            for (ty, h, _) in &hit {
                let e = lifts.entry((ty.clone(), h.clone())).or_insert(at);
                *e = (*e).min(at);
            }
            return Verdict::Keep;
        }
        Verdict::Suppress
    }

    /// Stores the lifts rows of this ingest caused (call after the ingest committed).
    pub async fn record_lifts(&self, ws: &Workspace) -> Result<usize> {
        let lifts: Vec<((String, String), i64)> =
            std::mem::take(&mut *self.lifts.lock().expect("not poisoned"))
                .into_iter()
                .collect();
        if lifts.is_empty() {
            return Ok(0);
        }
        let hashes: Vec<(String, String)> = lifts.iter().map(|(k, _)| k.clone()).collect();
        let times: Vec<i64> = lifts.iter().map(|(_, t)| *t).collect();
        let now = chrono::Utc::now().timestamp_micros();
        let request = super::log::request_id("lift");
        let batch = rows(&request, &hashes, now, Some(&times))?;
        ws.storage
            .write(&spec(), vec![batch], WriteMode::Append)
            .await?;
        for (_, h) in &hashes {
            super::log::append(
                ws,
                &super::log::Entry {
                    logged_at: now,
                    request_id: request.clone(),
                    action: "lift".into(),
                    identifier_hash: h.clone(),
                    reason: Some("new consent after erasure".into()),
                    outcome: "tombstone lifted".into(),
                    details: None,
                },
            )
            .await?;
        }
        Ok(lifts.len())
    }

    /// Whether the hash of (type, normalised value) is tombstoned now.
    pub fn holds(&self, id_type: &str, value: &str) -> bool {
        let h = super::hash_identifier(&self.salt, id_type, value);
        self.by_hash
            .get(&h)
            .is_some_and(|s| s.lifted_from.is_none())
    }
}

fn object(text: &str) -> Option<Map<String, Value>> {
    match serde_json::from_str(text) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    }
}

/// A string column's value at `row`, if any (for record checks).
pub fn cell(array: &StringArray, row: usize) -> Option<&str> {
    (!array.is_null(row)).then(|| array.value(row))
}
