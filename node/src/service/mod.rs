//! gRPC services: the client API ([`kv`]), the admin API ([`admin`]), node-to-node
//! replication ([`replica`]) and membership gossip ([`gossip`]).

pub mod admin;
pub mod gossip;
pub mod kv;
pub mod replica;
