//! Helpers shared by the process tests: typed get/put/delete against a node.

#![allow(dead_code)]

pub mod set_writer;

use std::time::Duration;

use dynamo_core::{Member, PartitionMap};
use dynamo_proto::v1::{
    DeleteRequest, GetRequest, GetResponse, HintsRequest, PartitionMapRequest, PutRequest,
};
use dynamo_tests::Cluster;
use tonic::Code;

/// Upper bound of every test.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(120);

#[allow(unused_imports)] // each test binary uses its own part of this module
pub use dynamo_client::set_workload::{elements, elements_of, values};

/// Hints node `i` holds for other nodes.
pub async fn hints_pending(c: &Cluster, i: usize) -> u64 {
    c.admin(i)
        .hints(HintsRequest {})
        .await
        .expect("hints")
        .into_inner()
        .pending
}

/// The indices of `key`'s replicas, by the partition map node 0 serves (node ids are
/// node-1..node-S for indices 0..S-1).
pub async fn replicas_of(c: &Cluster, key: &str) -> Vec<usize> {
    let ring = ring(c).await;
    ring.preference_list(ring.partition_of(key.as_bytes()))
        .map(|m| m.id["node-".len()..].parse::<usize>().expect("node-<i>") - 1)
        .collect()
}

/// Whether, for every partition, its replicas have equal Merkle roots (they hold the
/// same versions of every key), by the partition map node 0 serves. Nodes that do not
/// answer count as not converged.
pub async fn replicas_converged(c: &Cluster) -> bool {
    let ring = ring(c).await;
    let mut roots = Vec::new();
    for i in 0..c.nodes.len() {
        match c.roots(i).await {
            Ok(r) => roots.push(r),
            Err(_) => return false,
        }
    }
    (0..ring.partitions).all(|p| {
        let mut of_replicas = ring
            .preference_list(p)
            .map(|m| m.id["node-".len()..].parse::<usize>().expect("node-<i>") - 1)
            .map(|i| roots[i][p as usize]);
        let first = of_replicas.next();
        of_replicas.all(|r| Some(r) == first)
    })
}

/// The partition map node 0 serves.
async fn ring(c: &Cluster) -> PartitionMap {
    let map = c
        .admin(0)
        .partition_map(PartitionMapRequest {})
        .await
        .expect("partition map")
        .into_inner();
    let members = map
        .members
        .iter()
        .map(|m| Member::new(m.id.clone(), m.addr.clone()))
        .collect();
    PartitionMap::from_indices(
        map.epoch,
        map.partitions,
        map.replication,
        members,
        map.owners,
    )
    .expect("a valid map")
}

pub async fn get(c: &Cluster, node: usize, key: &str) -> Result<GetResponse, tonic::Status> {
    let req = GetRequest {
        key: key.as_bytes().to_vec(),
        r: None,
    };
    c.kv(node).get(req).await.map(|r| r.into_inner())
}

pub async fn get_ok(c: &Cluster, node: usize, key: &str) -> GetResponse {
    get(c, node, key)
        .await
        .unwrap_or_else(|s| panic!("get {key} via node {node}: {s:?}"))
}

pub async fn put(
    c: &Cluster,
    node: usize,
    key: &str,
    value: &str,
    ctx: &[u8],
) -> Result<Vec<u8>, tonic::Status> {
    let req = PutRequest {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        context: ctx.to_vec(),
        w: None,
    };
    c.kv(node).put(req).await.map(|r| r.into_inner().context)
}

pub async fn put_ok(c: &Cluster, node: usize, key: &str, value: &str, ctx: &[u8]) -> Vec<u8> {
    put(c, node, key, value, ctx)
        .await
        .unwrap_or_else(|s| panic!("put {key} via node {node}: {s:?}"))
}

pub async fn delete(
    c: &Cluster,
    node: usize,
    key: &str,
    ctx: &[u8],
) -> Result<Vec<u8>, tonic::Status> {
    let req = DeleteRequest {
        key: key.as_bytes().to_vec(),
        context: ctx.to_vec(),
        w: None,
    };
    c.kv(node).delete(req).await.map(|r| r.into_inner().context)
}

/// Asserts an error of `code` whose message contains `needle`.
pub fn assert_status(r: Result<impl std::fmt::Debug, tonic::Status>, code: Code, needle: &str) {
    match r {
        Ok(v) => panic!("expected {code:?} ({needle}), got success {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "message: {}", s.message());
            assert!(
                s.message().contains(needle),
                "{:?} does not mention {needle:?}",
                s.message()
            );
        }
    }
}
