//! Stable profile ids. A component keeps the id its identifiers had before; when it now holds
//! the identifiers of several earlier profiles, the oldest id survives and the others are
//! recorded as merged into it. When an earlier profile's identifiers end up in several
//! components (after a rule change), the component holding most of them keeps the id and the
//! others are recorded as split off. New components get an id derived from their earliest
//! identifier, so the same data gives the same ids.

use foldhash::{HashMap, HashMapExt, HashSet};

use crate::identity::graph::Graph;

/// A merge or split between profile ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub from: String,
    pub into: String,
    pub kind: &'static str,
    pub reason: String,
}

/// The profile id of each component root, and the merges and splits against the earlier ids.
pub struct Assignment {
    pub id_of_root: HashMap<u32, String>,
    pub changes: Vec<Change>,
}

/// Assigns ids to the components (`root` per node) given each node's earlier id, if any.
/// `taken` are ids in use by profiles outside the graph (an incremental run computes only some
/// of them), which a new id must not repeat.
pub fn assign(
    g: &Graph,
    root: &[u32],
    old: &[Option<u32>],
    old_ids: &[String],
    taken: Option<&Taken>,
) -> Assignment {
    // The canonical key of a component: its earliest identifier.
    let key = |n: u32| {
        let node = &g.nodes[n as usize];
        (
            node.first_seen,
            g.types[node.ty as usize].as_str(),
            &*node.value,
        )
    };
    // Indexed by root node; `NONE` for nodes that are no root.
    const NONE: u32 = u32::MAX;
    let mut earliest: Vec<u32> = vec![NONE; g.nodes.len()];
    for n in 0..g.nodes.len() as u32 {
        let e = &mut earliest[root[n as usize] as usize];
        if *e == NONE || key(n) < key(*e) {
            *e = n;
        }
    }
    // Per earlier id: its nodes per component (as (earlier id, component, count), sorted),
    // and its age (earliest first sight). Earlier ids are dense indexes into `old_ids`.
    let mut age: Vec<i64> = vec![i64::MAX; old_ids.len()];
    let mut pairs: Vec<(u32, u32)> = Vec::with_capacity(old.len());
    for (n, o) in old.iter().enumerate() {
        if let Some(o) = *o {
            pairs.push((o, root[n]));
            age[o as usize] = age[o as usize].min(g.nodes[n].first_seen);
        }
    }
    pairs.sort_unstable();
    let mut spread: Vec<(u32, u32, u32)> = Vec::new();
    for (o, r) in pairs {
        match spread.last_mut() {
            Some(last) if (last.0, last.1) == (o, r) => last.2 += 1,
            _ => spread.push((o, r, 1)),
        }
    }
    // The component an earlier id stays with: most of its identifiers, then the earliest.
    let mut main_of: Vec<u32> = vec![NONE; old_ids.len()];
    let mut claimants: HashMap<u32, Vec<u32>> = HashMap::new();
    for comps in spread.chunk_by(|a, b| a.0 == b.0) {
        let o = comps[0].0;
        let main = comps
            .iter()
            .max_by(|(_, ra, ca), (_, rb, cb)| {
                ca.cmp(cb)
                    .then_with(|| key(earliest[*rb as usize]).cmp(&key(earliest[*ra as usize])))
            })
            .map(|(_, r, _)| *r)
            .expect("an earlier id has at least one node");
        main_of[o as usize] = main;
        claimants.entry(main).or_default().push(o);
    }
    let mut used = Taken::default();
    for id in old_ids {
        used.insert(id);
    }
    let is_taken = |id: &str| taken.is_some_and(|t| t.contains(id));
    let mut id_of_root: HashMap<u32, String> = HashMap::new();
    let mut changes = Vec::new();
    let mut roots: Vec<u32> = (0..g.nodes.len() as u32)
        .filter(|&r| earliest[r as usize] != NONE)
        .collect();
    roots.sort_by_cached_key(|&r| key(earliest[r as usize]));
    for r in &roots {
        let id = match claimants.get_mut(r) {
            Some(list) => {
                list.sort_by(|a, b| {
                    (age[*a as usize], &old_ids[*a as usize])
                        .cmp(&(age[*b as usize], &old_ids[*b as usize]))
                });
                let winner = old_ids[list[0] as usize].clone();
                for o in &list[1..] {
                    changes.push(Change {
                        from: old_ids[*o as usize].clone(),
                        into: winner.clone(),
                        kind: "merge",
                        reason: String::new(),
                    });
                }
                winner
            }
            None => new_id(g, earliest[*r as usize], &mut used, &is_taken),
        };
        id_of_root.insert(*r, id);
    }
    // Parts of earlier profiles that now live elsewhere.
    let mut splits: Vec<(u32, u32)> = spread
        .iter()
        .filter(|&&(o, r, _)| r != main_of[o as usize])
        .map(|&(o, r, _)| (o, r))
        .collect();
    splits.sort_unstable_by(|a, b| {
        (&old_ids[a.0 as usize], &id_of_root[&a.1])
            .cmp(&(&old_ids[b.0 as usize], &id_of_root[&b.1]))
    });
    for (o, r) in splits {
        changes.push(Change {
            from: old_ids[o as usize].clone(),
            into: id_of_root[&r].clone(),
            kind: "split",
            reason:
                "identifiers of this profile are no longer linked (rules changed or data removed)"
                    .into(),
        });
    }
    explain_merges(g, root, old, old_ids, &mut changes);
    Assignment {
        id_of_root,
        changes,
    }
}

