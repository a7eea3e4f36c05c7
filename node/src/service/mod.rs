//! gRPC services: the client API ([`kv`]), the admin API ([`admin`]) and node-to-node
//! replication ([`replica`]).

pub mod admin;
pub mod kv;
pub mod replica;
