//! A local cluster of real `dynamo-node` processes on loopback, for development and
//! benchmarks (`dynamoctl cluster`).
//!
//! This module is the pure half: from a [`ClusterConfig`] it derives each node's id,
//! ports, data directory and command line ([`node_specs`]). The process half — spawning,
//! prefixing output, waiting for readiness, signal handling and orderly shutdown — is in
//! [`process`].
//!
//! Node `i` (1-based) is `node-i`, serves its client API (gRPC) on `base_port + i`, its
//! peer API on `peer_base_port + i` and HTTP on `http_base_port + i`, and keeps its data
//! in `data_dir/node-i`. Every node gets the full
//! member list, so the cluster forms without any other step.

pub mod process;
pub mod tls;

use std::path::PathBuf;

/// Parameters of a local cluster.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// Number of nodes, S.
    pub nodes: u32,
    /// Interface the nodes listen on.
    pub host: String,
    /// Client gRPC port of node `i` is `base_port + i`.
    pub base_port: u16,
    /// Peer gRPC port (replication, gossip, map changes) of node `i` is
    /// `peer_base_port + i`.
    pub peer_base_port: u16,
    /// HTTP port (health, metrics) of node `i` is `http_base_port + i`.
    pub http_base_port: u16,
    /// Parent of the nodes' data directories.
    pub data_dir: PathBuf,
    /// Cluster id passed to every node.
    pub cluster_id: String,
    /// Replication factor N.
    pub n: u32,
    /// Read quorum R.
    pub r: u32,
    /// Write quorum W.
    pub w: u32,
    /// Partition count Q.
    pub partitions: u32,
    /// Fsync policy: `periodic`, `always` or `never`.
    pub fsync: String,
    /// Request runtime threads of each node; 0 leaves the node's default (one per CPU).
    pub runtime_threads: usize,
    /// Run with TLS: certificates from a throwaway CA in `data_dir/tls` (see [`tls`]).
    pub tls: bool,
    /// More arguments appended to every node's command line.
    pub extra_args: Vec<String>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            nodes: 3,
            host: "127.0.0.1".into(),
            base_port: 7100,
            peer_base_port: 7140,
            http_base_port: 7180,
            data_dir: PathBuf::from(".cluster"),
            cluster_id: "local".into(),
            n: 3,
            r: 2,
            w: 2,
            partitions: 256,
            fsync: "periodic".into(),
            runtime_threads: 0,
            tls: false,
            extra_args: Vec::new(),
        }
    }
}

/// One node of the local cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSpec {
    /// Node id, `node-i`.
    pub id: String,
    /// Client gRPC address, `host:port`.
    pub grpc_addr: String,
    /// Peer gRPC address, `host:port`: the node's address in the partition map.
    pub peer_addr: String,
    /// HTTP address, `host:port`.
    pub http_addr: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Arguments of the `dynamo-node` command line.
    pub args: Vec<String>,
}

/// The file holding the cluster secret (the MAC key of causal contexts), made once in
/// the cluster's directory and kept across restarts (see `process::ensure_secret`).
pub fn secret_path(cfg: &ClusterConfig) -> PathBuf {
    cfg.data_dir.join("cluster-secret")
}

