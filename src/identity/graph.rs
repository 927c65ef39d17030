//! The identity graph: every usable identifier of every sighting becomes a node (by type and
//! normalised value), and the identifiers of one sighting are linked, each to the strongest of
//! them. Skipped values are counted by type and reason and join nothing.

use std::borrow::Cow;
use std::collections::BTreeMap;

use foldhash::{HashMap, HashMapExt};

use serde_json::{Map, Value};

use crate::config::IdentitySection;
use crate::identity::normalize::{Normalisers, Skip};
use crate::identity::sightings::Sighting;
use crate::identity::unionfind::Link;

/// One identifier.
#[derive(Debug, Clone)]
pub struct Node {
    pub ty: u16,
    pub value: Box<str>,
    pub first_seen: i64,
    pub last_seen: i64,
    /// Bit `i` set: seen in source `i` of [`Graph::sources`] (the last bit stands for the rest).
    pub sources: u64,
}

/// Nodes, links and what was skipped.
pub struct Graph {
    /// Identifier type names; a node's `ty` indexes this.
    pub types: Vec<String>,
    /// Priority rank per type (0 is strongest).
    pub rank: Vec<u16>,
    pub nodes: Vec<Node>,
    pub links: Vec<Link>,
    /// The strongest identifier of each sighting: the one its events and traits belong to.
    pub owner: Vec<Option<u32>>,
    /// Each sighting's `traits`, parsed once for identifiers and again used for profiles.
    pub traits: Vec<Option<Map<String, Value>>>,
    /// For each sighting, its user id and anonymous id nodes (for event lookups).
    pub keys: Vec<(Option<u32>, Option<u32>)>,
    pub sources: Vec<String>,
    /// Skipped raw values by (type, reason).
    pub skipped: BTreeMap<(String, Skip), u64>,
    /// Per type, the node of each normalised value.
    index: Vec<HashMap<Box<str>, u32>>,
    priority: Vec<String>,
}

impl Graph {
    fn new(config: &IdentitySection) -> Graph {
        Graph {
            types: Vec::new(),
            rank: Vec::new(),
            nodes: Vec::new(),
            links: Vec::new(),
            owner: Vec::new(),
            traits: Vec::new(),
            keys: Vec::new(),
            sources: Vec::new(),
            skipped: BTreeMap::new(),
            index: Vec::new(),
            priority: config.priority.clone(),
        }
    }

    /// The index of an identifier type, registering it on first use.
    pub fn type_index(&mut self, name: &str) -> u16 {
        if let Some(i) = self.types.iter().position(|t| t == name) {
            return i as u16;
        }
        let rank = self
            .priority
            .iter()
            .position(|p| p == name)
            .unwrap_or(self.priority.len());
        self.types.push(name.to_string());
        self.rank.push(rank as u16);
        self.index.push(HashMap::new());
        (self.types.len() - 1) as u16
    }

    /// The node of a normalised identifier, if it is in the graph.
    pub fn find(&self, ty: &str, value: &str) -> Option<u32> {
        let t = self.types.iter().position(|x| x == ty)?;
        self.index[t].get(value).copied()
    }

    fn source_bit(&mut self, source: &str) -> u64 {
        let i = match self.sources.iter().position(|s| s == source) {
            Some(i) => i,
            None => {
                self.sources.push(source.to_string());
                self.sources.len() - 1
            }
        };
        1u64 << i.min(63)
    }

    fn node(&mut self, ty: u16, value: String, s: &Sighting, bit: u64) -> u32 {
        if let Some(&id) = self.index[ty as usize].get(value.as_str()) {
            let n = &mut self.nodes[id as usize];
            n.first_seen = n.first_seen.min(s.first_seen);
            n.last_seen = n.last_seen.max(s.last_seen);
            n.sources |= bit;
            return id;
        }
        let id = self.nodes.len() as u32;
        let value = value.into_boxed_str();
        self.nodes.push(Node {
            ty,
            value: value.clone(),
            first_seen: s.first_seen,
            last_seen: s.last_seen,
            sources: bit,
        });
        self.index[ty as usize].insert(value, id);
        id
    }

    /// Each distinct source set of `sets` as its sorted, comma-separated source names. There
    /// are few distinct sets, and millions of nodes and profiles that carry one.
    pub fn source_texts(&self, sets: impl IntoIterator<Item = u64>) -> HashMap<u64, String> {
        let mut texts = HashMap::new();
        for bits in sets {
            texts.entry(bits).or_insert_with(|| {
                let mut names: Vec<&str> = (0..self.sources.len())
                    .filter(|&i| bits & (1u64 << i.min(63)) != 0)
                    .map(|i| self.sources[i].as_str())
                    .collect();
                names.sort_unstable();
                names.join(",")
            });
        }
        texts
    }
}

