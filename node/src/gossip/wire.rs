//! Gossip's entries and maps to and from their protobuf messages.

use dynamo_core::ring::MapError;
use dynamo_core::{Member, PartitionMap};
use dynamo_proto::v1::{GossipEntry, GossipMap, GossipMember};

use super::state::{Entry, Status};

pub fn entry_to_proto(e: &Entry) -> GossipEntry {
    GossipEntry {
        node_id: e.node_id.clone(),
        addr: e.addr.clone(),
        zone: e.zone.clone().unwrap_or_default(),
        incarnation: e.incarnation,
        generation: e.generation,
        heartbeat: e.heartbeat,
        status: e.status.as_str().to_owned(),
    }
}

pub fn entry_from_proto(e: GossipEntry) -> Entry {
    Entry {
        generation: e.generation,
        heartbeat: e.heartbeat,
        node_id: e.node_id,
        addr: e.addr,
        zone: (!e.zone.is_empty()).then_some(e.zone),
        incarnation: e.incarnation,
        status: Status::parse(&e.status),
    }
}

pub fn map_to_proto(m: &PartitionMap) -> GossipMap {
    GossipMap {
        epoch: m.epoch,
        partitions: m.partitions,
        replication: m.replication,
        members: m
            .members
            .iter()
            .map(|m| GossipMember {
                id: m.id.clone(),
                addr: m.addr.clone(),
                zone: m.zone.clone().unwrap_or_default(),
            })
            .collect(),
        owners: m.owners.clone(),
    }
}

/// Rebuilds (and so validates) a gossiped map.
pub fn map_from_proto(m: GossipMap) -> Result<PartitionMap, MapError> {
    let members: Vec<Member> = m
        .members
        .into_iter()
        .map(|g| Member {
            id: g.id,
            addr: g.addr,
            zone: (!g.zone.is_empty()).then_some(g.zone),
        })
        .collect();
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

#[cfg(test)]
mod tests {
    use super::*;
    use dynamo_core::planner;

    #[test]
    fn entries_and_maps_round_trip() {
        let e = Entry {
            generation: 5,
            heartbeat: 9,
            node_id: "n1".into(),
            addr: "127.0.0.1:1".into(),
            zone: Some("z".into()),
            incarnation: 77,
            status: Status::Stopping,
        };
        assert_eq!(entry_from_proto(entry_to_proto(&e)), e);
        let members: Vec<Member> = (1..=4)
            .map(|i| Member::new(format!("n{i}"), format!("h:{i}")))
            .collect();
        let map = planner::plan(None, &members, 32, 3).unwrap();
        assert_eq!(map_from_proto(map_to_proto(&map)).unwrap(), map);
        let mut bad = map_to_proto(&map);
        bad.owners.pop();
        assert!(map_from_proto(bad).is_err());
    }
}
