//! gRPC services: the client API ([`kv`]), the admin API ([`admin`]), node-to-node
//! replication ([`replica`]) and anti-entropy ([`antientropy`]).

pub mod admin;
pub mod antientropy;
pub mod kv;
pub mod replica;
