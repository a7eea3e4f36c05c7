//! `dynamoctl cluster`: flags of the local cluster launcher (the launcher is
//! `dynamo_client::local_cluster`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use dynamo_client::bench::parse_duration;
use dynamo_client::local_cluster::process::{default_node_bin, LaunchOptions};
use dynamo_client::local_cluster::{self, ClusterConfig};

/// Arguments of `cluster`.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: u32,
    /// Node i serves its client API (gRPC) on base-port + i.
    #[arg(long, default_value_t = 7100)]
    pub base_port: u16,
    /// Node i serves its peer API (replication, gossip, map changes) on
    /// peer-base-port + i (default: base-port + 40).
    #[arg(long)]
    pub peer_base_port: Option<u16>,
    /// Node i serves HTTP (/readyz, /metrics) on http-base-port + i.
    #[arg(long, default_value_t = 7180)]
    pub http_base_port: u16,
    /// Interface to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Parent directory of the nodes' data directories (node-1, node-2, ...).
    #[arg(long, default_value = "./.cluster")]
    pub data_dir: PathBuf,
    /// Delete the nodes' data directories first.
    #[arg(long)]
    pub wipe: bool,
    /// Cluster id.
    #[arg(long, default_value = "local")]
    pub cluster_id: String,
    /// Replication factor N.
    #[arg(long, default_value_t = 3)]
    pub n: u32,
    /// Read quorum R.
    #[arg(long, default_value_t = 2)]
    pub r: u32,
    /// Write quorum W.
    #[arg(long, default_value_t = 2)]
    pub w: u32,
    /// Partition count Q (a power of two, 16..=4096).
    #[arg(long, default_value_t = 256)]
    pub partitions: u32,
    /// When the nodes sync their write-ahead log: periodic, always or never.
    #[arg(long, default_value = "periodic")]
    pub fsync: String,
    /// Request runtime threads of each node (default: the machine's cores divided among the
    /// nodes, at least one; 0 lets each node take every core).
    #[arg(long)]
    pub runtime_threads: Option<usize>,
    /// The dynamo-node executable (default: next to dynamoctl).
    #[arg(long)]
    pub node_bin: Option<PathBuf>,
    /// Time allowed for every node to answer /readyz with 200.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub ready_timeout: Duration,
    /// Run with TLS: a throwaway CA and certificates in <data-dir>/tls, made once; the
    /// peer ports take only certificates of that CA.
    #[arg(long)]
    pub tls: bool,
    /// More arguments for every node, after `--` (e.g. -- --max-value-bytes 4096).
    #[arg(last = true)]
    pub node_args: Vec<String>,
}

/// Runs the local cluster until SIGINT/SIGTERM.
pub async fn run(args: &ClusterArgs) -> anyhow::Result<ExitCode> {
    let cfg = ClusterConfig {
        nodes: args.nodes,
        host: args.host.clone(),
        base_port: args.base_port,
        peer_base_port: args
            .peer_base_port
            .unwrap_or(args.base_port.saturating_add(40)),
        http_base_port: args.http_base_port,
        data_dir: args.data_dir.clone(),
        cluster_id: args.cluster_id.clone(),
        n: args.n,
        r: args.r,
        w: args.w,
        partitions: args.partitions,
        fsync: args.fsync.clone(),
        runtime_threads: args.runtime_threads.unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            local_cluster::threads_per_node(cores, args.nodes)
        }),
        tls: args.tls,
        extra_args: args.node_args.clone(),
    };
    let opts = LaunchOptions {
        node_bin: args.node_bin.clone().unwrap_or_else(default_node_bin),
        wipe: args.wipe,
        ready_timeout: args.ready_timeout,
        ctl_name: std::env::args()
            .next()
            .unwrap_or_else(|| "dynamoctl".into()),
    };
    local_cluster::process::run(&cfg, &opts).await?;
    Ok(ExitCode::SUCCESS)
}
