//! Helpers shared by the process tests: typed get/put/delete against a node.

#![allow(dead_code)]

use std::time::Duration;

use dynamo_proto::v1::{DeleteRequest, GetRequest, GetResponse, PutRequest};
use dynamo_tests::Cluster;
use tonic::Code;

/// Upper bound of every test.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Live values of a get, sorted.
pub fn values(r: &GetResponse) -> Vec<String> {
    let mut v: Vec<String> = r
        .siblings
        .iter()
        .filter(|s| !s.tombstone)
        .map(|s| String::from_utf8_lossy(&s.value).into_owned())
        .collect();
    v.sort();
    v
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
