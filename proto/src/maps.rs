//! Partition maps and map states to and from their protobuf messages (`GossipMap`,
//! `MapState`), as gossip, the admin API and the operator carry them.

use dynamo_core::map_state::MapState;
use dynamo_core::ring::MapError;
use dynamo_core::{Member, PartitionMap};

use crate::v1;

pub fn member_to_proto(m: &Member) -> v1::GossipMember {
    v1::GossipMember {
        id: m.id.clone(),
        addr: m.addr.clone(),
        zone: m.zone.clone().unwrap_or_default(),
    }
}

pub fn member_from_proto(g: v1::GossipMember) -> Member {
    Member {
        id: g.id,
        addr: g.addr,
        zone: (!g.zone.is_empty()).then_some(g.zone),
    }
}

pub fn map_to_proto(m: &PartitionMap) -> v1::GossipMap {
    v1::GossipMap {
        epoch: m.epoch,
        partitions: m.partitions,
        replication: m.replication,
        members: m.members.iter().map(member_to_proto).collect(),
        owners: m.owners.clone(),
    }
}

/// Rebuilds (and so validates) a map from its message.
pub fn map_from_proto(m: v1::GossipMap) -> Result<PartitionMap, MapError> {
    let members: Vec<Member> = m.members.into_iter().map(member_from_proto).collect();
    // By id, so that the members' order on the wire does not matter.
    let owners: Vec<String> = m
        .owners
        .iter()
        .map(|&o| {
            members
                .get(o as usize)
                .map_or_else(String::new, |m| m.id.clone())
        })
        .collect();
    PartitionMap::new(m.epoch, m.partitions, m.replication, members, &owners)
}

pub fn state_to_proto(s: &MapState) -> v1::MapState {
    v1::MapState {
        version: s.version,
        current: s.current.as_ref().map(map_to_proto),
        pending: s.pending.as_ref().map(map_to_proto),
    }
}

/// Rebuilds (and so validates) a map state from its message.
pub fn state_from_proto(s: v1::MapState) -> Result<MapState, MapError> {
    Ok(MapState {
        version: s.version,
        current: s.current.map(map_from_proto).transpose()?,
        pending: s.pending.map(map_from_proto).transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynamo_core::planner;

    #[test]
    fn maps_and_states_round_trip() {
        let members: Vec<Member> = (1..=4)
            .map(|i| Member::new(format!("n{i}"), format!("h:{i}")))
            .collect();
        let map = planner::plan(None, &members, 32, 3).unwrap();
        assert_eq!(map_from_proto(map_to_proto(&map)).unwrap(), map);
        let mut bad = map_to_proto(&map);
        bad.owners.pop();
        assert!(map_from_proto(bad).is_err());
        let next = planner::plan(Some(&map), &members[..3], 32, 3).unwrap();
        let state = MapState::in_force(map).commit(next).unwrap().unwrap();
        assert_eq!(state_from_proto(state_to_proto(&state)).unwrap(), state);
    }
}
