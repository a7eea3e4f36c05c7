//! The gRPC API of the store, package `dynamo.v1`.
//!
//! The `.proto` files in `proto/dynamo/v1/` are the one source of truth; generate clients
//! in other languages from them:
//!
//! - `kv.proto`: the client API (`Kv`: Get, Put, Delete with opaque causal contexts, and
//!   Session, the same requests multiplexed over one stream);
//! - `admin.proto`: node identity, partition map, health, hints (`Admin`);
//! - `replica.proto`: node-to-node replication (`Replica`), not for clients.
//!
//! [`cork`] is the TCP connector both nodes and clients open their channels with;
//! [`session`] serves `Kv.Session` for any handler of single requests.

pub mod cork;
pub mod session;

/// Package `dynamo.v1`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("dynamo.v1");
}

/// Request metadata header marking a request a node forwarded to a preference-list node,
/// so that it is never forwarded again.
pub const FORWARDED_HEADER: &str = "x-dynamo-forwarded";
