//! The partition map and preference lists (Dynamo's Strategy 3).
//!
//! The 64-bit key-hash space is cut into `Q` equal partitions, `Q` a power of two fixed at
//! cluster creation. A partition is the top `log2(Q)` bits of the key hash, so partitions
//! are contiguous ranges and a node's data for one partition is one key range on disk.
//!
//! A [`PartitionMap`] is versioned by a monotonic `epoch` and names, for every partition,
//! its owner. The *preference list* of a partition is its owner followed by the owners met
//! walking the partitions clockwise, skipping nodes already listed and, where members carry
//! zones, preferring nodes of zones not yet listed. The *extended* preference list keeps
//! walking until every member is listed: sloppy quorum takes fallbacks from its tail.

use serde::{Deserialize, Serialize};

use crate::hash::key_hash;

/// A node's stable identity (for example `dynamo-0`, from the StatefulSet ordinal).
pub type NodeId = String;
/// Index of a partition, `0..Q`.
pub type PartitionId = u32;

/// Smallest allowed partition count.
pub const MIN_PARTITIONS: u32 = 16;
/// Largest allowed partition count.
pub const MAX_PARTITIONS: u32 = 4096;
/// Default partition count.
pub const DEFAULT_PARTITIONS: u32 = 256;

/// One member of the cluster as the partition map knows it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Member {
    /// Stable node id.
    pub id: NodeId,
    /// gRPC address (`host:port`) where the node serves peers and clients.
    pub addr: String,
    /// Failure zone; preference lists spread over distinct zones when these are set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

impl Member {
    /// A member without a zone.
    pub fn new(id: impl Into<NodeId>, addr: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            addr: addr.into(),
            zone: None,
        }
    }
}

/// Why a partition map is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    #[error("partition count {0} must be a power of two in {MIN_PARTITIONS}..={MAX_PARTITIONS}")]
    BadPartitionCount(u32),
    #[error("replication factor n must be at least 1")]
    ZeroReplication,
    #[error("the cluster has no members")]
    NoMembers,
    #[error("member id {0:?} is listed twice")]
    DuplicateMember(NodeId),
    #[error("the map has {got} owners for {q} partitions")]
    OwnerCount { got: usize, q: u32 },
    #[error(
        "partition {partition} is owned by member index {index}, but there are {members} members"
    )]
    BadOwner {
        partition: u32,
        index: u32,
        members: usize,
    },
}

/// Checks that `q` is an allowed partition count.
pub fn validate_partition_count(q: u32) -> Result<(), MapError> {
    if q.is_power_of_two() && (MIN_PARTITIONS..=MAX_PARTITIONS).contains(&q) {
        Ok(())
    } else {
        Err(MapError::BadPartitionCount(q))
    }
}

/// The partition holding a key hash, for `q` partitions (`q` a power of two).
pub fn partition_of_hash(hash: u64, q: u32) -> PartitionId {
    debug_assert!(q.is_power_of_two() && q >= 2);
    (hash >> (64 - q.trailing_zeros())) as PartitionId
}

/// The partition holding a key, for `q` partitions.
pub fn partition_of(key: &[u8], q: u32) -> PartitionId {
    partition_of_hash(key_hash(key), q)
}

/// A versioned assignment of partitions to members, with the preference lists it implies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMap {
    /// Monotonic version of the map; a newer map always has a larger epoch.
    pub epoch: u64,
    /// Number of partitions `Q`.
    pub partitions: u32,
    /// Replication factor `N` (length of preference lists, at most the member count).
    pub replication: u32,
    /// Members, sorted by id.
    pub members: Vec<Member>,
    /// For each partition, the index in `members` of its owner.
    pub owners: Vec<u32>,
    /// Preference lists (indices into `members`), derived from the fields above.
    #[serde(skip)]
    prefs: Vec<Vec<u32>>,
}

