//! gRPC services: the client API ([`kv`]), the admin API ([`admin`]), node-to-node
//! replication ([`replica`]), anti-entropy ([`antientropy`]) and membership gossip
//! ([`gossip`]).

pub mod admin;
pub mod antientropy;
pub mod gossip;
pub mod kv;
pub mod replica;
