//! Unified profiles: per component, its identifiers summarised (primary user id, e-mail and
//! phone, first and last seen, sources), its traits merged field by field under the configured
//! rule, and consent per channel (the latest statement wins).

use std::borrow::Cow;
use std::collections::BTreeMap;

use foldhash::{HashMap, HashMapExt};

use serde_json::Value;

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
    /// The sources its identifiers were seen in, sorted and comma-separated.
    pub sources: String,
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

const LATEST: MergeRule = MergeRule::Simple(SimpleRule::Latest);

/// One trait value a sighting states for a profile: (profile, field, sighting, value).
type Stated<'a> = (u32, u32, u32, &'a Value);

/// Builds the profiles of all components. `id_of_root` gives each component root's profile id.
///
/// Profiles are kept in a dense vector indexed through their root node, and trait values are
/// gathered into one flat list sorted by (profile, field): at a million profiles, a map per
/// profile and field cost more in allocation than the merge itself.
pub fn build(
    g: &Graph,
    root: &[u32],
    id_of_root: &HashMap<u32, String>,
    sightings: &[Sighting],
    config: &IdentitySection,
) -> Vec<Profile> {
    let mut index_of_root = vec![u32::MAX; g.nodes.len()];
    let mut profiles: Vec<Profile> = Vec::new();
    let mut source_bits: Vec<u64> = Vec::new();
    // The summary identifiers: the most recently seen user id, e-mail and phone.
    let summary: Vec<Option<u16>> = ["user_id", "email", "phone"]
        .iter()
        .map(|name| g.types.iter().position(|t| t == name).map(|i| i as u16))
        .collect();
    let mut primary: Vec<[Option<(i64, &str)>; 3]> = Vec::new();
    let anon = g
        .types
        .iter()
        .position(|t| t == "anonymous_id")
        .map(|i| i as u16);
    for (n, node) in g.nodes.iter().enumerate() {
        let r = root[n];
        if index_of_root[r as usize] == u32::MAX {
            index_of_root[r as usize] = profiles.len() as u32;
            profiles.push(Profile {
                id: id_of_root[&r].clone(),
                is_known: false,
                user_id: None,
                email: None,
                phone: None,
                identifiers: 0,
                first_seen: i64::MAX,
                last_seen: i64::MIN,
                events: 0,
                sources: String::new(),
                consent: BTreeMap::new(),
                traits: BTreeMap::new(),
            });
            source_bits.push(0);
            primary.push([None; 3]);
        }
        let i = index_of_root[r as usize] as usize;
        let p = &mut profiles[i];
        p.identifiers += 1;
        p.first_seen = p.first_seen.min(node.first_seen);
        p.last_seen = p.last_seen.max(node.last_seen);
        p.is_known |= Some(node.ty) != anon;
        source_bits[i] |= node.sources;
        for (k, ty) in summary.iter().enumerate() {
            if *ty == Some(node.ty) {
                let cand = (node.last_seen, &*node.value);
                if primary[i][k].is_none_or(|best| best < cand) {
                    primary[i][k] = Some(cand);
                }
            }
        }
    }
    let source_texts = g.source_texts(source_bits.iter().copied());
    for (i, p) in profiles.iter_mut().enumerate() {
        let [user, email, phone] = primary[i].map(|v| v.map(|(_, s)| s.to_string()));
        (p.user_id, p.email, p.phone) = (user, email, phone);
        p.sources = source_texts[&source_bits[i]].clone();
    }

    // Traits and consent, from the sightings each profile owns.
    let consent_key: HashMap<&str, &str> = config
        .consent
        .iter()
        .map(|(channel, key)| (key.as_str(), channel.as_str()))
        .collect();
    let mut fields: HashMap<&str, u32> = HashMap::new();
    let mut field_names: Vec<&str> = Vec::new();
    let mut stated: Vec<Stated> = Vec::new();
    let mut consents: Vec<(u32, Cow<str>, u32, bool)> = Vec::new();
    // When a profile's events happened: the times records were loaded say less about a person.
    let mut seen: Vec<Option<(i64, i64)>> = vec![None; profiles.len()];
    for (s_i, s) in sightings.iter().enumerate() {
        let Some(owner) = g.owner[s_i] else { continue };
        let p = index_of_root[root[owner as usize] as usize];
        if s.kind == Kind::Event {
            profiles[p as usize].events += s.count;
            let span = seen[p as usize].get_or_insert((i64::MAX, i64::MIN));
            *span = (span.0.min(s.first_seen), span.1.max(s.last_seen));
        }
        let consent = s.consent.as_deref().and_then(object);
        for (channel, v) in consent.into_iter().flatten() {
            if let Some(b) = consent_value(&v) {
                consents.push((p, Cow::Owned(channel), s_i as u32, b));
            }
        }
        let Some(t) = &g.traits[s_i] else {
            continue;
        };
        for (field, value) in t {
            if value.is_null() {
                continue;
            }
            if let Some(channel) = consent_key.get(field.as_str()) {
                if let Some(b) = consent_value(value) {
                    consents.push((p, Cow::Borrowed(*channel), s_i as u32, b));
                }
                continue;
            }
            let next = field_names.len() as u32;
            let f = *fields.entry(field.as_str()).or_insert_with(|| {
                field_names.push(field.as_str());
                next
            });
            stated.push((p, f, s_i as u32, value));
        }
    }
    stated.sort_unstable_by_key(|e| (e.0, e.1));
    for group in stated.chunk_by(|a, b| (a.0, a.1) == (b.0, b.1)) {
        let field = field_names[group[0].1 as usize];
        let rule = config.traits.get(field).unwrap_or(&LATEST);
        if let Some(v) = merge(rule, group, sightings) {
            profiles[group[0].0 as usize]
                .traits
                .insert(field.to_string(), v.clone());
        }
    }
    for (p, span) in seen.into_iter().enumerate() {
        if let Some((first, last)) = span {
            (profiles[p].first_seen, profiles[p].last_seen) = (first, last);
        }
    }
    // Consent per channel: the statement that overrides all others.
    for (p, channel, s_i, granted) in consents {
        let s = &sightings[s_i as usize];
        let stated = Consent {
            granted,
            at: s.last_seen,
            source: s.source.clone(),
        };
        let channels = &mut profiles[p as usize].consent;
        match channels.get_mut(channel.as_ref()) {
            Some(slot) if stated.overrides(slot) => *slot = stated,
            Some(_) => {}
            None => {
                channels.insert(channel.into_owned(), stated);
            }
        }
    }
    profiles.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    profiles
}