impl PartitionMap {
    /// Builds a map from its parts, validating them and deriving the preference lists.
    pub fn new(
        epoch: u64,
        partitions: u32,
        replication: u32,
        mut members: Vec<Member>,
        owners_by_id: &[NodeId],
    ) -> Result<Self, MapError> {
        members.sort();
        let index = |id: &NodeId| members.iter().position(|m| &m.id == id);
        let owners = owners_by_id
            .iter()
            .map(|id| index(id).map(|i| i as u32).unwrap_or(u32::MAX))
            .collect();
        Self::from_indices(epoch, partitions, replication, members, owners)
    }

    /// Builds a map whose `owners` are indices into `members` (already sorted by id).
    pub fn from_indices(
        epoch: u64,
        partitions: u32,
        replication: u32,
        members: Vec<Member>,
        owners: Vec<u32>,
    ) -> Result<Self, MapError> {
        let mut map = Self {
            epoch,
            partitions,
            replication,
            members,
            owners,
            prefs: Vec::new(),
        };
        map.validate()?;
        map.prefs = (0..partitions).map(|p| map.compute_preference(p)).collect();
        Ok(map)
    }

    /// Re-derives the preference lists after deserialization, validating the map.
    pub fn rebuild(self) -> Result<Self, MapError> {
        Self::from_indices(
            self.epoch,
            self.partitions,
            self.replication,
            self.members,
            self.owners,
        )
    }

    fn validate(&self) -> Result<(), MapError> {
        validate_partition_count(self.partitions)?;
        if self.replication == 0 {
            return Err(MapError::ZeroReplication);
        }
        if self.members.is_empty() {
            return Err(MapError::NoMembers);
        }
        for pair in self.members.windows(2) {
            if pair[0].id == pair[1].id {
                return Err(MapError::DuplicateMember(pair[0].id.clone()));
            }
        }
        if self.owners.len() != self.partitions as usize {
            return Err(MapError::OwnerCount {
                got: self.owners.len(),
                q: self.partitions,
            });
        }
        for (p, &o) in self.owners.iter().enumerate() {
            if o as usize >= self.members.len() {
                return Err(MapError::BadOwner {
                    partition: p as u32,
                    index: o,
                    members: self.members.len(),
                });
            }
        }
        Ok(())
    }

    /// Walks clockwise from `p` and lists every member once, in the order the walk meets
    /// them; members never met as owners (owning nothing) come last, in id order.
    fn walk(&self, p: PartitionId) -> Vec<u32> {
        let mut seen = vec![false; self.members.len()];
        let mut order = Vec::with_capacity(self.members.len());
        for step in 0..self.partitions {
            let owner = self.owners[((p + step) % self.partitions) as usize];
            if !seen[owner as usize] {
                seen[owner as usize] = true;
                order.push(owner);
                if order.len() == self.members.len() {
                    break;
                }
            }
        }
        order.extend((0..self.members.len() as u32).filter(|&i| !seen[i as usize]));
        order
    }

    /// The extended preference list: every member, the first `N` being the preference list.
    fn compute_preference(&self, p: PartitionId) -> Vec<u32> {
        let walk = self.walk(p);
        let zoned = self.members.iter().any(|m| m.zone.is_some());
        if !zoned {
            return walk;
        }
        // Prefer members of zones not yet listed; then fill with the rest, in walk order.
        let n = (self.replication as usize).min(walk.len());
        let mut chosen: Vec<u32> = Vec::with_capacity(walk.len());
        let mut zones: Vec<&Option<String>> = Vec::new();
        for &m in &walk {
            let zone = &self.members[m as usize].zone;
            if chosen.len() < n && !zones.contains(&zone) {
                zones.push(zone);
                chosen.push(m);
            }
        }
        for &m in &walk {
            if !chosen.contains(&m) {
                chosen.push(m);
            }
        }
        // Keep the owner first even when its zone was also another's.
        chosen
    }

