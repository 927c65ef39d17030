//! Unified profiles: per component, its identifiers summarised (primary user id, e-mail and
//! phone, first and last seen, sources), its traits merged field by field under the configured
//! rule, and consent per channel (the latest statement wins).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{Map, Value};

use crate::config::{IdentitySection, MergeRule, SimpleRule};
use crate::identity::graph::{Graph, object};
use crate::identity::sightings::{Kind, Sighting};

/// One unified profile.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub id: String,
    pub is_known: bool,
    pub user_id: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub identifiers: i64,
    pub first_seen: i64,
    pub last_seen: i64,
    pub events: i64,
    pub sources: BTreeSet<String>,
    pub consent: BTreeMap<String, Consent>,
    pub traits: BTreeMap<String, Value>,
}

/// A profile's consent on one channel: its latest statement, when and where it was made.
#[derive(Debug, Clone, PartialEq)]
pub struct Consent {
    pub granted: bool,
    /// Microseconds since the epoch.
    pub at: i64,
    /// The event source, record source, or `privacy` (the command) that stated it.
    pub source: String,
}

impl Consent {
    /// Whether this statement replaces `other`: the later one wins; at the same time a denial
    /// wins, then the smaller source name, so the outcome never depends on reading order.
    pub fn overrides(&self, other: &Consent) -> bool {
        fn key(c: &Consent) -> (i64, bool, std::cmp::Reverse<&str>) {
            (c.at, !c.granted, std::cmp::Reverse(c.source.as_str()))
        }
        key(self) > key(other)
    }
}

/// Everything known about one trait field of one profile, as the field's rule needs it.
#[derive(Default)]
struct Acc {
    latest: Option<(i64, String, Value)>,
    first: Option<(i64, String, Value)>,
    counts: HashMap<String, (i64, i64, Value)>,
    by_source: HashMap<String, (i64, String, Value)>,
}

impl Acc {
    fn add(&mut self, rule: &MergeRule, value: Value, s: &Sighting) {
        let text = value.to_string();
        match rule {
            MergeRule::Simple(SimpleRule::Latest) => {
                let cand = (s.last_seen, text, value);
                if self
                    .latest
                    .as_ref()
                    .is_none_or(|l| (l.0, &l.1) < (cand.0, &cand.1))
                {
                    self.latest = Some(cand);
                }
            }
            MergeRule::Simple(SimpleRule::First) => {
                let cand = (s.first_seen, text, value);
                if self
                    .first
                    .as_ref()
                    .is_none_or(|f| (f.0, &f.1) > (cand.0, &cand.1))
                {
                    self.first = Some(cand);
                }
            }
            MergeRule::Simple(SimpleRule::MostFrequent) => {
                let e = self.counts.entry(text).or_insert((0, i64::MIN, value));
                e.0 += s.count;
                e.1 = e.1.max(s.last_seen);
            }
            MergeRule::Sources { .. } => {
                let cand = (s.last_seen, text, value);
                let e = self.by_source.entry(s.source.clone());
                let slot = e.or_insert_with(|| (i64::MIN, String::new(), Value::Null));
                if (slot.0, &slot.1) < (cand.0, &cand.1) {
                    *slot = cand;
                }
            }
        }
    }

    fn value(self, rule: &MergeRule) -> Option<Value> {
        match rule {
            MergeRule::Simple(SimpleRule::Latest) => self.latest.map(|l| l.2),
            MergeRule::Simple(SimpleRule::First) => self.first.map(|f| f.2),
            MergeRule::Simple(SimpleRule::MostFrequent) => self
                .counts
                .into_iter()
                .max_by(|a, b| (a.1.0, a.1.1, &a.0).cmp(&(b.1.0, b.1.1, &b.0)))
                .map(|(_, (_, _, v))| v),
            MergeRule::Sources { sources } => {
                let rank = |s: &str| sources.iter().position(|x| x == s).unwrap_or(sources.len());
                self.by_source
                    .into_iter()
                    .min_by(|(sa, a), (sb, b)| {
                        (rank(sa), std::cmp::Reverse((a.0, &a.1)))
                            .cmp(&(rank(sb), std::cmp::Reverse((b.0, &b.1))))
                    })
                    .map(|(_, (_, _, v))| v)
            }
        }
    }
}

const LATEST: MergeRule = MergeRule::Simple(SimpleRule::Latest);