/// The value `rule` picks from the statements of one profile's field. Ties in time are broken
/// by the value's JSON text, so that the outcome never depends on reading order; the text is
/// only made when times tie.
fn merge<'a>(rule: &MergeRule, group: &[Stated<'a>], sightings: &[Sighting]) -> Option<&'a Value> {
    let sighting = |e: &Stated| &sightings[e.2 as usize];
    // Statements by (time, text); equal ones hold the same value, so which one wins is moot.
    let by = |time: fn(&Sighting) -> i64| {
        move |a: &&Stated<'a>, b: &&Stated<'a>| {
            time(sighting(a))
                .cmp(&time(sighting(b)))
                .then_with(|| a.3.to_string().cmp(&b.3.to_string()))
        }
    };
    let latest = by(|s| s.last_seen);
    match rule {
        MergeRule::Simple(SimpleRule::Latest) => group.iter().max_by(latest).map(|e| e.3),
        MergeRule::Simple(SimpleRule::First) => {
            group.iter().min_by(by(|s| s.first_seen)).map(|e| e.3)
        }
        MergeRule::Simple(SimpleRule::MostFrequent) => {
            let mut counts: HashMap<String, (i64, i64, &Value)> = HashMap::new();
            for e in group {
                let s = sighting(e);
                let c = counts.entry(e.3.to_string()).or_insert((0, i64::MIN, e.3));
                c.0 += s.count;
                c.1 = c.1.max(s.last_seen);
            }
            counts
                .into_iter()
                .max_by(|a, b| (a.1.0, a.1.1, &a.0).cmp(&(b.1.0, b.1.1, &b.0)))
                .map(|(_, (_, _, v))| v)
        }
        MergeRule::Sources { sources } => {
            // The latest value of the first-ranked source that has one.
            let rank = |e: &Stated| {
                let name = &sighting(e).source;
                sources
                    .iter()
                    .position(|x| x == name)
                    .unwrap_or(sources.len())
            };
            group
                .iter()
                .max_by(|a, b| rank(b).cmp(&rank(a)).then_with(|| latest(a, b)))
                .map(|e| e.3)
        }
    }
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
    serde_json::to_string(&p.traits).expect("JSON values serialise")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sighting(source: &str, first: i64, last: i64, count: i64) -> Sighting {
        Sighting {
            kind: Kind::Event,
            source: source.into(),
            user_id: None,
            anonymous_id: None,
            previous_id: None,
            message_id: None,
            external_ids: Vec::new(),
            traits: None,
            context_traits: None,
            consent: None,
            first_seen: first,
            last_seen: last,
            count,
        }
    }

    #[test]
    fn merge_rules_pick_by_time_then_text_whatever_the_order() {
        let s = [
            sighting("web", 1, 5, 1),
            sighting("crm", 2, 5, 1),
            sighting("web", 1, 3, 3),
            sighting("pos", 0, 9, 1),
        ];
        let (a, b, c, d) = (
            Value::from("a"),
            Value::from("b"),
            Value::from("c"),
            Value::from("d"),
        );
        let group: Vec<Stated> = vec![(0, 0, 0, &b), (0, 0, 1, &a), (0, 0, 2, &c), (0, 0, 3, &d)];
        let mut reversed = group.clone();
        reversed.reverse();
        let rule = |r: SimpleRule| MergeRule::Simple(r);
        let sources = MergeRule::Sources {
            sources: vec!["crm".into(), "web".into()],
        };
        for g in [&group, &reversed] {
            assert_eq!(merge(&rule(SimpleRule::Latest), g, &s), Some(&d));
            assert_eq!(merge(&rule(SimpleRule::First), g, &s), Some(&d));
            assert_eq!(merge(&rule(SimpleRule::MostFrequent), g, &s), Some(&c));
            assert_eq!(merge(&sources, g, &s), Some(&a));
        }
        // Without the POS value, sightings 0 and 2 tie on the earliest time; "b" < "c".
        let first = rule(SimpleRule::First);
        assert_eq!(merge(&first, &group[..3], &s), Some(&b));
        assert_eq!(merge(&first, &[group[2], group[1], group[0]], &s), Some(&b));
        // Latest among 0 and 1 ties at time 5: the larger text wins, in either order.
        assert_eq!(merge(&rule(SimpleRule::Latest), &group[..2], &s), Some(&b));
        assert_eq!(
            merge(&rule(SimpleRule::Latest), &[group[1], group[0]], &s),
            Some(&b)
        );
        // No ranked source: the latest of the unranked ones.
        assert_eq!(merge(&sources, &[group[3]], &s), Some(&d));
    }

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