/// Builds the graph of `sightings`.
pub fn build(sightings: &[Sighting], config: &IdentitySection, normalisers: &Normalisers) -> Graph {
    let mut g = Graph::new(config);
    for ty in &config.priority {
        g.type_index(ty);
    }
    // The event keys are types whether or not the data has any.
    g.type_index("user_id");
    g.type_index("anonymous_id");
    // Sized up front: at a million people these hold millions of entries.
    g.owner.reserve_exact(sightings.len());
    g.traits.reserve_exact(sightings.len());
    g.keys.reserve_exact(sightings.len());
    g.nodes.reserve(sightings.len());
    g.links.reserve(sightings.len());
    // Parsing traits and normalising values is most of the work and needs no graph: done on
    // every core first, then the nodes are numbered in sighting order.
    let reads: Vec<Read> = {
        use rayon::prelude::*;
        sightings
            .par_iter()
            .map(|s| read(s, config, normalisers))
            .collect()
    };
    let mut aliases = Vec::new();
    for (i, (s, r)) in sightings.iter().zip(reads).enumerate() {
        let bit = g.source_bit(&s.source);
        let mut ids: Vec<u32> = Vec::with_capacity(r.ids.len());
        let mut keys = (None, None);
        for (ty, value, key) in r.ids {
            match value {
                Ok(v) => {
                    let t = g.type_index(ty);
                    let id = g.node(t, v, s, bit);
                    match key {
                        Key::User => keys.0 = Some(id),
                        Key::Anonymous => keys.1 = Some(id),
                        Key::Other => {}
                    }
                    ids.push(id);
                }
                Err(reason) => *g.skipped.entry((ty.to_string(), reason)).or_default() += 1,
            }
        }
        g.traits.push(r.traits);
        if s.previous_id.is_some() {
            aliases.push((i, ids.clone()));
        }
        let owner = link_all(&mut g, &mut ids, s.first_seen);
        g.owner.push(owner);
        g.keys.push(keys);
    }
    // An alias's previous id is an earlier user id when one is known by that value, else an
    // anonymous id; this needs every user id seen, hence the second pass.
    for (i, mut ids) in aliases {
        let s = &sightings[i];
        let prev = s.previous_id.as_deref().expect("alias sightings have one");
        let bit = g.source_bit(&s.source);
        let ty = match normalisers.normalise("user_id", prev) {
            Ok(v) if g.find("user_id", &v).is_some() => "user_id",
            _ => "anonymous_id",
        };
        match normalisers.normalise(ty, prev) {
            Ok(v) => {
                let t = g.type_index(ty);
                let id = g.node(t, v, s, bit);
                ids.push(id);
                let owner = link_all(&mut g, &mut ids, s.first_seen);
                g.owner[i] = owner;
            }
            Err(reason) => *g.skipped.entry((ty.to_string(), reason)).or_default() += 1,
        }
    }
    g.links.sort_unstable();
    g
}

/// Links every identifier of one sighting to its strongest; returns the strongest.
fn link_all(g: &mut Graph, ids: &mut Vec<u32>, at: i64) -> Option<u32> {
    ids.sort_unstable_by(|a, b| {
        let (na, nb) = (&g.nodes[*a as usize], &g.nodes[*b as usize]);
        (g.rank[na.ty as usize], &na.value).cmp(&(g.rank[nb.ty as usize], &nb.value))
    });
    ids.dedup();
    let (&head, rest) = ids.split_first()?;
    for &other in rest {
        let rank = g.rank[g.nodes[other as usize].ty as usize];
        let (a, b) = if head < other {
            (head, other)
        } else {
            (other, head)
        };
        g.links.push(Link { rank, at, a, b });
    }
    Some(head)
}

/// What one sighting says: its parsed traits and its identifiers as (type, normalised value
/// or why it was skipped, whether it is the sighting's own user or anonymous id).
struct Read<'a> {
    traits: Option<Map<String, Value>>,
    ids: Vec<(&'a str, Result<String, Skip>, Key)>,
}

/// Whether an identifier is the `userId` or `anonymousId` of its sighting (the keys its events
/// are found by), or another one.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Key {
    User,
    Anonymous,
    Other,
}

fn read<'a>(s: &'a Sighting, config: &'a IdentitySection, normalisers: &Normalisers) -> Read<'a> {
    let traits = s.traits.as_deref().and_then(object);
    let mut raw = Vec::new();
    collect_raw(s, traits.as_ref(), config, &mut raw);
    let ids = raw
        .into_iter()
        .map(|(ty, value)| {
            let key = if ty == "user_id" && s.user_id.as_deref() == Some(&*value) {
                Key::User
            } else if ty == "anonymous_id" && s.anonymous_id.as_deref() == Some(&*value) {
                Key::Anonymous
            } else {
                Key::Other
            };
            (ty, normalisers.normalise(ty, &value), key)
        })
        .collect();
    Read { traits, ids }
}

/// The raw (type, value) identifiers a sighting carries; `traits` is its parsed `traits`.
fn collect_raw<'a>(
    s: &'a Sighting,
    traits: Option<&Map<String, Value>>,
    config: &'a IdentitySection,
    out: &mut Vec<(&'a str, Cow<'a, str>)>,
) {
    if let Some(u) = &s.user_id {
        out.push(("user_id", Cow::Borrowed(u)));
    }
    if let Some(a) = &s.anonymous_id {
        out.push(("anonymous_id", Cow::Borrowed(a)));
    }
    out.extend(
        s.external_ids
            .iter()
            .map(|(t, v)| (t.as_str(), Cow::Borrowed(v.as_str()))),
    );
    let context = s.context_traits.as_deref().and_then(object);
    for traits in [traits, context.as_ref()].into_iter().flatten() {
        for key in &config.trait_identifiers {
            match traits.get(key) {
                Some(Value::String(v)) => out.push((key, Cow::Owned(v.clone()))),
                Some(Value::Number(n)) => out.push((key, Cow::Owned(n.to_string()))),
                _ => {}
            }
        }
    }
}

/// A JSON object from text; anything else is no object.
pub fn object(text: &str) -> Option<Map<String, Value>> {
    match serde_json::from_str(text) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    }
}
