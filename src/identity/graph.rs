//! The identity graph: every usable identifier of every sighting becomes a node (by type and
//! normalised value), and the identifiers of one sighting are linked, each to the strongest of
//! them. Skipped values are counted by type and reason and join nothing.

use std::borrow::Cow;
use std::collections::BTreeMap;

use foldhash::{HashMap, HashMapExt};
use hashbrown::HashTable;

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
    /// The node of each (type, normalised value).
    index: Index,
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
            index: Index::new(),
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
        (self.types.len() - 1) as u16
    }

    /// The node of a normalised identifier, if it is in the graph.
    pub fn find(&self, ty: &str, value: &str) -> Option<u32> {
        let t = self.types.iter().position(|x| x == ty)? as u16;
        self.index.find(&self.nodes, t, value)
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

    fn node(&mut self, ty: u16, value: &str, s: &Sighting, bit: u64) -> u32 {
        let h = self.index.hash(ty, value);
        let table = &mut self.index.shards[shard_of(h)];
        upsert(&mut self.nodes, table, h, ty, value, s, bit)
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

/// Number of shards of the node index (a power of two): enough for every core to number
/// identifiers on its own, few enough that each shard's table stays large.
const SHARDS: usize = 64;

fn shard_of(hash: u64) -> usize {
    (hash >> (64 - SHARDS.trailing_zeros())) as usize
}

/// The node of each (type, value), sharded by hash. Entries hold their hash, so that a table
/// grows without reading the nodes.
struct Index {
    state: foldhash::fast::FixedState,
    shards: Vec<HashTable<(u64, u32)>>,
}

impl Index {
    fn new() -> Index {
        Index {
            state: foldhash::fast::FixedState::with_seed(0x7269_6265),
            shards: (0..SHARDS).map(|_| HashTable::new()).collect(),
        }
    }

    fn hash(&self, ty: u16, value: &str) -> u64 {
        use std::hash::BuildHasher;
        self.state.hash_one((ty, value))
    }

    fn find(&self, nodes: &[Node], ty: u16, value: &str) -> Option<u32> {
        let h = self.hash(ty, value);
        lookup(&self.shards[shard_of(h)], nodes, h, ty, value)
    }
}

/// The node of (`ty`, `value`) with hash `h` in one shard's `table` over `nodes`.
fn lookup(
    table: &HashTable<(u64, u32)>,
    nodes: &[Node],
    h: u64,
    ty: u16,
    value: &str,
) -> Option<u32> {
    table
        .find(h, |&(_, n)| {
            let node = &nodes[n as usize];
            node.ty == ty && *node.value == *value
        })
        .map(|&(_, n)| n)
}

/// The node of (`ty`, `value`) seen in sighting `s` of source `bit`: the existing one, now also
/// seen there, or a new one.
fn upsert(
    nodes: &mut Vec<Node>,
    table: &mut HashTable<(u64, u32)>,
    h: u64,
    ty: u16,
    value: &str,
    s: &Sighting,
    bit: u64,
) -> u32 {
    if let Some(n) = lookup(table, nodes, h, ty, value) {
        let node = &mut nodes[n as usize];
        node.first_seen = node.first_seen.min(s.first_seen);
        node.last_seen = node.last_seen.max(s.last_seen);
        node.sources |= bit;
        return n;
    }
    let n = nodes.len() as u32;
    nodes.push(Node {
        ty,
        value: value.into(),
        first_seen: s.first_seen,
        last_seen: s.last_seen,
        sources: bit,
    });
    table.insert_unique(h, (h, n), |&(h, _)| h);
    n
}

/// Builds the graph of `sightings`.
///
/// At a million people there are millions of sightings and identifiers, so every step runs on
/// all cores: sightings are read (traits parsed, values normalised) in parallel; the
/// identifiers are then numbered per shard of their hash, each shard on its own in sighting
/// order, so the numbering is the same on every run; and each sighting's links are made in
/// parallel chunks, concatenated in order.
pub fn build(sightings: &[Sighting], config: &IdentitySection, normalisers: &Normalisers) -> Graph {
    use rayon::prelude::*;
    let mut g = Graph::new(config);
    for ty in &config.priority {
        g.type_index(ty);
    }
    // The event keys are types whether or not the data has any.
    g.type_index("user_id");
    g.type_index("anonymous_id");
    let reads: Vec<Read> = sightings
        .par_iter()
        .map(|s| read(s, config, normalisers))
        .collect();

    // Every usable identifier, flat: the ones of sighting `i` are `start[i]..start[i + 1]`.
    let mut flat = Flat::default();
    let mut start: Vec<u32> = Vec::with_capacity(sightings.len() + 1);
    let mut bits: Vec<u64> = Vec::with_capacity(sightings.len());
    g.traits.reserve_exact(sightings.len());
    for (i, (s, r)) in sightings.iter().zip(reads).enumerate() {
        start.push(flat.value.len() as u32);
        bits.push(g.source_bit(&s.source));
        for (ty, value, key) in r.ids {
            match value {
                Ok(v) => {
                    let t = g.type_index(ty);
                    flat.ty.push(t);
                    flat.value.push(v);
                    flat.key.push(key);
                    flat.sighting.push(i as u32);
                }
                Err(reason) => *g.skipped.entry((ty.to_string(), reason)).or_default() += 1,
            }
        }
        g.traits.push(r.traits);
    }
    start.push(flat.value.len() as u32);
    let hashes: Vec<u64> = (0..flat.value.len())
        .into_par_iter()
        .map(|p| g.index.hash(flat.ty[p], &flat.value[p]))
        .collect();

    // Numbering: which positions fall in each shard, in order (chunks of positions listed in
    // parallel, then read chunk by chunk), then each shard numbers its own values.
    const CHUNK: usize = 1 << 16;
    let listed: Vec<Vec<Vec<u32>>> = hashes
        .par_chunks(CHUNK)
        .enumerate()
        .map(|(c, chunk)| {
            let mut per_shard = vec![Vec::new(); SHARDS];
            for (k, h) in chunk.iter().enumerate() {
                per_shard[shard_of(*h)].push((c * CHUNK + k) as u32);
            }
            per_shard
        })
        .collect();
    let shards: Vec<ShardNodes> = (0..SHARDS)
        .into_par_iter()
        .map(|shard| {
            let mut out = ShardNodes::default();
            for &p in listed.iter().flat_map(|chunk| chunk[shard].iter()) {
                let i = flat.sighting[p as usize] as usize;
                let (ty, value) = (flat.ty[p as usize], &flat.value[p as usize]);
                let h = hashes[p as usize];
                let local = upsert(
                    &mut out.nodes,
                    &mut out.table,
                    h,
                    ty,
                    value,
                    &sightings[i],
                    bits[i],
                );
                out.numbered.push((p, local));
            }
            out
        })
        .collect();
    drop(hashes);
    drop(listed);
    let mut node_of = vec![0u32; flat.value.len()];
    let mut offset = 0u32;
    g.nodes
        .reserve_exact(shards.iter().map(|s| s.nodes.len()).sum());
    for (shard, mut out) in shards.into_iter().enumerate() {
        for (p, local) in out.numbered {
            node_of[p as usize] = offset + local;
        }
        for entry in out.table.iter_mut() {
            entry.1 += offset;
        }
        offset += out.nodes.len() as u32;
        g.nodes.append(&mut out.nodes);
        g.index.shards[shard] = out.table;
    }
    drop(flat.value);

    // Links, in parallel chunks of sightings.
    let chunks: Vec<Linked> = (0..sightings.len().div_ceil(CHUNK))
        .into_par_iter()
        .map(|c| {
            let chunk = c * CHUNK..((c + 1) * CHUNK).min(sightings.len());
            let mut out = Linked::default();
            let mut ids = Vec::new();
            for i in chunk {
                let range = start[i] as usize..start[i + 1] as usize;
                let mut k = (None, None);
                for p in range.clone() {
                    match flat.key[p] {
                        Key::User => k.0 = Some(node_of[p]),
                        Key::Anonymous => k.1 = Some(node_of[p]),
                        Key::Other => {}
                    }
                }
                out.keys.push(k);
                // An alias is linked once, with its previous id, in the pass below.
                if sightings[i].previous_id.is_some() {
                    out.owners.push(None);
                    continue;
                }
                ids.clear();
                ids.extend_from_slice(&node_of[range]);
                let at = sightings[i].first_seen;
                out.owners.push(link_ids(&g, &mut ids, at, &mut out.links));
            }
            out
        })
        .collect();
    g.owner.reserve_exact(sightings.len());
    g.keys.reserve_exact(sightings.len());
    g.links
        .reserve_exact(chunks.iter().map(|c| c.links.len()).sum::<usize>() + sightings.len() / 8);
    for mut c in chunks {
        g.owner.append(&mut c.owners);
        g.keys.append(&mut c.keys);
        g.links.append(&mut c.links);
    }

    // An alias's previous id is an earlier user id when one is known by that value, else an
    // anonymous id; this needs every user id seen, hence the second pass.
    for (i, s) in sightings.iter().enumerate() {
        let Some(prev) = s.previous_id.as_deref() else {
            continue;
        };
        let ty = match normalisers.normalise("user_id", prev) {
            Ok(v) if g.find("user_id", &v).is_some() => "user_id",
            _ => "anonymous_id",
        };
        let mut ids = node_of[start[i] as usize..start[i + 1] as usize].to_vec();
        match normalisers.normalise(ty, prev) {
            Ok(v) => {
                let t = g.type_index(ty);
                ids.push(g.node(t, &v, s, bits[i]));
            }
            Err(reason) => *g.skipped.entry((ty.to_string(), reason)).or_default() += 1,
        }
        let mut links = Vec::new();
        g.owner[i] = link_ids(&g, &mut ids, s.first_seen, &mut links);
        g.links.append(&mut links);
    }
    g.links.par_sort_unstable();
    g
}

/// The usable identifiers of all sightings, one column per field.
#[derive(Default)]
struct Flat {
    ty: Vec<u16>,
    value: Vec<String>,
    key: Vec<Key>,
    sighting: Vec<u32>,
}

/// The owners, keys and links of one chunk of sightings.
#[derive(Default)]
struct Linked {
    owners: Vec<Option<u32>>,
    keys: Vec<(Option<u32>, Option<u32>)>,
    links: Vec<Link>,
}

/// One shard's nodes (numbered from 0), its index, and the node of each of its positions
/// (position, node).
#[derive(Default)]
struct ShardNodes {
    nodes: Vec<Node>,
    table: HashTable<(u64, u32)>,
    numbered: Vec<(u32, u32)>,
}

/// Links every identifier of one sighting (`ids`) to its strongest, into `links`; returns the
/// strongest.
fn link_ids(g: &Graph, ids: &mut Vec<u32>, at: i64, links: &mut Vec<Link>) -> Option<u32> {
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
        links.push(Link { rank, at, a, b });
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::sightings::Kind;
    use std::collections::BTreeSet;

    fn sighting(i: u64) -> Sighting {
        Sighting {
            kind: Kind::Event,
            source: ["web", "app", "pos"][(i % 3) as usize].into(),
            user_id: i.is_multiple_of(2).then(|| format!("u{}", i % 50_000)),
            anonymous_id: Some(format!(" a{} ", i % 70_000)),
            // Always a user id some sighting has (every even number below 50,000).
            previous_id: (i % 9_999 == 1).then(|| format!("u{}", 2 * (i % 25_000))),
            message_id: None,
            external_ids: Vec::new(),
            traits: None,
            context_traits: None,
            consent: None,
            first_seen: (i * 7919 % 1_000_003) as i64,
            last_seen: (i * 7919 % 1_000_003) as i64 + 5,
            count: 1,
        }
    }

    /// More sightings than one chunk, values in every shard: each value is one node with the
    /// times and sources of all its sightings, each sighting is owned by its strongest
    /// identifier and linked to it, and building again numbers everything the same.
    #[test]
    fn a_graph_of_many_chunks_agrees_with_a_plain_count() {
        let config = IdentitySection::default();
        let normalisers = Normalisers::new(&config).unwrap();
        let sightings: Vec<Sighting> = (0..200_000).map(sighting).collect();
        let g = build(&sightings, &config, &normalisers);

        type Want<'a> = BTreeMap<(&'static str, String), (i64, i64, BTreeSet<&'a str>)>;
        fn see<'a>(want: &mut Want<'a>, ty: &'static str, value: String, s: &'a Sighting) {
            let e = want
                .entry((ty, value))
                .or_insert((i64::MAX, i64::MIN, BTreeSet::new()));
            e.0 = e.0.min(s.first_seen);
            e.1 = e.1.max(s.last_seen);
            e.2.insert(s.source.as_str());
        }
        let mut want = Want::new();
        for s in &sightings {
            if let Some(u) = &s.user_id {
                see(&mut want, "user_id", u.clone(), s);
            }
            see(
                &mut want,
                "anonymous_id",
                s.anonymous_id.as_ref().unwrap().trim().to_string(),
                s,
            );
        }
        // Every previous id names a user id that some sighting has.
        for s in sightings.iter().filter(|s| s.previous_id.is_some()) {
            see(&mut want, "user_id", s.previous_id.clone().unwrap(), s);
        }
        assert_eq!(g.nodes.len(), want.len());
        let texts = g.source_texts(g.nodes.iter().map(|n| n.sources));
        for (n, node) in g.nodes.iter().enumerate() {
            let ty = g.types[node.ty as usize].as_str();
            let (first, last, sources) = &want[&(ty, node.value.to_string())];
            assert_eq!(
                (node.first_seen, node.last_seen),
                (*first, *last),
                "{ty} {}",
                node.value
            );
            let names: Vec<&str> = sources.iter().copied().collect();
            assert_eq!(texts[&node.sources], names.join(","));
            assert_eq!(g.find(ty, &node.value), Some(n as u32));
        }

        let value = |n: Option<u32>| n.map(|n| g.nodes[n as usize].value.to_string());
        let mut links = 0;
        for (i, s) in sightings.iter().enumerate() {
            let anonymous = s.anonymous_id.as_ref().map(|a| a.trim().to_string());
            assert_eq!(value(g.keys[i].0), s.user_id, "sighting {i}");
            assert_eq!(value(g.keys[i].1), anonymous, "sighting {i}");
            // A user id outranks an anonymous id; an alias's own user id outranks nothing
            // else of it but sorts with the previous one by value.
            let strongest = match (&s.user_id, &s.previous_id) {
                (Some(u), Some(p)) => Some(u.min(p).clone()),
                (Some(u), None) => Some(u.clone()),
                (None, Some(p)) => Some(p.clone()),
                (None, None) => anonymous,
            };
            assert_eq!(value(g.owner[i]), strongest, "sighting {i}");
            let ids = 1 + s.user_id.is_some() as usize + s.previous_id.is_some() as usize;
            let same = s.user_id.is_some() && s.user_id == s.previous_id;
            links += ids - 1 - same as usize;
        }
        assert_eq!(g.links.len(), links);
        assert!(g.links.is_sorted());
        let owners: BTreeSet<u32> = g.owner.iter().flatten().copied().collect();
        for l in &g.links {
            assert!(l.a < l.b && (owners.contains(&l.a) || owners.contains(&l.b)));
        }

        let again = build(&sightings, &config, &normalisers);
        let numbered = |g: &Graph| -> Vec<(u16, String)> {
            g.nodes
                .iter()
                .map(|n| (n.ty, n.value.to_string()))
                .collect()
        };
        assert_eq!(numbered(&g), numbered(&again));
        assert_eq!(g.links, again.links);
        assert_eq!(g.owner, again.owner);
    }
}
