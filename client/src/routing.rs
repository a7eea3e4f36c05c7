//! Client-driven coordination: send each request straight to a node of the key's
//! preference list (the paper's §6.4 client-driven coordination: saves the coordinator's
//! forwarding hop, which is what halved p99.9 in the paper).
//!
//! The client fetches the partition map from a node, hashes keys exactly as the nodes do
//! (`dynamo_core::ring::partition_of`, xxh3-64) and keeps one [`NodeConn`] per member.
//! A stale map costs only the forwarding hop (any node accepts and forwards any request),
//! never correctness, so the map is refreshed in the background rather than on the
//! request path.

use std::sync::Arc;

use dynamo_core::ring::{Member, PartitionMap};
use dynamo_proto::v1::PartitionMapResponse;

use crate::error::{Error, Result};
use crate::pool::{ChannelSettings, NodeConn};

/// A partition map and a connection to each of its members.
#[derive(Debug)]
pub(crate) struct Routes {
    map: PartitionMap,
    /// Indexed like `map.members`.
    conns: Vec<Arc<NodeConn>>,
}

impl Routes {
    /// Builds the routes for a map a node sent, reusing connections whose address is
    /// already open.
    pub fn build(
        resp: PartitionMapResponse,
        open: &[Arc<NodeConn>],
        settings: &ChannelSettings,
    ) -> Result<Self> {
        let map = to_core_map(resp)?;
        let conns = map
            .members
            .iter()
            .map(|m| match open.iter().find(|c| c.addr() == m.addr) {
                Some(conn) => Ok(conn.clone()),
                None => NodeConn::open(&m.addr, settings).map(Arc::new),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { map, conns })
    }

    /// The map's epoch.
    pub fn epoch(&self) -> u64 {
        self.map.epoch
    }

    /// Every connection, in member order.
    pub fn conns(&self) -> &[Arc<NodeConn>] {
        &self.conns
    }

    /// The connections of the key's preference list, owner first, rotated left by
    /// `rotate` so that reads spread over the replicas.
    pub fn preference(&self, key: &[u8], rotate: usize) -> Vec<Arc<NodeConn>> {
        let p = self.map.partition_of(key);
        let mut list: Vec<Arc<NodeConn>> = self
            .map
            .preference_list(p)
            .filter_map(|m| self.map.members.iter().position(|x| x.id == m.id))
            .map(|i| self.conns[i].clone())
            .collect();
        if !list.is_empty() {
            let n = list.len();
            list.rotate_left(rotate % n);
        }
        list
    }
}

/// Turns the wire form of the map into the core type (which derives preference lists).
pub(crate) fn to_core_map(resp: PartitionMapResponse) -> Result<PartitionMap> {
    let mut members: Vec<(usize, Member)> = resp
        .members
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let zone = if m.zone.is_empty() {
                None
            } else {
                Some(m.zone)
            };
            (
                i,
                Member {
                    id: m.id,
                    addr: m.addr,
                    zone,
                },
            )
        })
        .collect();
    // The core map wants members sorted by id; remap owner indices if the node's are not.
    members.sort_by(|a, b| a.1.cmp(&b.1));
    let mut new_index = vec![u32::MAX; members.len()];
    for (new, (old, _)) in members.iter().enumerate() {
        new_index[*old] = new as u32;
    }
    let owners = resp
        .owners
        .iter()
        .map(|&o| new_index.get(o as usize).copied().unwrap_or(o))
        .collect();
    let members = members.into_iter().map(|(_, m)| m).collect();
    PartitionMap::from_indices(
        resp.epoch,
        resp.partitions,
        resp.replication,
        members,
        owners,
    )
    .map_err(|e| Error::InvalidMap(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynamo_proto::v1::MapMember;
    use std::time::Duration;

    fn map_response() -> PartitionMapResponse {
        let members = (1..=3)
            .map(|i| MapMember {
                id: format!("node-{i}"),
                addr: format!("127.0.0.1:{}", 7100 + i),
                zone: String::new(),
                owned: 0,
                replicated: 0,
            })
            .collect();
        PartitionMapResponse {
            epoch: 7,
            partitions: 16,
            replication: 3,
            members,
            owners: (0..16).map(|p| p % 3).collect(),
        }
    }

    fn settings() -> ChannelSettings {
        ChannelSettings {
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            channels_per_node: 1,
            down_for: Duration::from_secs(1),
            tls: None,
            token: None,
        }
    }

    #[tokio::test]
    async fn preference_follows_the_core_map() {
        let seed = Arc::new(NodeConn::open("127.0.0.1:7101", &settings()).unwrap());
        let routes =
            Routes::build(map_response(), std::slice::from_ref(&seed), &settings()).unwrap();
        assert_eq!(routes.epoch(), 7);
        assert!(
            Arc::ptr_eq(&routes.conns()[0], &seed),
            "open connections are reused"
        );
        let core = to_core_map(map_response()).unwrap();
        for key in [&b"a"[..], b"k000000000000042", b"another key"] {
            let want: Vec<String> = core
                .preference_list(core.partition_of(key))
                .map(|m| m.addr.clone())
                .collect();
            let got: Vec<String> = routes
                .preference(key, 0)
                .iter()
                .map(|c| c.addr().to_string())
                .collect();
            assert_eq!(got, want);
            let rotated: Vec<String> = routes
                .preference(key, 1)
                .iter()
                .map(|c| c.addr().to_string())
                .collect();
            assert_eq!(rotated[0], want[1]);
        }
    }

    #[test]
    fn invalid_map_is_an_error() {
        let mut resp = map_response();
        resp.owners.pop();
        assert_eq!(to_core_map(resp).unwrap_err().category(), "invalid_map");
    }
}