fn new_id(g: &Graph, earliest: u32, used: &mut Taken, is_taken: &impl Fn(&str) -> bool) -> String {
    let node = &g.nodes[earliest as usize];
    let mut salt = 0u32;
    loop {
        let text = format!(
            "{}\u{0}{}\u{0}{salt}",
            g.types[node.ty as usize], node.value
        );
        let n = xxhash_rust::xxh3::xxh3_64(text.as_bytes());
        let id = made_text(n);
        if !is_taken(&id) && used.insert_made(n) {
            return id;
        }
        salt += 1;
    }
}

/// Names, for each merge, a link that joined the two earlier profiles.
fn explain_merges(
    g: &Graph,
    root: &[u32],
    old: &[Option<u32>],
    old_ids: &[String],
    changes: &mut [Change],
) {
    let wanted: HashMap<(&str, &str), usize> = changes
        .iter()
        .enumerate()
        .filter(|(_, c)| c.kind == "merge")
        .map(|(i, c)| ((c.from.as_str(), c.into.as_str()), i))
        .collect();
    if wanted.is_empty() {
        return;
    }
    let mut reasons: HashMap<usize, String> = HashMap::new();
    for link in &g.links {
        let (a, b) = (link.a as usize, link.b as usize);
        let (Some(oa), Some(ob)) = (old[a], old[b]) else {
            continue;
        };
        if oa == ob || root[a] != root[b] {
            continue;
        }
        let (ia, ib) = (old_ids[oa as usize].as_str(), old_ids[ob as usize].as_str());
        let hit = wanted.get(&(ia, ib)).or_else(|| wanted.get(&(ib, ia)));
        if let Some(&i) = hit {
            reasons.entry(i).or_insert_with(|| {
                let describe =
                    |n: usize| format!("{} {}", g.types[g.nodes[n].ty as usize], g.nodes[n].value);
                format!("{} seen with {}", describe(a), describe(b))
            });
        }
    }
    for (i, c) in changes.iter_mut().enumerate() {
        if c.kind == "merge" {
            c.reason = reasons
                .remove(&i)
                .unwrap_or_else(|| "linked through other identifiers".into());
        }
    }
}

/// A set of profile ids. Ids this engine made (`p_` and 16 hex digits) are kept as their
/// number: a million profiles' ids, with millions of repeats in `identities`, go into the set
/// in a fraction of the time strings take.
#[derive(Default)]
pub struct Taken<'a> {
    made: HashSet<u64>,
    other: HashSet<&'a str>,
}

impl<'a> Taken<'a> {
    pub fn insert(&mut self, id: &'a str) {
        match made_id(id) {
            Some(n) => self.made.insert(n),
            None => self.other.insert(id),
        };
    }

    /// Adds the id `made_text(n)`; false when it was in the set already.
    fn insert_made(&mut self, n: u64) -> bool {
        self.made.insert(n)
    }

    pub fn contains(&self, id: &str) -> bool {
        match made_id(id) {
            Some(n) => self.made.contains(&n),
            None => self.other.contains(id),
        }
    }
}

/// The text of the profile id numbered `n`.
fn made_text(n: u64) -> String {
    format!("p_{n:016x}")
}

/// The number of a profile id `made_text` wrote; `None` for any other text.
fn made_id(id: &str) -> Option<u64> {
    let hex = id.strip_prefix("p_")?;
    if hex.len() != 16 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taken_ids_are_told_apart_exactly() {
        let mut taken = Taken::default();
        taken.insert("p_00000000000000ff");
        taken.insert("legacy-7");
        assert!(taken.contains("p_00000000000000ff"));
        assert!(taken.contains("legacy-7"));
        // Texts that parse to the same number but are other ids.
        assert!(!taken.contains("p_00000000000000FF"));
        assert!(!taken.contains("p_+0000000000000ff"));
        assert!(!taken.contains("p_0000000000000ff"));
        assert!(!taken.contains("p_00000000000000fe"));
        for n in [0, 255, u64::MAX] {
            assert_eq!(made_id(&made_text(n)), Some(n));
        }
        assert_eq!(made_id("p_00000000000000FF"), None);
    }
}
