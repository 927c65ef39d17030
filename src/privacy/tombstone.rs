//! Tombstones: the salted hashes of a forgotten person's identifiers, in `privacy_tombstones`.
//! Ingestion (files and the collector alike) checks every event and record against them, so
//! that re-ingesting old data or new events from the same identifiers does not bring the
//! person back. With `[privacy] new_consent_overrides = true`, a message or record dated after
//! the erasure that grants consent on some channel is kept, and lifts the tombstone of its
//! identifiers from that time on (for the ingests that follow; older data stays out).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use arrow::array::RecordBatch;
use arrow::datatypes::Field;
use serde_json::Value;

use crate::error::Result;
use crate::identity::graph::object;
use crate::identity::normalize::Normalisers;
use crate::identity::profiles::consent_value;
use crate::identity::tables::{self, text, ts};
use crate::ingest::message::EventRow;
use crate::storage::schema::timestamp_type;
use crate::storage::{TableSpec, WriteMode};
use crate::workspace::Workspace;

pub const TABLE: &str = "privacy_tombstones";

pub fn spec() -> TableSpec {
    tables::spec(
        TABLE,
        vec![
            text("id_hash", false),
            text("id_type", false),
            text("request_id", false),
            Field::new("forgotten_at", timestamp_type(), false),
            ts("lifted_at"),
        ],
        &[],
    )
}

/// (id_type, id_hash) rows of one request, replacing earlier rows of the same request (so a
/// re-run after a crash writes them once).
pub async fn write(
    ws: &Workspace,
    request_id: &str,
    hashes: &[(String, String)],
    at: i64,
) -> Result<()> {
    let batch = rows(request_id, hashes, at, &vec![None; hashes.len()])?;
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
    lifted_at: &[Option<i64>],
) -> Result<RecordBatch> {
    tables::rows(
        &spec(),
        vec![
            tables::strings(hashes.iter().map(|(_, h)| Some(h.as_str()))),
            tables::strings(hashes.iter().map(|(t, _)| Some(t.as_str()))),
            tables::strings(hashes.iter().map(|_| Some(request_id))),
            tables::times(hashes.iter().map(|_| Some(forgotten_at)))?,
            tables::times(lifted_at.iter().copied())?,
        ],
    )
}

/// What ingestion does with a row.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Keep,
    /// A forgotten person's row: not stored, only counted.
    Suppress,
}

/// One tombstoned identifier.
#[derive(Debug, Clone, Copy)]
pub struct State {
    pub forgotten_at: i64,
    /// Rows at or after this time are kept (new consent after the erasure).
    pub lifted_from: Option<i64>,
}

/// The tombstones of a workspace, loaded once per ingest (and per collector flush).
pub struct Tombstones {
    salt: Vec<u8>,
    normalisers: Option<Normalisers>,
    /// By raw SHA-256 digest: the check hashes every identifier of every row, so it skips
    /// the hex text the tables store.
    by_digest: HashMap<[u8; 32], State>,
    trait_ids: Vec<String>,
    /// Trait keys that carry consent.
    consent_keys: Vec<String>,
    overrides: bool,
    /// Tombstones lifted by rows of this ingest: (type, hex hash) -> from when.
    lifts: Mutex<BTreeMap<(String, String), i64>>,
}

impl Tombstones {
    /// No tombstones: everything is kept.
    pub fn none() -> Tombstones {
        Tombstones {
            salt: Vec::new(),
            normalisers: None,
            by_digest: HashMap::new(),
            trait_ids: Vec::new(),
            consent_keys: Vec::new(),
            overrides: false,
            lifts: Mutex::new(BTreeMap::new()),
        }
    }