    /// Number of members.
    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    /// The member with this id.
    pub fn member(&self, id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    /// The partition holding `key`.
    pub fn partition_of(&self, key: &[u8]) -> PartitionId {
        partition_of(key, self.partitions)
    }

    /// The owner of partition `p`.
    pub fn owner(&self, p: PartitionId) -> &Member {
        &self.members[self.owners[p as usize] as usize]
    }

    /// The preference list of partition `p`: `min(N, S)` distinct members, owner first.
    pub fn preference_list(&self, p: PartitionId) -> impl Iterator<Item = &Member> + '_ {
        let n = (self.replication as usize).min(self.members.len());
        self.prefs[p as usize][..n]
            .iter()
            .map(|&i| &self.members[i as usize])
    }

    /// Every member, in preference order for partition `p`: the preference list, then the
    /// fallbacks a sloppy quorum uses.
    pub fn extended_preference_list(&self, p: PartitionId) -> impl Iterator<Item = &Member> + '_ {
        self.prefs[p as usize]
            .iter()
            .map(|&i| &self.members[i as usize])
    }

    /// Whether `node` is in the preference list of partition `p`.
    pub fn is_replica(&self, p: PartitionId, node: &str) -> bool {
        self.preference_list(p).any(|m| m.id == node)
    }

    /// Partitions owned by each member, in member order.
    pub fn ownership_counts(&self) -> Vec<(NodeId, usize)> {
        let mut counts = vec![0usize; self.members.len()];
        for &o in &self.owners {
            counts[o as usize] += 1;
        }
        self.members
            .iter()
            .map(|m| m.id.clone())
            .zip(counts)
            .collect()
    }

    /// Partitions for which `node` is in the preference list.
    pub fn replicated_by<'a>(&'a self, node: &'a str) -> impl Iterator<Item = PartitionId> + 'a {
        (0..self.partitions).filter(move |&p| self.is_replica(p, node))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Vec<Member> {
        (0..n)
            .map(|i| Member::new(format!("n{i}"), format!("127.0.0.1:{}", 7000 + i)))
            .collect()
    }

    #[test]
    fn partitions_are_top_bits() {
        assert_eq!(partition_of_hash(0, 16), 0);
        assert_eq!(partition_of_hash(u64::MAX, 16), 15);
        assert_eq!(partition_of_hash(1 << 60, 16), 1);
        assert_eq!(partition_of_hash(u64::MAX, 4096), 4095);
    }

    #[test]
    fn rejects_bad_partition_counts() {
        for q in [0, 8, 17, 100, 8192] {
            assert_eq!(
                validate_partition_count(q),
                Err(MapError::BadPartitionCount(q))
            );
        }
        for q in [16, 256, 4096] {
            assert!(validate_partition_count(q).is_ok());
        }
    }

    #[test]
    fn preference_list_walks_clockwise() {
        let owners = (0..16).map(|p| p % 4).collect();
        let map = PartitionMap::from_indices(1, 16, 3, members(4), owners).unwrap();
        let ids: Vec<_> = map.preference_list(3).map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["n3", "n0", "n1"]);
        assert_eq!(map.extended_preference_list(3).count(), 4);
    }

    #[test]
    fn preference_list_prefers_distinct_zones() {
        let mut ms = members(4);
        for (i, m) in ms.iter_mut().enumerate() {
            m.zone = Some(if i < 2 { "a".into() } else { "b".into() });
        }
        let owners = (0..16).map(|p| p % 4).collect();
        let map = PartitionMap::from_indices(1, 16, 2, ms, owners).unwrap();
        for p in 0..16 {
            let zones: Vec<_> = map.preference_list(p).map(|m| m.zone.clone()).collect();
            assert_ne!(zones[0], zones[1], "partition {p}");
        }
    }

    #[test]
    fn rejects_owner_out_of_range() {
        let err = PartitionMap::from_indices(1, 16, 3, members(2), vec![5; 16]).unwrap_err();
        assert!(matches!(err, MapError::BadOwner { .. }));
    }
}
