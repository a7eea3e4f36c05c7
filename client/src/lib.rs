//! Rust client of the Dynamo-style key-value store, and the library behind `dynamoctl`.
//!
//! ```no_run
//! # async fn demo() -> dynamo_client::Result<()> {
//! use dynamo_client::{Client, Context};
//! let client = Client::connect(&["127.0.0.1:7101"]).await?;
//! let got = client.get("cart:alice", None).await?;
//! // Merge the siblings the application's way, then write back with the context read,
//! // which supersedes exactly the versions that were merged.
//! let merged: Vec<u8> = got.values().flat_map(|v| v.to_vec()).collect();
//! let ctx: Context = client.put("cart:alice", merged, &got.context, None).await?;
//! println!("new context: {ctx}");
//! # Ok(()) }
//! ```
//!
//! - [`client`]: [`Client`], connections, failover and request routing.
//! - [`context`]: the opaque causal [`Context`] and its base64 text form.
//! - [`error`]: [`Error`], which keeps the gRPC status code and message.
//! - [`bench`]: the load generator behind `dynamoctl bench`.
//! - [`local_cluster`]: the launcher behind `dynamoctl cluster`.
//! - [`set_workload`]: the set-of-elements workload the tests and the simulator share.

pub mod bench;
pub mod client;
pub mod context;
pub mod error;
pub mod local_cluster;
mod pool;
mod routing;
mod session;
pub mod set_workload;

pub use client::{Client, ClientConfig, GetResult, Sibling, WriteResult};
pub use context::Context;
pub use dynamo_proto::tls::ClientFiles as TlsFiles;
/// The generated gRPC types (admin responses are returned as they are).
pub use dynamo_proto::v1 as proto;
pub use error::{Error, Origin, Result};
pub use pool::{split_addrs, Token};