/// Builds the profiles of all components. `id_of` gives a node's profile id.
pub fn build(
    g: &Graph,
    root: &[u32],
    id_of_root: &HashMap<u32, String>,
    sightings: &[Sighting],
    config: &IdentitySection,
) -> Vec<Profile> {
    let mut by_root: HashMap<u32, Profile> = HashMap::new();
    let mut primary: HashMap<(u32, u16), (i64, &str)> = HashMap::new();
    let anon = g
        .types
        .iter()
        .position(|t| t == "anonymous_id")
        .map(|i| i as u16);
    for (n, node) in g.nodes.iter().enumerate() {
        let r = root[n];
        let p = by_root.entry(r).or_insert_with(|| Profile {
            id: id_of_root[&r].clone(),
            is_known: false,
            user_id: None,
            email: None,
            phone: None,
            identifiers: 0,
            first_seen: i64::MAX,
            last_seen: i64::MIN,
            events: 0,
            sources: BTreeSet::new(),
            consent: BTreeMap::new(),
            traits: BTreeMap::new(),
        });
        p.identifiers += 1;
        p.first_seen = p.first_seen.min(node.first_seen);
        p.last_seen = p.last_seen.max(node.last_seen);
        p.is_known |= Some(node.ty) != anon;
        p.sources
            .extend(g.source_names(node).into_iter().map(String::from));
        let slot = primary.entry((r, node.ty)).or_insert((i64::MIN, ""));
        if (slot.0, slot.1) < (node.last_seen, &*node.value) {
            *slot = (node.last_seen, &node.value);
        }
    }
    for ((r, ty), (_, value)) in primary {
        let p = by_root.get_mut(&r).expect("profile exists");
        match g.types[ty as usize].as_str() {
            "user_id" => p.user_id = Some(value.to_string()),
            "email" => p.email = Some(value.to_string()),
            "phone" => p.phone = Some(value.to_string()),
            _ => {}
        }
    }

    // Traits and consent, from the sightings each profile owns.
    let consent_key: HashMap<&str, &str> = config
        .consent
        .iter()
        .map(|(channel, key)| (key.as_str(), channel.as_str()))
        .collect();
    let mut traits: HashMap<u32, BTreeMap<String, Acc>> = HashMap::new();
    let mut consent: HashMap<u32, BTreeMap<String, Consent>> = HashMap::new();
    // When a profile's events happened: the times records were loaded say less about a person.
    let mut seen: HashMap<u32, (i64, i64)> = HashMap::new();
    for (i, s) in sightings.iter().enumerate() {
        let Some(owner) = g.owner[i] else { continue };
        let r = root[owner as usize];
        if s.kind == Kind::Event {
            by_root.get_mut(&r).expect("profile exists").events += s.count;
            let span = seen.entry(r).or_insert((i64::MAX, i64::MIN));
            *span = (span.0.min(s.first_seen), span.1.max(s.last_seen));
        }
        let mut state = |channel: &str, v: &Value| {
            if let Some(b) = consent_value(v) {
                let stated = Consent {
                    granted: b,
                    at: s.last_seen,
                    source: s.source.clone(),
                };
                let channels = consent.entry(r).or_default();
                match channels.get_mut(channel) {
                    Some(slot) if stated.overrides(slot) => *slot = stated,
                    Some(_) => {}
                    None => {
                        channels.insert(channel.to_string(), stated);
                    }
                }
            }
        };
        if let Some(c) = s.consent.as_deref().and_then(object) {
            for (channel, v) in &c {
                state(channel, v);
            }
        }
        let Some(t) = &g.traits[i] else {
            continue;
        };
        for (field, value) in t {
            if value.is_null() {
                continue;
            }
            if let Some(channel) = consent_key.get(field.as_str()) {
                state(channel, value);
                continue;
            }
            let rule = config.traits.get(field).unwrap_or(&LATEST);
            traits
                .entry(r)
                .or_default()
                .entry(field.clone())
                .or_default()
                .add(rule, value.clone(), s);
        }
    }
    for (r, fields) in traits {
        let p = by_root.get_mut(&r).expect("profile exists");
        for (field, acc) in fields {
            let rule = config.traits.get(&field).unwrap_or(&LATEST);
            if let Some(v) = acc.value(rule) {
                p.traits.insert(field, v);
            }
        }
    }
    for (r, (first, last)) in seen {
        let p = by_root.get_mut(&r).expect("profile exists");
        (p.first_seen, p.last_seen) = (first, last);
    }
    for (r, channels) in consent {
        let p = by_root.get_mut(&r).expect("profile exists");
        p.consent = channels;
    }
    let mut profiles: Vec<Profile> = by_root.into_values().collect();
    profiles.sort_by(|a, b| a.id.cmp(&b.id));
    profiles
}

/// Reads a consent statement: booleans, and the usual spellings of yes and no.
pub fn consent_value(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => n.as_i64().map(|i| i != 0),
        Value::String(s) => match s.trim().to_lowercase().as_str() {
            "true" | "yes" | "y" | "1" | "opt-in" | "opt_in" | "optin" | "subscribed"
            | "granted" => Some(true),
            "false" | "no" | "n" | "0" | "opt-out" | "opt_out" | "optout" | "unsubscribed"
            | "denied" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// The merged traits as a JSON object (for the `traits` column).
pub fn traits_json(p: &Profile) -> String {
    let map: Map<String, Value> = p.traits.clone().into_iter().collect();
    Value::Object(map).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_consent_wins_and_a_denial_wins_a_tie() {
        let c = |granted, at, source: &str| Consent {
            granted,
            at,
            source: source.into(),
        };
        assert!(c(true, 2, "web").overrides(&c(false, 1, "crm")));
        assert!(!c(true, 1, "web").overrides(&c(false, 2, "crm")));
        assert!(c(false, 1, "web").overrides(&c(true, 1, "crm")));
        assert!(!c(true, 1, "crm").overrides(&c(false, 1, "web")));
        assert!(c(true, 1, "crm").overrides(&c(true, 1, "web")));
        assert!(!c(true, 1, "web").overrides(&c(true, 1, "crm")));
    }
}
