//! Whom a gossip round talks to. Pure logic: the caller hands in the random source.
//!
//! Each round a node exchanges with `fanout` peers picked uniformly at random among every
//! node it knows of (alive or not: that is how it learns that a node is back), plus a
//! seed now and then while it knows too few nodes to have joined properly. A node's first
//! round talks to every node and seed it knows, so that a (re)started node is heard of
//! everywhere at once.

use rand::seq::IndexedRandom;
use rand::Rng;

/// A peer to exchange with: its address, and its id when known (seeds are only addresses).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub id: Option<String>,
    pub addr: String,
}

/// The peers of one round: `fanout` of `known`, or all of them (and every seed) on the
/// `first` round; a random seed is added when `known` has fewer than two nodes (alone, or
/// knowing one peer that may be gone) or, one round in ten, to heal a split view.
pub fn choose(
    known: &[Peer],
    seeds: &[String],
    fanout: usize,
    first: bool,
    rng: &mut impl Rng,
) -> Vec<Peer> {
    let seed_peers = seeds
        .iter()
        .filter(|s| !known.iter().any(|k| &k.addr == *s))
        .map(|s| Peer {
            id: None,
            addr: s.clone(),
        });
    if first {
        return known.iter().cloned().chain(seed_peers).collect();
    }
    let mut chosen: Vec<Peer> = known.choose_multiple(rng, fanout).cloned().collect();
    let unseeded: Vec<Peer> = seed_peers.collect();
    if (known.len() < 2 || rng.random_ratio(1, 10)) && !unseeded.is_empty() {
        chosen.extend(unseeded.choose(rng).cloned());
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gossip::state::{Entry, Status, View};
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn peers(n: usize) -> Vec<Peer> {
        (0..n)
            .map(|i| Peer {
                id: Some(format!("n{i}")),
                addr: format!("h:{i}"),
            })
            .collect()
    }

    #[test]
    fn fanout_distinct_peers_and_everyone_on_the_first_round() {
        let mut rng = StdRng::seed_from_u64(1);
        let known = peers(4);
        for _ in 0..100 {
            let c = choose(&known, &[], 2, false, &mut rng);
            assert_eq!(c.len(), 2);
            assert_ne!(c[0], c[1]);
        }
        let seeds = vec!["h:0".to_owned(), "seed:9".to_owned()];
        let c = choose(&known, &seeds, 2, true, &mut rng);
        assert_eq!(c.len(), 5, "every node, and the seed not among them");
        let alone = choose(&[], &seeds, 2, false, &mut rng);
        assert_eq!(alone.len(), 1, "a node alone asks a seed");
    }

    fn entry(i: usize) -> Entry {
        Entry {
            generation: 1,
            heartbeat: 0,
            node_id: format!("n{i}"),
            addr: format!("h:{i}"),
            client_addr: String::new(),
            zone: None,
            incarnation: 1,
            status: Status::Alive,
            map_version: 0,
        }
    }

    /// Rounds until a change made on one node of `s` (all knowing each other) is on
    /// every node, with `fanout` push-pull exchanges per node per round. In a round every
    /// node exchanges in turn, in random order, as independent timers do.
    fn rounds_to_spread(s: usize, fanout: usize, rng: &mut StdRng) -> usize {
        let mut views: Vec<View> = (0..s)
            .map(|_| {
                let mut v = View::default();
                v.merge((0..s).map(entry));
                v
            })
            .collect();
        let mut changed = entry(0);
        changed.heartbeat = 1;
        views[0].merge([changed.clone()]);
        let known = |i: usize| -> Vec<Peer> {
            peers(s)
                .into_iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| p)
                .collect()
        };
        for round in 1..=20 {
            let mut order: Vec<usize> = (0..s).collect();
            rand::seq::SliceRandom::shuffle(order.as_mut_slice(), rng);
            for i in order {
                for p in choose(&known(i), &[], fanout, false, rng) {
                    let j: usize = p.addr[2..].parse().unwrap();
                    let pushed: Vec<Entry> = views[i].entries().cloned().collect();
                    views[j].merge(pushed.iter().cloned());
                    let pulled = views[j].newer_than(&pushed);
                    views[i].merge(pulled);
                }
            }
            if views.iter().all(|v| v.get("n0") == Some(&changed)) {
                return round;
            }
        }
        panic!("no spread in 20 rounds");
    }

    /// The figure the design aims at: a change reaches every node of five within three
    /// rounds. Measured over many random schedules; prints the distribution.
    #[test]
    fn a_change_reaches_five_nodes_within_three_rounds() {
        let mut rng = StdRng::seed_from_u64(16);
        let trials = 10_000;
        let mut histogram = [0usize; 21];
        for _ in 0..trials {
            histogram[rounds_to_spread(5, 2, &mut rng)] += 1;
        }
        let worst = histogram.iter().rposition(|&n| n > 0).unwrap();
        println!("rounds to reach 5 nodes (fanout 2), of {trials}: {histogram:?}");
        assert!(worst <= 3, "worst case {worst} rounds: {histogram:?}");
        let mut fanout_one = [0usize; 21];
        for _ in 0..trials {
            fanout_one[rounds_to_spread(5, 1, &mut rng)] += 1;
        }
        println!("rounds to reach 5 nodes (fanout 1), of {trials}: {fanout_one:?}");
    }
}
