//! `dynamoctl status`: what one node knows about itself and the cluster.
//!
//! Everything comes from the same node (the first address that answers), so the
//! partition map, health and hints are one consistent point of view.

use std::process::ExitCode;

use clap::Args;
use dynamo_client::proto::{
    AntiEntropyStateResponse, ClusterHealthResponse, HintsResponse, MemberHealth, NodeInfoResponse,
    PartitionMapResponse,
};
use dynamo_client::Client;
use serde_json::json;

use super::{client_config, Cli};

/// Arguments of `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The four admin answers of one node.
struct Status {
    info: NodeInfoResponse,
    map: PartitionMapResponse,
    health: ClusterHealthResponse,
    hints: HintsResponse,
    /// `None` from a node that does not report it.
    anti_entropy: Option<AntiEntropyStateResponse>,
}

/// Queries the first node that answers and prints its view.
pub async fn run(cli: &Cli, args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let mut last = None;
    for addr in &cli.addr {
        let mut config = client_config(cli)?;
        config.addrs = vec![addr.clone()];
        let client = config.connect().await?;
        match query(&client).await {
            Ok(status) => {
                if args.json {
                    println!("{}", to_json(&status));
                } else {
                    print!("{}", to_text(&status));
                }
                return Ok(ExitCode::SUCCESS);
            }
            Err(e) if e.is_transport_failure() && cli.addr.len() > 1 => {
                eprintln!("{addr}: {}: {}", e.category(), e.message());
                last = Some(e);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(last
        .map(anyhow::Error::from)
        .unwrap_or_else(|| anyhow::anyhow!("no address given")))
}

async fn query(client: &Client) -> dynamo_client::Result<Status> {
    let info = client.node_info().await?;
    let (map, health, hints) = tokio::try_join!(
        client.partition_map(),
        client.cluster_health(),
        client.hints()
    )?;
    let anti_entropy = client.anti_entropy_state().await.ok();
    Ok(Status {
        info,
        map,
        health,
        hints,
        anti_entropy,
    })
}

fn to_text(s: &Status) -> String {
    let i = &s.info;
    let mut out = format!(
        "node {} (incarnation {}) of cluster {:?}, version {}, at {}, up {}s\n\
         replication N={} R={} W={}, fsync {}\n",
        i.node_id,
        i.incarnation,
        i.cluster_id,
        i.version,
        i.advertise,
        i.uptime_seconds,
        i.n,
        i.r,
        i.w,
        i.fsync
    );
    out.push_str(&format!(
        "partition map: epoch {}, Q={}, N={}, {} members\n",
        s.map.epoch,
        s.map.partitions,
        s.map.replication,
        s.map.members.len()
    ));
    out.push_str(&format!(
        "  {:<12} {:<22} {:<8} {:>6} {:>10}  {:<7} {:>20} {:>16}\n",
        "member",
        "addr",
        "zone",
        "owned",
        "replicated",
        "health",
        "incarnation",
        "heartbeat age ms"
    ));
    for m in &s.map.members {
        let h = s.health.members.iter().find(|h| h.id == m.id);
        out.push_str(&format!(
            "  {:<12} {:<22} {:<8} {:>6} {:>10}  {:<7} {:>20} {:>16}\n",
            m.id,
            m.addr,
            if m.zone.is_empty() { "-" } else { &m.zone },
            m.owned,
            m.replicated,
            h.map_or("?", |h| h.state.as_str()),
            h.map_or("-".into(), incarnation),
            h.map_or("-".into(), |h| h.last_seen_ms.to_string()),
        ));
    }
    for h in s
        .health
        .members
        .iter()
        .filter(|h| !s.map.members.iter().any(|m| m.id == h.id))
    {
        // Known by gossip only (e.g. started from seeds): it owns and replicates nothing.
        out.push_str(&format!(
            "  {:<12} {:<22} {:<8} {:>6} {:>10}  {:<7} {:>20} {:>16}  (not in the map)\n",
            h.id,
            h.addr,
            if h.zone.is_empty() { "-" } else { &h.zone },
            "-",
            "-",
            h.state,
            incarnation(h),
            h.last_seen_ms
        ));
    }
    out.push_str(&format!("hints pending: {}\n", s.hints.pending));
    for t in &s.hints.targets {
        out.push_str(&format!(
            "  for {}: {} pending, oldest {} ms\n",
            t.node_id, t.pending, t.oldest_age_ms
        ));
    }
    if let Some(ae) = &s.anti_entropy {
        out.push_str(&anti_entropy_text(ae));
    }
    out
}

fn anti_entropy_text(ae: &AntiEntropyStateResponse) -> String {
    let every = match ae.interval_ms {
        0 => "off (dynamoctl repair only)".to_owned(),
        ms => format!("every {ms} ms"),
    };
    let grace = match ae.tombstone_grace_ms {
        0 => "never".to_owned(),
        ms => format!("after {ms} ms"),
    };
    let mut out = format!(
        "anti-entropy: {every}; tombstones purged {grace}; background budget {} bytes/s\n",
        ae.background_rate_bytes_per_sec
    );
    match (&ae.last, ae.swept) {
        (Some(l), true) => out.push_str(&format!(
            "  last sweep {} ms ago: {} partition copies compared, {} differed, {} keys joined here, {} sent, {} bytes{}\n",
            ae.last_sweep_age_ms,
            l.compared,
            l.differing,
            l.pulled,
            l.pushed,
            l.bytes,
            if l.errors.is_empty() {
                String::new()
            } else {
                format!("; could not compare: {}", l.errors.join("; "))
            }
        )),
        _ => out.push_str("  no sweep yet\n"),
    }
    out
}

/// A member's incarnation, or "-" while gossip has not told it.
fn incarnation(h: &MemberHealth) -> String {
    match h.incarnation {
        0 => "-".into(),
        i => i.to_string(),
    }
}

fn to_json(s: &Status) -> serde_json::Value {
    let i = &s.info;
    let members: Vec<_> = s
        .map
        .members
        .iter()
        .map(|m| {
            json!({"id": m.id, "addr": m.addr, "zone": m.zone, "owned": m.owned, "replicated": m.replicated})
        })
        .collect();
    let health: Vec<_> = s
        .health
        .members
        .iter()
        .map(|h| {
            json!({
                "id": h.id, "addr": h.addr, "zone": h.zone, "state": h.state,
                "incarnation": h.incarnation, "generation": h.generation,
                "heartbeat": h.heartbeat, "last_seen_ms": h.last_seen_ms, "phi": h.phi,
                "state_changes": h.state_changes, "in_map": h.in_map,
            })
        })
        .collect();
    let targets: Vec<_> = s
        .hints
        .targets
        .iter()
        .map(|t| json!({"node_id": t.node_id, "pending": t.pending, "oldest_age_ms": t.oldest_age_ms}))
        .collect();
    json!({
        "node": {
            "node_id": i.node_id, "incarnation": i.incarnation, "cluster_id": i.cluster_id,
            "advertise": i.advertise, "version": i.version, "n": i.n, "r": i.r, "w": i.w,
            "fsync": i.fsync, "uptime_seconds": i.uptime_seconds,
        },
        "partition_map": {
            "epoch": s.map.epoch, "partitions": s.map.partitions,
            "replication": s.map.replication, "members": members,
        },
        "health": {"node_id": s.health.node_id, "map_epoch": s.health.map_epoch, "members": health},
        "hints": {"pending": s.hints.pending, "targets": targets},
        "anti_entropy": s.anti_entropy.as_ref().map(|ae| json!({
            "interval_ms": ae.interval_ms,
            "tombstone_grace_ms": ae.tombstone_grace_ms,
            "swept": ae.swept,
            "last_sweep_age_ms": ae.last_sweep_age_ms,
            "last": ae.last.as_ref().map(|l| json!({
                "compared": l.compared, "differing": l.differing, "pulled": l.pulled,
                "pushed": l.pushed, "bytes": l.bytes, "errors": l.errors,
            })),
            "background_rate_bytes_per_sec": ae.background_rate_bytes_per_sec,
        })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynamo_client::proto::{HintTarget, MapMember};

    fn status() -> Status {
        Status {
            info: NodeInfoResponse {
                node_id: "node-1".into(),
                incarnation: 2,
                cluster_id: "local".into(),
                advertise: "127.0.0.1:7101".into(),
                version: "0.1.0".into(),
                n: 3,
                r: 2,
                w: 2,
                fsync: "periodic".into(),
                uptime_seconds: 5,
                client_addr: String::new(),
            },
            map: PartitionMapResponse {
                epoch: 1,
                partitions: 16,
                replication: 3,
                members: vec![MapMember {
                    id: "node-1".into(),
                    addr: "127.0.0.1:7101".into(),
                    zone: String::new(),
                    owned: 16,
                    replicated: 16,
                }],
                owners: vec![0; 16],
            },
            health: ClusterHealthResponse {
                node_id: "node-1".into(),
                members: vec![
                    MemberHealth {
                        id: "node-1".into(),
                        addr: "127.0.0.1:7101".into(),
                        state: "self".into(),
                        incarnation: 2,
                        in_map: true,
                        ..MemberHealth::default()
                    },
                    MemberHealth {
                        id: "node-9".into(),
                        addr: "127.0.0.1:7109".into(),
                        state: "suspect".into(),
                        incarnation: 99,
                        last_seen_ms: 4200,
                        ..MemberHealth::default()
                    },
                ],
                map_epoch: 1,
            },
            hints: HintsResponse {
                pending: 3,
                targets: vec![HintTarget {
                    node_id: "node-2".into(),
                    pending: 3,
                    oldest_age_ms: 90,
                }],
            },
            anti_entropy: Some(AntiEntropyStateResponse {
                interval_ms: 30_000,
                tombstone_grace_ms: 3_600_000,
                swept: true,
                last_sweep_age_ms: 1200,
                last: Some(dynamo_client::proto::RepairResponse {
                    compared: 32,
                    differing: 1,
                    pulled: 4,
                    ..Default::default()
                }),
                background_rate_bytes_per_sec: 1 << 20,
            }),
        }
    }

    #[test]
    fn text_has_every_section() {
        let text = to_text(&status());
        for want in [
            "node node-1 (incarnation 2)",
            "epoch 1, Q=16",
            "self",
            "node-9",
            "suspect",
            "4200  (not in the map)",
            "hints pending: 3",
            "for node-2",
            "anti-entropy: every 30000 ms",
            "last sweep 1200 ms ago: 32 partition copies compared, 1 differed, 4 keys joined here",
        ] {
            assert!(text.contains(want), "{want:?} in\n{text}");
        }
    }

    #[test]
    fn json_has_every_section() {
        let v = to_json(&status());
        assert_eq!(v["node"]["node_id"], "node-1");
        assert_eq!(v["partition_map"]["members"][0]["owned"], 16);
        assert_eq!(v["health"]["members"][0]["state"], "self");
        assert_eq!(v["health"]["members"][1]["incarnation"], 99);
        assert_eq!(v["hints"]["targets"][0]["pending"], 3);
        assert_eq!(v["anti_entropy"]["last"]["pulled"], 4);
    }
}
