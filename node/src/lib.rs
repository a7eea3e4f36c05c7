//! The storage node.
//!
//! Each Dynamo mechanism has its own module:
//!
//! - [`config`]: flags, environment and YAML configuration;
//! - [`storage`]: the engine trait, RocksDB and in-memory engines;
//! - [`store`]: sibling sets and hints over an engine, atomic read-modify-write, group commit;
//! - [`identity`]: node id and incarnation (actor ids never reuse counters);
//! - [`dots`]: which actor (incarnation and key epoch) a write takes, so no dot is issued
//!   twice even when a local copy was dropped;
//! - [`coordinator`]: routing and N/R/W quorums with sloppy quorum;
//! - [`quorum`]: write quorum accounting;
//! - [`read_repair`]: repairing stale replicas after a get;
//! - [`handoff`]: hinted handoff;
//! - [`antientropy`]: Merkle-tree comparison of partition replicas, joining what differs;
//! - [`budget`]: the rate budget background work shares, backing off when clients wait;
//! - [`gossip`]: membership, heartbeats and the partition map spread by gossip;
//! - [`failure_detection`]: the phi accrual failure detector (pure);
//! - [`health`]: this node's view of its peers, the detector's verdicts;
//! - [`network`]: the transport seam (gRPC in production);
//! - [`clock`]: the clock seam;
//! - [`service`]: the gRPC services; [`http`]: health and metrics endpoints;
//! - [`server`]: wiring it all together; [`shutdown`]: stopping cleanly.

pub mod access;
pub mod antientropy;
pub mod arriving;
pub mod budget;
pub mod change;
pub mod clock;
pub mod config;
pub mod coordinator;
pub mod determinism;
pub mod dots;
pub mod error;
pub mod failure_detection;
pub mod gossip;
pub mod handoff;
pub mod health;
pub mod http;
pub mod identity;
pub mod key_lock;
pub mod listener;
pub mod maps;
pub mod metrics;
pub mod network;
pub mod node;
pub mod read_repair;
#[cfg(feature = "rocksdb")]
pub mod server;
pub mod service;
pub mod shutdown;
pub mod storage;
pub mod store;
pub mod tls;
