//! `dynamoctl repair`: Merkle anti-entropy on demand, on every member of the cluster.
//!
//! Each member compares its copies of its partitions (or of `--partition`) with every
//! other replica's and joins what differs on both sides; the command prints each one's
//! report and the totals.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use dynamo_client::bench::parse_duration;
use dynamo_client::proto::RepairResponse;
use serde_json::json;

use super::{client_config, Cli};

/// Arguments of `repair`.
#[derive(Debug, Args)]
pub struct RepairArgs {
    /// Only this partition.
    #[arg(long)]
    pub partition: Option<u32>,
    /// Only the node at --addr, not every member of its partition map.
    #[arg(long)]
    pub this_node: bool,
    /// Time allowed for each node's repair.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub repair_timeout: Duration,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(cli: &Cli, args: &RepairArgs) -> anyhow::Result<ExitCode> {
    let client = client_config(cli)?.connect().await?;
    let addrs: Vec<String> = if args.this_node {
        cli.addr.clone()
    } else {
        let map = client.partition_map().await?;
        map.members.into_iter().map(|m| m.addr).collect()
    };
    let mut reports = Vec::new();
    let mut failed = false;
    for addr in &addrs {
        let mut config = client_config(cli)?;
        config.addrs = vec![addr.clone()];
        config.request_timeout = args.repair_timeout;
        let node = config.connect().await?;
        let repaired = match node.peer_api().await {
            Ok(node) => node.repair(args.partition).await,
            Err(e) => Err(e),
        };
        match repaired {
            Ok(r) => {
                failed |= !r.errors.is_empty();
                if !args.json {
                    println!("{}", to_text(&r));
                }
                reports.push(r);
            }
            Err(e) => {
                failed = true;
                eprintln!("{addr}: {}: {}", e.category(), e.message());
            }
        }
    }
    let total = |f: fn(&RepairResponse) -> u64| reports.iter().map(f).sum::<u64>();
    if args.json {
        let nodes: Vec<_> = reports.iter().map(to_json).collect();
        println!(
            "{}",
            json!({
                "nodes": nodes,
                "compared": total(|r| r.compared),
                "differing": total(|r| r.differing),
                "pulled": total(|r| r.pulled),
                "pushed": total(|r| r.pushed),
                "bytes": total(|r| r.bytes),
            })
        );
    } else {
        println!(
            "total: {} replica pairs compared, {} differed, {} keys joined here and {} sent, {} bytes",
            total(|r| r.compared),
            total(|r| r.differing),
            total(|r| r.pulled),
            total(|r| r.pushed),
            total(|r| r.bytes),
        );
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn to_text(r: &RepairResponse) -> String {
    let mut out = format!(
        "{}: {} partition copies compared with a peer's, {} differed ({} Merkle leaves); \
         {} keys joined here, {} sent to peers; {} bytes in {} ms",
        r.node_id, r.compared, r.differing, r.leaves, r.pulled, r.pushed, r.bytes, r.duration_ms
    );
    for e in &r.errors {
        out.push_str(&format!("\n  could not compare: {e}"));
    }
    out
}

fn to_json(r: &RepairResponse) -> serde_json::Value {
    json!({
        "node": r.node_id,
        "compared": r.compared,
        "differing": r.differing,
        "leaves": r.leaves,
        "pulled": r.pulled,
        "pushed": r.pushed,
        "bytes": r.bytes,
        "duration_ms": r.duration_ms,
        "errors": r.errors,
    })
}
