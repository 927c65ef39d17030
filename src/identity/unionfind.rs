//! Connected components of the identity graph under per-type limits: union-find (union by
//! size, path halving) that refuses a union when the joined component would hold more
//! identifiers of a limited type than allowed. Links are taken strongest first, so a refused
//! link is always the weaker one.

/// A link between two identifiers, ordered for processing: strongest rank first, then the
/// earliest seen, then by node for determinism.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Link {
    /// Priority rank of the weaker identifier type of the two (0 is strongest).
    pub rank: u16,
    /// When the link was first seen (microseconds).
    pub at: i64,
    pub a: u32,
    pub b: u32,
}

/// A link that was not made, and the type whose limit it would have broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub link: Link,
    pub limited_type: u16,
}

/// The result: a component representative per node, and the links refused.
pub struct Components {
    pub root: Vec<u32>,
    pub refused: Vec<Refused>,
}

/// Computes components of `types.len()` nodes (node `i` has identifier type `types[i]`) over
/// `links`, which must be sorted. `limits` holds (type, most identifiers of it per component).
pub fn components(types: &[u16], links: &[Link], limits: &[(u16, u32)]) -> Components {
    let n = types.len();
    let k = limits.len();
    let mut parent: Vec<u32> = (0..n as u32).collect();
    let mut size: Vec<u32> = vec![1; n];
    // Per root: how many identifiers of each limited type the component holds.
    let mut counts: Vec<u32> = vec![0; n * k];
    for (i, ty) in types.iter().enumerate() {
        for (j, (limited, _)) in limits.iter().enumerate() {
            if ty == limited {
                counts[i * k + j] = 1;
            }
        }
    }
    let mut refused = Vec::new();
    for link in links {
        let ra = find(&mut parent, link.a);
        let rb = find(&mut parent, link.b);
        if ra == rb {
            continue;
        }
        let (ra, rb) = (ra as usize, rb as usize);
        let broken = (0..k).find(|&j| counts[ra * k + j] + counts[rb * k + j] > limits[j].1);
        if let Some(j) = broken {
            refused.push(Refused {
                link: *link,
                limited_type: limits[j].0,
            });
            continue;
        }
        let (big, small) = if size[ra] >= size[rb] {
            (ra, rb)
        } else {
            (rb, ra)
        };
        parent[small] = big as u32;
        size[big] += size[small];
        for j in 0..k {
            counts[big * k + j] += counts[small * k + j];
        }
    }
    let root = (0..n as u32).map(|i| find(&mut parent, i)).collect();
    Components { root, refused }
}

fn find(parent: &mut [u32], mut x: u32) -> u32 {
    while parent[x as usize] != x {
        let grand = parent[parent[x as usize] as usize];
        parent[x as usize] = grand;
        x = grand;
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(rank: u16, at: i64, a: u32, b: u32) -> Link {
        Link { rank, at, a, b }
    }

    #[test]
    fn links_connect_transitively() {
        let types = [0, 1, 1, 2, 2];
        let mut links = vec![link(1, 0, 0, 1), link(1, 0, 1, 3), link(2, 0, 2, 4)];
        links.sort();
        let c = components(&types, &links, &[]);
        assert_eq!(c.root[0], c.root[3]);
        assert_eq!(c.root[2], c.root[4]);
        assert_ne!(c.root[0], c.root[2]);
        assert!(c.refused.is_empty());
    }

    #[test]
    fn a_limit_refuses_the_later_weaker_link() {
        // Two user ids (type 0) seen on one shared device (type 2).
        let types = [0, 0, 2];
        let mut links = vec![link(2, 20, 1, 2), link(2, 10, 0, 2)];
        links.sort();
        let c = components(&types, &links, &[(0, 1)]);
        assert_eq!(c.root[0], c.root[2]);
        assert_ne!(c.root[1], c.root[2]);
        assert_eq!(c.refused.len(), 1);
        assert_eq!((c.refused[0].link.a, c.refused[0].limited_type), (1, 0));
    }

    #[test]
    fn stronger_links_win_over_earlier_weaker_ones() {
        // user 0 - email 1 (rank 1, late) must beat device 2 linking email 1 to user 3 earlier.
        let types = [0, 1, 2, 0];
        let mut links = vec![link(2, 0, 2, 3), link(2, 1, 1, 2), link(1, 50, 0, 1)];
        links.sort();
        let c = components(&types, &links, &[(0, 1)]);
        assert_eq!(c.root[0], c.root[1]);
        assert_ne!(c.root[1], c.root[3]);
    }
}
