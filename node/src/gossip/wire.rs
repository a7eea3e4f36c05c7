//! Gossip's entries to and from their protobuf messages (maps and map states: see
//! [`dynamo_proto::maps`]).

use dynamo_proto::v1::GossipEntry;

use super::state::{Entry, Status};

pub fn entry_to_proto(e: &Entry) -> GossipEntry {
    GossipEntry {
        node_id: e.node_id.clone(),
        addr: e.addr.clone(),
        client_addr: e.client_addr.clone(),
        zone: e.zone.clone().unwrap_or_default(),
        incarnation: e.incarnation,
        generation: e.generation,
        heartbeat: e.heartbeat,
        status: e.status.as_str().to_owned(),
        map_version: e.map_version,
    }
}

pub fn entry_from_proto(e: GossipEntry) -> Entry {
    Entry {
        generation: e.generation,
        heartbeat: e.heartbeat,
        node_id: e.node_id,
        addr: e.addr,
        client_addr: e.client_addr,
        zone: (!e.zone.is_empty()).then_some(e.zone),
        incarnation: e.incarnation,
        status: Status::parse(&e.status),
        map_version: e.map_version,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        let e = Entry {
            generation: 5,
            heartbeat: 9,
            node_id: "n1".into(),
            addr: "127.0.0.1:1".into(),
            client_addr: "127.0.0.1:2".into(),
            zone: Some("z".into()),
            incarnation: 77,
            status: Status::Stopping,
            map_version: 4,
        };
        assert_eq!(entry_from_proto(entry_to_proto(&e)), e);
    }
}