/// The nodes of the cluster and their command lines, after checking the parameters.
pub fn node_specs(cfg: &ClusterConfig) -> Result<Vec<NodeSpec>, String> {
    validate(cfg)?;
    let grpc = |i: u32| format!("{}:{}", cfg.host, cfg.base_port as u32 + i);
    let peer = |i: u32| format!("{}:{}", cfg.host, cfg.peer_base_port as u32 + i);
    let http = |i: u32| format!("{}:{}", cfg.host, cfg.http_base_port as u32 + i);
    let members = (1..=cfg.nodes)
        .map(|i| format!("node-{i}={}", peer(i)))
        .collect::<Vec<_>>()
        .join(",");
    Ok((1..=cfg.nodes)
        .map(|i| {
            let id = format!("node-{i}");
            let data_dir = cfg.data_dir.join(&id);
            let mut args: Vec<String> = [
                ("--node-id", id.clone()),
                ("--listen", grpc(i)),
                ("--peer-listen", peer(i)),
                ("--http-listen", http(i)),
                ("--data-dir", data_dir.display().to_string()),
                ("--cluster-id", cfg.cluster_id.clone()),
                (
                    "--cluster-secret-file",
                    secret_path(cfg).display().to_string(),
                ),
                ("--members", members.clone()),
                ("--n", cfg.n.to_string()),
                ("--r", cfg.r.to_string()),
                ("--w", cfg.w.to_string()),
                ("--partitions", cfg.partitions.to_string()),
                ("--fsync", cfg.fsync.clone()),
            ]
            .into_iter()
            .flat_map(|(flag, value)| [flag.to_string(), value])
            .collect();
            if cfg.runtime_threads > 0 {
                args.extend(["--runtime-threads".into(), cfg.runtime_threads.to_string()]);
            }
            if cfg.tls {
                let (cert, key) = tls::cert_and_key(cfg, &id);
                for (flag, path) in [
                    ("--tls-cert", cert),
                    ("--tls-key", key),
                    ("--tls-ca", tls::ca(cfg)),
                ] {
                    args.extend([flag.to_string(), path.display().to_string()]);
                }
            }
            args.extend(cfg.extra_args.iter().cloned());
            NodeSpec {
                id,
                grpc_addr: grpc(i),
                peer_addr: peer(i),
                http_addr: http(i),
                data_dir,
                args,
            }
        })
        .collect())
}

/// Runtime threads for each of `nodes` nodes sharing `cores` CPUs: their share, at least
/// one. Nodes that each take every core only add wake-ups between their threads.
pub fn threads_per_node(cores: usize, nodes: u32) -> usize {
    (cores / nodes.max(1) as usize).max(1)
}