    /// Tombstones from (hex hash, state) pairs, checked under the workspace's identity rules.
    pub fn new(
        salt: Vec<u8>,
        config: &crate::config::Config,
        states: impl IntoIterator<Item = (String, State)>,
    ) -> Result<Tombstones> {
        let mut by_digest = HashMap::new();
        for (hash, state) in states {
            let mut digest = [0u8; 32];
            if hex::decode_to_slice(&hash, &mut digest).is_ok() {
                by_digest.insert(digest, state);
            }
        }
        Ok(Tombstones {
            salt,
            normalisers: Some(Normalisers::new(&config.identity)?),
            by_digest,
            trait_ids: config.identity.trait_identifiers.clone(),
            consent_keys: config.identity.consent.values().cloned().collect(),
            overrides: config.privacy.new_consent_overrides,
            lifts: Mutex::new(BTreeMap::new()),
        })
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
        let mut states: HashMap<String, State> = HashMap::new();
        for r in rows {
            let s = states.entry(r[0].clone()).or_insert(State {
                forgotten_at: i64::MIN,
                lifted_from: None,
            });
            match r[2].parse::<i64>() {
                Ok(l) => s.lifted_from = Some(s.lifted_from.map_or(l, |x| x.max(l))),
                Err(_) => s.forgotten_at = s.forgotten_at.max(r[1].parse().unwrap_or(i64::MIN)),
            }
        }
        // A lift counts only when it came after the latest erasure.
        for s in states.values_mut() {
            if s.lifted_from.is_some_and(|l| l <= s.forgotten_at) {
                s.lifted_from = None;
            }
        }
        Tombstones::new(super::salt(ws).await?, &ws.config, states)
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// Whether an event comes from a forgotten person.
    pub fn check_event(&self, row: &EventRow<'_>) -> Verdict {
        if self.is_empty() {
            return Verdict::Keep;
        }
        let traits = row.traits.as_deref().and_then(object);
        let context = row
            .context
            .as_deref()
            .filter(|c| c.contains("\"traits\""))
            .and_then(object);
        let context_traits = match context.as_ref().and_then(|c| c.get("traits")) {
            Some(Value::Object(t)) => Some(t),
            _ => None,
        };
        let mut numbers: Vec<(&str, String)> = Vec::new();
        let mut ids: Vec<(&str, &str)> = Vec::new();
        let mut grants = false;
        for t in [traits.as_ref(), context_traits].into_iter().flatten() {
            for key in &self.trait_ids {
                match t.get(key) {
                    Some(Value::String(v)) => ids.push((key, v)),
                    Some(Value::Number(n)) => numbers.push((key, n.to_string())),
                    _ => {}
                }
            }
            grants |= self
                .consent_keys
                .iter()
                .any(|k| t.get(k).and_then(consent_value) == Some(true));
        }
        ids.extend(numbers.iter().map(|(k, v)| (*k, v.as_str())));
        if let Some(u) = &row.user_id {
            ids.push(("user_id", u));
        }
        if let Some(a) = &row.anonymous_id {
            ids.push(("anonymous_id", a));
        }
        if let Some(p) = &row.previous_id {
            ids.push(("user_id", p));
            ids.push(("anonymous_id", p));
        }
        self.check(&ids, row.timestamp, grants)
    }

    /// Whether a row carrying `ids` (type, raw value) at time `at` comes from a forgotten
    /// person; `grants` says the row grants consent on some channel.
    pub fn check(&self, ids: &[(&str, &str)], at: i64, grants: bool) -> Verdict {
        let Some(normalisers) = &self.normalisers else {
            return Verdict::Keep;
        };
        let mut hit: Vec<(&str, [u8; 32], State)> = Vec::new();
        for (ty, raw) in ids {
            let Ok(v) = normalisers.normalise(ty, raw) else {
                continue;
            };
            let digest = super::digest(&self.salt, ty, &v);
            if let Some(s) = self.by_digest.get(&digest) {
                hit.push((ty, digest, *s));
            }
        }
        let blocked: Vec<&State> = hit
            .iter()
            .map(|(_, _, s)| s)
            .filter(|s| s.lifted_from.is_none_or(|l| at < l))
            .collect();
        if blocked.is_empty() {
            return Verdict::Keep;
        }
        if self.overrides && grants && blocked.iter().all(|s| at > s.forgotten_at) {
            let mut lifts = self.lifts.lock().expect("not poisoned");
            for (ty, digest, _) in &hit {
                let e = lifts
                    .entry((ty.to_string(), hex::encode(digest)))
                    .or_insert(at);
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
        let times: Vec<Option<i64>> = lifts.iter().map(|(_, t)| Some(*t)).collect();
        let now = chrono::Utc::now().timestamp_micros();
        let request = super::log::request_id("lift");
        let batch = rows(&request, &hashes, now, &times)?;
        ws.storage
            .write(&spec(), vec![batch], WriteMode::Append)
            .await?;
        let entries: Vec<super::log::Entry> = hashes
            .iter()
            .map(|(_, h)| super::log::Entry {
                logged_at: now,
                request_id: request.clone(),
                action: "lift".into(),
                identifier_hash: h.clone(),
                reason: Some("new consent after erasure".into()),
                outcome: "tombstone lifted".into(),
                details: None,
            })
            .collect();
        super::log::append(ws, &entries).await?;
        Ok(lifts.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stones(overrides: bool) -> Tombstones {
        let mut config = crate::config::Config::default();
        config
            .identity
            .consent
            .insert("email".into(), "email_opt_in".into());
        config.privacy.new_consent_overrides = overrides;
        let hash = super::super::hash_identifier(b"salt", "email", "ana@example.com");
        let state = State {
            forgotten_at: 100,
            lifted_from: None,
        };
        Tombstones::new(b"salt".to_vec(), &config, [(hash, state)]).unwrap()
    }

    #[test]
    fn identifiers_are_normalised_before_they_are_checked() {
        let t = stones(false);
        assert_eq!(
            t.check(&[("email", " Ana@Example.COM ")], 50, false),
            Verdict::Suppress
        );
        assert_eq!(
            t.check(&[("email", "bob@example.com")], 50, false),
            Verdict::Keep
        );
        assert_eq!(
            t.check(&[("user_id", "ana@example.com")], 50, false),
            Verdict::Keep
        );
    }

    #[test]
    fn new_consent_overrides_only_when_the_policy_says_so_and_only_after_the_erasure() {
        let id = [("email", "ana@example.com")];
        assert_eq!(stones(false).check(&id, 200, true), Verdict::Suppress);
        let t = stones(true);
        assert_eq!(
            t.check(&id, 50, true),
            Verdict::Suppress,
            "dated before the erasure"
        );
        assert_eq!(t.check(&id, 200, false), Verdict::Suppress, "no consent");
        assert_eq!(t.check(&id, 200, true), Verdict::Keep);
        assert_eq!(t.lifts.lock().unwrap().len(), 1);
    }
}
