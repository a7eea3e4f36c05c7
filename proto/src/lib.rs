//! The gRPC API of the store, package `dynamo.v1`.
//!
//! The `.proto` files in `proto/dynamo/v1/` are the one source of truth; generate clients
//! in other languages from them:
//!
//! - `kv.proto`: the client API (`Kv`: Get, Put, Delete with opaque causal contexts, and
//!   Session, the same requests multiplexed over one stream);
//! - `admin.proto`: node identity, partition map, health, hints (`Admin`);
//! - `replica.proto`: node-to-node replication (`Replica`: batched reads and writes, as
//!   unary calls or over a Session stream per peer), not for clients;
//! - `gossip.proto`: membership gossip and failure detection input (`Gossip`: push-pull
//!   exchanges of heartbeats and the partition map), not for clients.
//!
//! [`maps`] converts partition maps and map states to and from their messages.
//!
//! [`cork`] is the TCP connector both nodes and clients open their channels with;
//! [`session`] holds both sides of the sessions (`Kv.Session`, `Replica.Session`): many
//! requests multiplexed over one stream. [`tls`] loads and reloads TLS configurations;
//! [`verify`] checks the identity a certificate names; [`certs`] issues certificates.

pub mod certs;
pub mod cork;
pub mod maps;
pub mod session;
pub mod tls;
pub mod verify;

/// Package `dynamo.v1`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("dynamo.v1");
}

/// Request metadata header marking a request a node forwarded to a preference-list node,
/// so that it is never forwarded again.
pub const FORWARDED_HEADER: &str = "x-dynamo-forwarded";
