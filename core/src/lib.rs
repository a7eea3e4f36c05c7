//! Pure logic of the store, shared by the node, the client and the operator.
//!
//! Nothing in this crate does I/O, and it depends on nothing heavy (no RocksDB, no gRPC
//! server, no Kubernetes), so that every crate can use it and it can be tested alone.
//!
//! - [`hash`]: the key hash (xxh3-64), part of the on-disk and wire format forever.
//! - [`ring`]: the versioned partition map and preference lists (Strategy 3).
//! - [`map_state`]: the live maps (in force and pending), their transitions, moves and
//!   the write quorum over two maps.
//! - [`planner`]: the deterministic Strategy 3 planner.
//! - [`version`]: actors, dots, version vectors and causal contexts (dotted version vectors).
//! - [`siblings`]: sibling sets (dotted version vectors) and their join.
//! - [`context`]: the opaque causal context handed to clients.
//! - [`codec`]: the binary encoding of sibling sets and contexts.
//! - [`limits`]: request validation (key and value sizes, quorum overrides).
//! - [`merkle`]: the hash trees replicas compare in anti-entropy.
//! - [`identity`]: the cluster, kind and name a TLS certificate names.
//! - [`access`]: the authorization model (roles, what each call needs).

pub mod access;
pub mod codec;
pub mod context;
pub mod hash;
pub mod identity;
pub mod limits;
pub mod map_state;
pub mod merkle;
pub mod planner;
pub mod ring;
pub mod siblings;
pub mod version;

pub use ring::{Member, NodeId, PartitionId, PartitionMap};
pub use siblings::{Sibling, SiblingSet};
pub use version::{Actor, CausalContext, Dot, VersionVector};