fn validate(cfg: &ClusterConfig) -> Result<(), String> {
    if cfg.nodes == 0 {
        return Err("--nodes must be at least 1".into());
    }
    if cfg.n == 0 || cfg.n > cfg.nodes {
        return Err(format!(
            "--n {} must be between 1 and the number of nodes ({}); pass --n {}",
            cfg.n,
            cfg.nodes,
            cfg.n.clamp(1, cfg.nodes)
        ));
    }
    for (flag, q) in [("--r", cfg.r), ("--w", cfg.w)] {
        if q == 0 || q > cfg.n {
            return Err(format!("{flag} {q} must be between 1 and --n {}", cfg.n));
        }
    }
    if !["periodic", "always", "never"].contains(&cfg.fsync.as_str()) {
        return Err(format!(
            "--fsync {:?} must be periodic, always or never",
            cfg.fsync
        ));
    }
    let bases = [
        ("--base-port", "client gRPC", cfg.base_port as u32),
        ("--peer-base-port", "peer gRPC", cfg.peer_base_port as u32),
        ("--http-base-port", "HTTP", cfg.http_base_port as u32),
    ];
    for (flag, _, base) in bases {
        if base + cfg.nodes > u16::MAX as u32 {
            return Err(format!(
                "{flag} {base} + {} nodes runs past port 65535",
                cfg.nodes
            ));
        }
    }
    for (i, (flag_a, what_a, a)) in bases.iter().enumerate() {
        for (flag_b, what_b, b) in &bases[i + 1..] {
            if a.max(b) - a.min(b) < cfg.nodes {
                return Err(format!(
                    "{what_a} ports {}..={} and {what_b} ports {}..={} overlap; move \
                     {flag_a} or {flag_b}",
                    a + 1,
                    a + cfg.nodes,
                    b + 1,
                    b + cfg.nodes
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arg<'a>(spec: &'a NodeSpec, flag: &str) -> &'a str {
        let i = spec
            .args
            .iter()
            .position(|a| a == flag)
            .unwrap_or_else(|| panic!("{flag}"));
        &spec.args[i + 1]
    }

    #[test]
    fn default_cluster_command_lines() {
        let specs = node_specs(&ClusterConfig::default()).unwrap();
        assert_eq!(specs.len(), 3);
        let members = "node-1=127.0.0.1:7141,node-2=127.0.0.1:7142,node-3=127.0.0.1:7143";
        for (i, spec) in specs.iter().enumerate() {
            let n = i + 1;
            assert_eq!(spec.id, format!("node-{n}"));
            assert_eq!(spec.grpc_addr, format!("127.0.0.1:710{n}"));
            assert_eq!(spec.peer_addr, format!("127.0.0.1:714{n}"));
            assert_eq!(spec.http_addr, format!("127.0.0.1:718{n}"));
            assert_eq!(spec.data_dir, PathBuf::from(format!(".cluster/node-{n}")));
            assert_eq!(arg(spec, "--node-id"), spec.id);
            assert_eq!(arg(spec, "--listen"), spec.grpc_addr);
            assert_eq!(arg(spec, "--peer-listen"), spec.peer_addr);
            assert_eq!(arg(spec, "--http-listen"), spec.http_addr);
            assert_eq!(arg(spec, "--data-dir"), format!(".cluster/node-{n}"));
            assert_eq!(arg(spec, "--members"), members);
            assert_eq!(arg(spec, "--cluster-id"), "local");
            assert_eq!(
                arg(spec, "--cluster-secret-file"),
                ".cluster/cluster-secret"
            );
            assert_eq!(arg(spec, "--n"), "3");
            assert_eq!(arg(spec, "--r"), "2");
            assert_eq!(arg(spec, "--w"), "2");
            assert_eq!(arg(spec, "--partitions"), "256");
            assert_eq!(arg(spec, "--fsync"), "periodic");
        }
    }

    #[test]
    fn settings_and_extra_args_are_forwarded() {
        let cfg = ClusterConfig {
            nodes: 5,
            base_port: 9000,
            peer_base_port: 9050,
            http_base_port: 9100,
            data_dir: PathBuf::from("/tmp/c"),
            n: 5,
            r: 3,
            w: 1,
            partitions: 64,
            fsync: "always".into(),
            runtime_threads: 2,
            extra_args: vec!["--request-timeout-ms".into(), "500".into()],
            ..ClusterConfig::default()
        };
        let specs = node_specs(&cfg).unwrap();
        let last = &specs[4];
        assert_eq!(last.id, "node-5");
        assert_eq!(last.grpc_addr, "127.0.0.1:9005");
        assert_eq!(last.peer_addr, "127.0.0.1:9055");
        assert_eq!(last.http_addr, "127.0.0.1:9105");
        assert_eq!(arg(last, "--fsync"), "always");
        assert_eq!(arg(last, "--partitions"), "64");
        assert_eq!(
            (arg(last, "--n"), arg(last, "--r"), arg(last, "--w")),
            ("5", "3", "1")
        );
        assert_eq!(
            last.args[last.args.len() - 2..],
            ["--request-timeout-ms", "500"]
        );
        assert_eq!(arg(last, "--members").split(',').count(), 5);
        assert_eq!(arg(last, "--runtime-threads"), "2");
        let default = node_specs(&ClusterConfig::default()).unwrap();
        assert!(
            !default[0].args.iter().any(|a| a == "--runtime-threads"),
            "0 leaves the node's own default"
        );
    }

    #[test]
    fn nodes_share_the_cores() {
        assert_eq!(threads_per_node(2, 3), 1);
        assert_eq!(threads_per_node(8, 3), 2);
        assert_eq!(threads_per_node(16, 4), 4);
        assert_eq!(threads_per_node(1, 5), 1);
    }

    #[test]
    fn bad_settings_are_rejected_with_the_flag_named() {
        let base = ClusterConfig::default();
        let cases = [
            (
                ClusterConfig {
                    nodes: 0,
                    ..base.clone()
                },
                "--nodes",
            ),
            (
                ClusterConfig {
                    nodes: 1,
                    ..base.clone()
                },
                "pass --n 1",
            ),
            (
                ClusterConfig {
                    r: 4,
                    ..base.clone()
                },
                "--r 4",
            ),
            (
                ClusterConfig {
                    w: 0,
                    ..base.clone()
                },
                "--w 0",
            ),
            (
                ClusterConfig {
                    fsync: "sometimes".into(),
                    ..base.clone()
                },
                "--fsync",
            ),
            (
                ClusterConfig {
                    base_port: 65534,
                    ..base.clone()
                },
                "--base-port",
            ),
            (
                ClusterConfig {
                    http_base_port: 7102,
                    ..base.clone()
                },
                "overlap",
            ),
            (
                ClusterConfig {
                    peer_base_port: 7181,
                    ..base.clone()
                },
                "peer gRPC ports 7182..=7184 and HTTP ports 7181..=7183 overlap",
            ),
        ];
        for (cfg, want) in cases {
            let err = node_specs(&cfg).unwrap_err();
            assert!(err.contains(want), "{err:?} should mention {want:?}");
        }
    }
}
