//! Node configuration: an optional YAML file, overridden by flags and `DYNAMO_*`
//! environment variables, validated once after loading.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use dynamo_core::context::MIN_SECRET_BYTES;
use dynamo_core::limits::{DEFAULT_MAX_SET_BYTES, DEFAULT_MAX_VALUE_BYTES, MAX_KEY_BYTES};
use dynamo_core::ring::{validate_partition_count, Member, DEFAULT_PARTITIONS};
use serde::{Deserialize, Serialize};

/// Room for a context (at most `MAX_CONTEXT_ACTORS` actors and `MAX_CONTEXT_DOTS` dots,
/// a few tens of bytes each) and the message's own fields, in the message size limits.
const CONTEXT_AND_FRAMING_BYTES: usize = 256 << 10;

/// The most bytes a batch of replica calls or a chunk of a transfer or repair holds
/// (a single larger item still goes alone): see `network::BatchLimits` and
/// `change::transfer`.
pub const PEER_BATCH_BYTES: usize = 4 << 20;

/// When writes reach the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// Every write is in the WAL (OS page cache) before it is acknowledged, and the WAL is
    /// synced to disk every `fsync_interval_ms`. Survives a process crash; a power loss
    /// of every acknowledging replica within the interval can lose the last writes.
    Periodic,
    /// Every write is synced to disk before it is acknowledged (group commit: concurrent
    /// writes share one sync).
    Always,
    /// Never sync explicitly; the OS writes back when it likes. Survives a process crash.
    Never,
}

/// The secret every node of a cluster shares: the key of the MAC on causal contexts.
/// Its `Debug` never shows it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ClusterSecret(Vec<u8>);

impl ClusterSecret {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl From<&str> for ClusterSecret {
    fn from(s: &str) -> Self {
        Self(s.as_bytes().to_vec())
    }
}

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(<redacted>)")
    }
}

/// Replication settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replication {
    /// Replicas of every key (N).
    pub n: u32,
    /// Replicas a read waits for (R), unless the request overrides it.
    pub r: u32,
    /// Replicas a write waits for (W), unless the request overrides it.
    pub w: u32,
}

impl Default for Replication {
    fn default() -> Self {
        Self { n: 3, r: 2, w: 2 }
    }
}

/// The configuration of one node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Stable node id (e.g. the StatefulSet pod name).
    pub node_id: String,
    /// gRPC listen address of the client API: `Kv`, `Health` and the `Admin` calls
    /// that change nothing. Also the peer API's, unless `peer_listen` is set.
    pub listen: SocketAddr,
    /// Address clients reach the client API at; defaults to `listen`.
    pub advertise: Option<String>,
    /// gRPC listen address of the peer API: replication (`Replica`), gossip,
    /// anti-entropy, transfers and the `Admin` calls that change the cluster (commit,
    /// finalize, abort, repair), besides everything the client API serves (a peer
    /// forwards client requests). Keeping it apart lets a NetworkPolicy keep clients off
    /// it. Unset, the peer API is served on `listen` too (for development only).
    pub peer_listen: Option<SocketAddr>,
    /// Address peers reach the peer API at: what gossip spreads and maps hold. Defaults
    /// to `peer_listen`, or to `advertise` when the peer API shares the client port.
    pub peer_advertise: Option<String>,
    /// HTTP listen address for `/healthz`, `/readyz` and `/metrics`.
    pub http_listen: SocketAddr,
    /// Where RocksDB keeps its files.
    pub data_dir: PathBuf,
    /// Cluster name, required: contexts and peers of another cluster are refused (two
    /// clusters left on one default name would accept each other's).
    pub cluster_id: String,
    /// A file holding the cluster secret (surrounding whitespace ignored). Instead, the
    /// secret itself may be in the `DYNAMO_CLUSTER_SECRET` environment variable (as from
    /// a Kubernetes Secret); it is never taken on the command line, where `ps` shows it.
    pub cluster_secret_file: Option<PathBuf>,
    /// The key of the MAC on causal contexts, shared by every node of the cluster (at
    /// least 16 bytes), loaded from `cluster_secret_file` or `DYNAMO_CLUSTER_SECRET`.
    #[serde(skip)]
    pub cluster_secret: ClusterSecret,
    /// Every member of the cluster, this node included: the node plans the initial
    /// partition map from them. Leave empty to start from `seeds` instead.
    pub members: Vec<Member>,
    /// Addresses (`host:port`) of nodes to learn the cluster from by gossip. A node with
    /// no `members` asks them for the partition map before it serves; a node with both
    /// also gossips with the seeds.
    pub seeds: Vec<String>,
    /// How often a node gossips (and counts its heartbeat up), in milliseconds.
    pub gossip_interval_ms: u64,
    /// How many random peers a node gossips with each round.
    pub gossip_fanout: usize,
    /// The failure detector's threshold: a peer whose heartbeats are late enough that
    /// phi (-log10 of the chance they are merely late) reaches it is suspected, and
    /// coordinators and hinted handoff pass it over until it is heard from again.
    pub suspect_phi: f64,
    /// A peer silent for this long is reported down (it keeps its partitions).
    pub down_after_ms: u64,
    /// Replication settings.
    pub replication: Replication,
    /// Number of partitions Q (a power of two in 16..=4096), fixed at cluster creation.
    pub partitions: u32,
    /// Largest value accepted, in bytes.
    pub max_value_bytes: usize,
    /// Largest encoded sibling set a put may leave, in bytes (all siblings' values plus
    /// their causal history): a put that would exceed it is refused, so that a key can
    /// always still be read and merged. Raised to twice `max_value_bytes` when lower, so
    /// that a value and a concurrent sibling of it always fit.
    pub max_set_bytes: usize,
    /// Most connections one client address may hold open to each gRPC port at once;
    /// more are closed as soon as they are accepted.
    pub max_connections_per_client: usize,
    /// Most requests (a session stream counts as one) in flight on one connection at
    /// once; more wait for one to finish.
    pub max_requests_per_connection: usize,
    /// When writes reach the disk.
    pub fsync: FsyncPolicy,
    /// WAL sync interval for the `periodic` policy.
    pub fsync_interval_ms: u64,
    /// With the `always` policy, the longest time between the starts of two WAL syncs
    /// while writes keep arriving: writes that arrive meanwhile share the next sync (0:
    /// sync as soon as a write is applied). The next sync starts sooner, but at least
    /// 1 ms after the previous one, once as many writes are pending as that one covered
    /// (see `store::commit`). An idle node syncs at once.
    pub fsync_group_window_us: u64,
    /// How long a coordinator waits for R or W replicas.
    pub request_timeout_ms: u64,
    /// RocksDB block cache size.
    pub cache_bytes: usize,
    /// Threads of the request runtime; 0 means one per CPU the process may use (cgroup
    /// quotas included). Several nodes sharing a few cores each run best with fewer: every
    /// extra thread adds wake-ups that cost more CPU than it adds.
    pub runtime_threads: usize,
    /// How often this node compares its partitions with their other replicas' Merkle
    /// trees and joins what differs (0: never in the background; `dynamoctl repair`
    /// still works).
    pub anti_entropy_interval_ms: u64,
    /// How long a deleted key's tombstones must have stayed unchanged before the
    /// partition's owner may purge them (once every member vouches that no older version
    /// is left anywhere; 0: tombstones are kept forever). Passes run every half of it,
    /// at least every second and at most every 10 minutes.
    pub tombstone_grace_ms: u64,
    /// The most bytes per second hinted handoff and anti-entropy move together; they
    /// slow down (to 1/256 of it at least) while the p99 latency of client requests
    /// coordinated here is above `background_p99_target_ms`, or above
    /// `background_p99_relative` times its usual p99 (see [`crate::budget`]).
    pub background_bytes_per_sec: u64,
    pub background_p99_target_ms: u64,
    /// 0: only the fixed target.
    pub background_p99_relative: f64,
    /// The node's certificate chain (PEM). With `tls_key` and `tls_ca`, both ports speak
    /// TLS, and the peer port mutual TLS. The certificate must name this node's identity
    /// (`dynamo://<cluster_id>/node/<name>` as a URI subject alternative name) and allow
    /// both server and client authentication: nodes present it when they dial peers.
    pub tls_cert: Option<PathBuf>,
    /// The private key of `tls_cert` (PEM).
    pub tls_key: Option<PathBuf>,
    /// The cluster's CA bundle (PEM): peer and client certificates must chain to it.
    pub tls_ca: Option<PathBuf>,
    /// Certificate revocation lists (PEM) of the CA: revoked certificates are refused.
    pub tls_crl: Vec<PathBuf>,
    /// How often the TLS files (and the authorization file) are checked for changes and
    /// reloaded, without a restart.
    pub tls_reload_interval_ms: u64,
    /// The authorization file (YAML: `anonymous` role and `users` with roles and token
    /// hashes; see `dynamo_core::access`). Unset, every caller may call everything but the
    /// calls that are for nodes.
    pub auth_file: Option<PathBuf>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            node_id: String::new(),
            listen: "0.0.0.0:7100".parse().expect("valid"),
            advertise: None,
            peer_listen: None,
            peer_advertise: None,
            http_listen: "0.0.0.0:7180".parse().expect("valid"),
            data_dir: PathBuf::from("/var/lib/dynamo"),
            cluster_id: String::new(),
            cluster_secret_file: None,
            cluster_secret: ClusterSecret::default(),
            members: Vec::new(),
            seeds: Vec::new(),
            gossip_interval_ms: 1000,
            gossip_fanout: 2,
            suspect_phi: 8.0,
            down_after_ms: 10_000,
            replication: Replication::default(),
            partitions: DEFAULT_PARTITIONS,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            max_set_bytes: DEFAULT_MAX_SET_BYTES,
            max_connections_per_client: 256,
            max_requests_per_connection: 1024,
            fsync: FsyncPolicy::Periodic,
            fsync_interval_ms: 100,
            fsync_group_window_us: 3000,
            request_timeout_ms: 1000,
            cache_bytes: 64 << 20,
            runtime_threads: 0,
            anti_entropy_interval_ms: 30_000,
            tombstone_grace_ms: 3_600_000,
            background_bytes_per_sec: 64 << 20,
            background_p99_target_ms: 25,
            background_p99_relative: 1.25,
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
            tls_crl: Vec::new(),
            tls_reload_interval_ms: 10_000,
            auth_file: None,
        }
    }
}

/// Why a configuration is invalid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is invalid: {source}")]
    Parse {
        path: PathBuf,
        source: serde_yaml::Error,
    },
    #[error("cannot read the cluster secret file {path}: {source}")]
    ReadSecret {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid member {0:?}: expected ID=HOST:PORT or ID=HOST:PORT@ZONE")]
    BadMember(String),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Command-line flags; each overrides the YAML file and has a `DYNAMO_*` variable.
#[derive(Debug, Parser)]
#[command(name = "dynamo-node", version, about = "A Dynamo-style storage node")]
pub struct Args {
    /// YAML configuration file (fields as in NodeConfig).
    #[arg(long, env = "DYNAMO_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(long, env = "DYNAMO_NODE_ID")]
    pub node_id: Option<String>,
    #[arg(long, env = "DYNAMO_LISTEN")]
    pub listen: Option<SocketAddr>,
    #[arg(long, env = "DYNAMO_ADVERTISE")]
    pub advertise: Option<String>,
    /// Listen address of the peer API (replication, gossip, map changes); unset, it is
    /// served on --listen too.
    #[arg(long, env = "DYNAMO_PEER_LISTEN")]
    pub peer_listen: Option<SocketAddr>,
    /// Address peers reach the peer API at (defaults to --peer-listen).
    #[arg(long, env = "DYNAMO_PEER_ADVERTISE")]
    pub peer_advertise: Option<String>,
    #[arg(long, env = "DYNAMO_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    #[arg(long, env = "DYNAMO_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    #[arg(long, env = "DYNAMO_CLUSTER_ID")]
    pub cluster_id: Option<String>,
    /// A file holding the cluster secret (or set DYNAMO_CLUSTER_SECRET to the secret).
    #[arg(long, env = "DYNAMO_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<PathBuf>,
    /// Members as `ID=HOST:PORT[@ZONE]`, comma-separated.
    #[arg(long, env = "DYNAMO_MEMBERS", value_delimiter = ',')]
    pub members: Option<Vec<String>>,
    /// Seeds as `HOST:PORT`, comma-separated: nodes to learn the cluster from by gossip
    /// (instead of, or besides, --members).
    #[arg(long, env = "DYNAMO_SEEDS", value_delimiter = ',')]
    pub seeds: Option<Vec<String>>,
    /// Milliseconds between gossip rounds.
    #[arg(long, env = "DYNAMO_GOSSIP_INTERVAL_MS")]
    pub gossip_interval_ms: Option<u64>,
    /// Peers per gossip round.
    #[arg(long, env = "DYNAMO_GOSSIP_FANOUT")]
    pub gossip_fanout: Option<usize>,
    /// Failure detector threshold (phi) for suspecting a peer.
    #[arg(long, env = "DYNAMO_SUSPECT_PHI")]
    pub suspect_phi: Option<f64>,
    /// Milliseconds of silence after which a peer is reported down.
    #[arg(long, env = "DYNAMO_DOWN_AFTER_MS")]
    pub down_after_ms: Option<u64>,
    #[arg(long, env = "DYNAMO_N")]
    pub n: Option<u32>,
    #[arg(long, env = "DYNAMO_R")]
    pub r: Option<u32>,
    #[arg(long, env = "DYNAMO_W")]
    pub w: Option<u32>,
    #[arg(long, env = "DYNAMO_PARTITIONS")]
    pub partitions: Option<u32>,
    #[arg(long, env = "DYNAMO_MAX_VALUE_BYTES")]
    pub max_value_bytes: Option<usize>,
    /// Largest sibling set (bytes, encoded) a put may leave; raised to twice the largest value.
    #[arg(long, env = "DYNAMO_MAX_SET_BYTES")]
    pub max_set_bytes: Option<usize>,
    /// Most connections open at once from one client address, per gRPC port.
    #[arg(long, env = "DYNAMO_MAX_CONNECTIONS_PER_CLIENT")]
    pub max_connections_per_client: Option<usize>,
    /// Most requests in flight on one connection (a session stream counts as one).
    #[arg(long, env = "DYNAMO_MAX_REQUESTS_PER_CONNECTION")]
    pub max_requests_per_connection: Option<usize>,
    #[arg(long, env = "DYNAMO_FSYNC", value_enum)]
    pub fsync: Option<FsyncPolicy>,
    #[arg(long, env = "DYNAMO_FSYNC_INTERVAL_MS")]
    pub fsync_interval_ms: Option<u64>,
    /// With --fsync always: at most this many microseconds between WAL syncs under load
    /// (1 ms once as many writes wait as the previous sync covered).
    #[arg(long, env = "DYNAMO_FSYNC_GROUP_WINDOW_US")]
    pub fsync_group_window_us: Option<u64>,
    #[arg(long, env = "DYNAMO_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,
    #[arg(long, env = "DYNAMO_CACHE_BYTES")]
    pub cache_bytes: Option<usize>,
    /// Request runtime threads; 0 = one per available CPU.
    #[arg(long, env = "DYNAMO_RUNTIME_THREADS")]
    pub runtime_threads: Option<usize>,
    /// Milliseconds between background anti-entropy sweeps; 0 = none.
    #[arg(long, env = "DYNAMO_ANTI_ENTROPY_INTERVAL_MS")]
    pub anti_entropy_interval_ms: Option<u64>,
    /// Milliseconds a tombstone stays unchanged before it may be purged; 0 = never purge.
    #[arg(long, env = "DYNAMO_TOMBSTONE_GRACE_MS")]
    pub tombstone_grace_ms: Option<u64>,
    /// Bytes per second background work (hints, anti-entropy) may move at most.
    #[arg(long, env = "DYNAMO_BACKGROUND_BYTES_PER_SEC")]
    pub background_bytes_per_sec: Option<u64>,
    /// Client p99 (ms) above which background work always backs off.
    #[arg(long, env = "DYNAMO_BACKGROUND_P99_TARGET_MS")]
    pub background_p99_target_ms: Option<u64>,
    /// Background work also backs off while the client p99 is above this multiple of its
    /// usual p99 (0: only the fixed target).
    #[arg(long, env = "DYNAMO_BACKGROUND_P99_RELATIVE")]
    pub background_p99_relative: Option<f64>,
    /// The node's certificate chain (PEM); with --tls-key and --tls-ca turns TLS on.
    #[arg(long, env = "DYNAMO_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The node certificate's private key (PEM).
    #[arg(long, env = "DYNAMO_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// The cluster's CA bundle (PEM).
    #[arg(long, env = "DYNAMO_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Certificate revocation lists (PEM), comma-separated.
    #[arg(long, env = "DYNAMO_TLS_CRL", value_delimiter = ',')]
    pub tls_crl: Option<Vec<PathBuf>>,
    /// Milliseconds between checks of the TLS and authorization files for changes.
    #[arg(long, env = "DYNAMO_TLS_RELOAD_INTERVAL_MS")]
    pub tls_reload_interval_ms: Option<u64>,
    /// The authorization file (YAML: roles of users, tokens' hashes).
    #[arg(long, env = "DYNAMO_AUTH_FILE")]
    pub auth_file: Option<PathBuf>,
}

/// Parses `ID=HOST:PORT[@ZONE]`.
pub fn parse_member(s: &str) -> Result<Member, ConfigError> {
    let bad = || ConfigError::BadMember(s.to_owned());
    let (id, rest) = s.trim().split_once('=').ok_or_else(bad)?;
    let (addr, zone) = match rest.split_once('@') {
        Some((a, z)) => (a, Some(z.to_owned())),
        None => (rest, None),
    };
    if id.is_empty() || !addr.contains(':') {
        return Err(bad());
    }
    Ok(Member {
        id: id.to_owned(),
        addr: addr.to_owned(),
        zone,
    })
}

impl NodeConfig {
    /// The background budget's settings.
    pub fn budget(&self) -> crate::budget::BudgetConfig {
        let max = self.background_bytes_per_sec.max(1024);
        crate::budget::BudgetConfig {
            max_bytes_per_sec: max,
            min_bytes_per_sec: (max / 256).max(1024),
            p99_target: Duration::from_millis(self.background_p99_target_ms.max(1)),
            relative_target: self.background_p99_relative,
        }
    }

    /// Loads the YAML file (if any), applies the flags and validates the result.
    pub fn load(args: Args) -> Result<Self, ConfigError> {
        let mut cfg = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                serde_yaml::from_str(&text).map_err(|source| ConfigError::Parse {
                    path: path.clone(),
                    source,
                })?
            }
            None => NodeConfig::default(),
        };
        cfg.apply(args)?;
        cfg.max_set_bytes = cfg.max_set_bytes.max(cfg.max_value_bytes.saturating_mul(2));
        cfg.load_secret(std::env::var("DYNAMO_CLUSTER_SECRET").ok())?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Loads the cluster secret from `env` (the value of `DYNAMO_CLUSTER_SECRET`), else
    /// from `cluster_secret_file`.
    fn load_secret(&mut self, env: Option<String>) -> Result<(), ConfigError> {
        let text = match (
            env.filter(|s| !s.trim().is_empty()),
            &self.cluster_secret_file,
        ) {
            (Some(value), _) => value,
            (None, Some(path)) => {
                std::fs::read_to_string(path).map_err(|source| ConfigError::ReadSecret {
                    path: path.clone(),
                    source,
                })?
            }
            (None, None) => return Ok(()),
        };
        self.cluster_secret = ClusterSecret::from(text.trim());
        Ok(())
    }

    fn apply(&mut self, a: Args) -> Result<(), ConfigError> {
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = a.$field { self.$field = v; } )* };
        }
        set!(
            node_id,
            listen,
            http_listen,
            data_dir,
            cluster_id,
            partitions,
            max_value_bytes,
            max_set_bytes,
            max_connections_per_client,
            max_requests_per_connection
        );
        set!(
            seeds,
            gossip_interval_ms,
            gossip_fanout,
            suspect_phi,
            down_after_ms
        );
        set!(
            fsync,
            fsync_interval_ms,
            fsync_group_window_us,
            request_timeout_ms,
            cache_bytes,
            runtime_threads,
            anti_entropy_interval_ms,
            tombstone_grace_ms,
            background_bytes_per_sec,
            background_p99_target_ms,
            background_p99_relative,
            tls_crl,
            tls_reload_interval_ms
        );
        for (field, value) in [
            (&mut self.tls_cert, a.tls_cert),
            (&mut self.tls_key, a.tls_key),
            (&mut self.tls_ca, a.tls_ca),
            (&mut self.auth_file, a.auth_file),
        ] {
            if value.is_some() {
                *field = value;
            }
        }
        if a.cluster_secret_file.is_some() {
            self.cluster_secret_file = a.cluster_secret_file;
        }
        if a.advertise.is_some() {
            self.advertise = a.advertise;
        }
        if a.peer_listen.is_some() {
            self.peer_listen = a.peer_listen;
        }
        if a.peer_advertise.is_some() {
            self.peer_advertise = a.peer_advertise;
        }
        if let Some(n) = a.n {
            self.replication.n = n;
        }
        if let Some(r) = a.r {
            self.replication.r = r;
        }
        if let Some(w) = a.w {
            self.replication.w = w;
        }
        if let Some(ms) = a.members {
            self.members = ms
                .iter()
                .map(|m| parse_member(m))
                .collect::<Result<_, _>>()?;
        }
        Ok(())
    }

    /// Checks the invariants a node relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.node_id.is_empty() {
            return invalid("node_id is empty (set --node-id or DYNAMO_NODE_ID)".into());
        }
        if self.cluster_id.is_empty() {
            return invalid(
                "cluster_id is not set (--cluster-id or DYNAMO_CLUSTER_ID): every cluster \
                 needs a name of its own, or clusters left on one default would accept \
                 each other's contexts and peers"
                    .into(),
            );
        }
        let secret = self.cluster_secret.as_bytes().len();
        if secret < MIN_SECRET_BYTES {
            return invalid(format!(
                "the cluster secret is {} (--cluster-secret-file, \
                 DYNAMO_CLUSTER_SECRET_FILE or DYNAMO_CLUSTER_SECRET): every node of a \
                 cluster needs the same secret of at least {MIN_SECRET_BYTES} bytes, the \
                 key of the MAC on its causal contexts (make one with `openssl rand -hex 32`)",
                if secret == 0 {
                    "not set".to_owned()
                } else {
                    format!("only {secret} bytes")
                }
            ));
        }
        validate_partition_count(self.partitions)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let Replication { n, r, w } = self.replication;
        if n == 0 || r == 0 || w == 0 || r > n || w > n {
            return invalid(format!("replication n={n} r={r} w={w}: need 1 <= r,w <= n"));
        }
        self.validate_membership()?;
        if self.listen.port() != 0 && self.listen == self.http_listen {
            return invalid(format!(
                "listen and http_listen are both {}: gRPC and HTTP need their own ports",
                self.listen
            ));
        }
        if self.peer_advertise.is_some() && self.peer_listen.is_none() {
            return invalid(
                "peer_advertise is set but peer_listen is not: the peer API then shares \
                 the client port, advertised by `advertise`"
                    .into(),
            );
        }
        if let Some(peer) = self.peer_listen {
            if peer.port() != 0 && (peer == self.listen || peer == self.http_listen) {
                return invalid(format!(
                    "peer_listen {peer} is also the client or HTTP listen address: the \
                     peer API needs a port of its own (or leave peer_listen unset to serve \
                     it on listen)"
                ));
            }
        }
        if !(self.background_p99_relative == 0.0 || self.background_p99_relative >= 1.0) {
            return invalid(format!(
                "background_p99_relative is {}: 0 (off) or a multiple of at least 1.0 of \
                 the usual p99 (below 1 background work would stop for good)",
                self.background_p99_relative
            ));
        }
        if self.max_value_bytes == 0 {
            return invalid("max_value_bytes must be positive".into());
        }
        if self.max_set_bytes / 2 < self.max_value_bytes {
            return invalid(format!(
                "max_set_bytes {} is less than twice max_value_bytes {}: a value and a \
                 concurrent sibling of it must fit in one key",
                self.max_set_bytes, self.max_value_bytes
            ));
        }
        if self.request_timeout_ms == 0 {
            return invalid("request_timeout_ms must be positive".into());
        }
        if self.max_connections_per_client == 0 || self.max_requests_per_connection == 0 {
            return invalid(
                "max_connections_per_client and max_requests_per_connection must be positive"
                    .into(),
            );
        }
        self.validate_tls()?;
        if self.fsync_group_window_us >= self.request_timeout_ms.saturating_mul(1000) / 2 {
            return invalid(format!(
                "fsync_group_window_us {} is not well below the request timeout ({} ms): \
                 synced writes would time out waiting for their sync",
                self.fsync_group_window_us, self.request_timeout_ms
            ));
        }
        Ok(())
    }

    /// Checks that TLS is all on or all off.
    fn validate_tls(&self) -> Result<(), ConfigError> {
        let given = [
            ("tls_cert", self.tls_cert.is_some()),
            ("tls_key", self.tls_key.is_some()),
            ("tls_ca", self.tls_ca.is_some()),
        ];
        let missing: Vec<&str> = given.iter().filter(|g| !g.1).map(|g| g.0).collect();
        if !missing.is_empty() && missing.len() < given.len() {
            return Err(ConfigError::Invalid(format!(
                "TLS needs tls_cert, tls_key and tls_ca together; {} missing",
                missing.join(" and ")
            )));
        }
        if self.auth_file.is_some() && self.tls_ca.is_none() {
            return Err(ConfigError::Invalid(
                "auth_file is set but TLS is off: bearer tokens would cross the network in \
                 plaintext, and nodes (which forward requests) could not be told from \
                 clients; set tls_cert, tls_key and tls_ca too"
                    .into(),
            ));
        }
        if !self.tls_crl.is_empty() && self.tls_ca.is_none() {
            return Err(ConfigError::Invalid(
                "tls_crl is set but TLS is off (no tls_cert, tls_key, tls_ca)".into(),
            ));
        }
        if self.tls_reload_interval_ms == 0 {
            return Err(ConfigError::Invalid(
                "tls_reload_interval_ms must be positive".into(),
            ));
        }
        Ok(())
    }

    /// The TLS files, when TLS is on.
    pub fn tls_files(&self) -> Option<crate::tls::TlsFiles> {
        Some(crate::tls::TlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            ca: self.tls_ca.clone()?,
            crls: self.tls_crl.clone(),
        })
    }

    /// Checks members, seeds and gossip settings.
    fn validate_membership(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let n = self.replication.n;
        if self.members.is_empty() {
            if self.seeds.is_empty() {
                return invalid(
                    "no members and no seeds: give every member (--members) or the \
                     addresses of nodes to join through (--seeds)"
                        .into(),
                );
            }
        } else {
            if n as usize > self.members.len() {
                return invalid(format!(
                    "replication n={n} needs at least {n} members; {} are listed",
                    self.members.len()
                ));
            }
            if !self.members.iter().any(|m| m.id == self.node_id) {
                return invalid(format!(
                    "node_id {:?} is not among the members",
                    self.node_id
                ));
            }
        }
        if let Some(bad) = self.seeds.iter().find(|s| !s.contains(':')) {
            return invalid(format!("seed {bad:?} is not HOST:PORT"));
        }
        if self.gossip_interval_ms == 0 || self.gossip_fanout == 0 {
            return invalid("gossip_interval_ms and gossip_fanout must be positive".into());
        }
        if !self.suspect_phi.is_finite() || self.suspect_phi <= 0.0 {
            return invalid(format!("suspect_phi {} must be positive", self.suspect_phi));
        }
        if self.down_after_ms < 2 * self.gossip_interval_ms {
            return invalid(format!(
                "down_after_ms {} is less than two gossip rounds ({} ms each)",
                self.down_after_ms, self.gossip_interval_ms
            ));
        }
        Ok(())
    }

    /// Time between gossip rounds.
    pub fn gossip_interval(&self) -> Duration {
        Duration::from_millis(self.gossip_interval_ms)
    }

    /// The address clients reach this node's client API at.
    pub fn client_addr(&self) -> String {
        self.advertise
            .clone()
            .unwrap_or_else(|| self.listen.to_string())
    }

    /// The address peers reach this node's peer API at: the one gossip spreads and
    /// maps hold.
    pub fn peer_addr(&self) -> String {
        match self.peer_listen {
            Some(listen) => self
                .peer_advertise
                .clone()
                .unwrap_or_else(|| listen.to_string()),
            None => self.client_addr(),
        }
    }

    /// The client address gossip spreads: empty when it is the peer address.
    pub fn gossiped_client_addr(&self) -> String {
        match self.split_ports() {
            true => self.client_addr(),
            false => String::new(),
        }
    }

    /// Whether the peer API has a listener of its own.
    pub fn split_ports(&self) -> bool {
        self.peer_listen.is_some()
    }

    /// The largest client request a node decodes: a put of the largest key and value,
    /// with a context of the most actors and dots a context may name.
    pub fn max_client_request_bytes(&self) -> usize {
        self.max_value_bytes + MAX_KEY_BYTES + CONTEXT_AND_FRAMING_BYTES
    }

    /// The largest client answer a node encodes: the largest sibling set, with its
    /// context.
    pub fn max_client_response_bytes(&self) -> usize {
        self.max_set_bytes + MAX_KEY_BYTES + CONTEXT_AND_FRAMING_BYTES
    }

    /// The largest message between peers: a batch of replica reads or writes, or a
    /// chunk of a transfer or repair (each at most [`PEER_BATCH_BYTES`] unless a single
    /// item is larger), plus one more sibling set.
    pub fn max_peer_message_bytes(&self) -> usize {
        PEER_BATCH_BYTES + self.max_client_response_bytes()
    }

    /// The coordinator's deadline for a quorum.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file holding a valid cluster secret, for every test.
    fn secret_file() -> String {
        // One file per call: tests run in parallel, and a file being rewritten reads empty.
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("dynamo-config-test-{}-{call}", std::process::id());
        let path = std::env::temp_dir().join(name);
        std::fs::write(&path, "0123456789abcdef0123456789abcdef\n").unwrap();
        path.to_string_lossy().into_owned()
    }

    /// Flags of node `id` of a valid three-node cluster, plus `extra`.
    fn args_of(id: &str, extra: &[&str]) -> Args {
        let secret = secret_file();
        let mut v = vec![
            "dynamo-node",
            "--node-id",
            id,
            "--members",
            "a=127.0.0.1:1,b=127.0.0.1:2@z,c=127.0.0.1:3",
            "--cluster-id",
            "test",
            "--cluster-secret-file",
            &secret,
        ];
        v.extend_from_slice(extra);
        Args::parse_from(v)
    }

    fn args(extra: &[&str]) -> Args {
        args_of("a", extra)
    }

    /// The error of a node started with `flags` (on top of a valid id and members).
    fn refused(flags: &[&str]) -> String {
        NodeConfig::load(args(flags)).unwrap_err().to_string()
    }

    #[test]
    fn flags_override_defaults() {
        let cfg = NodeConfig::load(args(&["--w", "3", "--fsync", "always"])).unwrap();
        assert_eq!(cfg.replication, Replication { n: 3, r: 2, w: 3 });
        assert_eq!(cfg.fsync, FsyncPolicy::Always);
        assert_eq!(cfg.members[1].zone.as_deref(), Some("z"));
        assert_eq!(cfg.runtime_threads, 0, "one per CPU unless set");
        let cfg = NodeConfig::load(args(&["--runtime-threads", "1"])).unwrap();
        assert_eq!(cfg.runtime_threads, 1);
        assert_eq!(cfg.fsync_group_window_us, 3000, "default group window");
        let cfg = NodeConfig::load(args(&["--fsync-group-window-us", "0"])).unwrap();
        assert_eq!(cfg.fsync_group_window_us, 0);
    }

    #[test]
    fn the_peer_api_has_its_own_port_and_address_when_asked() {
        let one = NodeConfig::load(args(&["--listen", "10.0.0.1:7100"])).unwrap();
        assert!(!one.split_ports());
        assert_eq!(one.peer_addr(), "10.0.0.1:7100", "one port for both");
        assert_eq!(one.gossiped_client_addr(), "");
        let two = NodeConfig::load(args(&[
            "--listen",
            "0.0.0.0:7100",
            "--advertise",
            "a.svc:7100",
            "--peer-listen",
            "0.0.0.0:7101",
            "--peer-advertise",
            "a.svc:7101",
        ]))
        .unwrap();
        assert!(two.split_ports());
        assert_eq!(two.peer_addr(), "a.svc:7101");
        assert_eq!(two.client_addr(), "a.svc:7100");
        assert_eq!(two.gossiped_client_addr(), "a.svc:7100");
        let err = refused(&["--listen", "0.0.0.0:7100", "--peer-listen", "0.0.0.0:7100"]);
        assert!(err.contains("a port of its own"), "{err}");
        let err = refused(&["--peer-advertise", "a.svc:7101"]);
        assert!(err.contains("peer_listen is not"), "{err}");
        let err = refused(&["--max-connections-per-client", "0"]);
        assert!(err.contains("max_connections_per_client"), "{err}");
    }

    #[test]
    fn tls_is_all_on_or_all_off() {
        let err = refused(&["--tls-cert", "/c.pem", "--tls-ca", "/ca.pem"]);
        assert!(err.contains("tls_key missing"), "{err}");
        let err = refused(&["--tls-crl", "/crl.pem"]);
        assert!(err.contains("TLS is off"), "{err}");
        let err = refused(&["--auth-file", "/auth.yaml"]);
        assert!(err.contains("auth_file is set but TLS is off"), "{err}");
        let on = NodeConfig::load(args(&[
            "--tls-cert",
            "/c.pem",
            "--tls-key",
            "/k.pem",
            "--tls-ca",
            "/ca.pem",
            "--tls-crl",
            "/a.pem,/b.pem",
        ]))
        .unwrap();
        let files = on.tls_files().expect("TLS on");
        assert_eq!(files.crls.len(), 2);
        assert!(NodeConfig::load(args(&[])).unwrap().tls_files().is_none());
    }

    #[test]
    fn message_limits_follow_the_value_and_set_limits() {
        let cfg = NodeConfig::load(args(&["--max-value-bytes", "1000"])).unwrap();
        assert!(cfg.max_client_request_bytes() > 1000 + MAX_KEY_BYTES);
        assert!(cfg.max_client_request_bytes() < 1 << 20, "not 64 MiB");
        let big = NodeConfig::load(args(&["--max-value-bytes", "4000000"])).unwrap();
        assert!(big.max_client_request_bytes() > 4_000_000);
        assert!(big.max_client_response_bytes() > big.max_set_bytes);
        assert!(big.max_peer_message_bytes() > PEER_BATCH_BYTES + big.max_set_bytes);
    }

    #[test]
    fn yaml_file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.yaml");
        std::fs::write(
            &path,
            "partitions: 64\nreplication: {n: 2, r: 1, w: 1}\nfsync: never\n",
        )
        .unwrap();
        let cfg =
            NodeConfig::load(args(&["--config", path.to_str().unwrap(), "--r", "2"])).unwrap();
        assert_eq!(cfg.partitions, 64);
        assert_eq!(cfg.replication, Replication { n: 2, r: 2, w: 1 });
        assert_eq!(cfg.fsync, FsyncPolicy::Never);
    }

    #[test]
    fn rejects_bad_settings_with_reasons() {
        let err = refused(&["--r", "4"]);
        assert!(err.contains("r=4"), "{err}");
        let err = refused(&["--partitions", "100"]);
        assert!(err.contains("power of two"), "{err}");
        let err = NodeConfig::load(args_of("zz", &[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not among the members"), "{err}");
        let err = refused(&[
            "--listen",
            "127.0.0.1:7100",
            "--http-listen",
            "127.0.0.1:7100",
        ]);
        assert!(err.contains("their own ports"), "{err}");
        let err = refused(&[
            "--fsync-group-window-us",
            "600000",
            "--request-timeout-ms",
            "1000",
        ]);
        assert!(err.contains("fsync_group_window_us 600000"), "{err}");
        assert!(parse_member("nohost").is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.yaml");
        std::fs::write(&path, "bogus_field: 1\n").unwrap();
        let err = NodeConfig::load(args(&["--config", path.to_str().unwrap()])).unwrap_err();
        assert!(err.to_string().contains("bogus_field"), "{err}");
    }

    #[test]
    fn a_node_may_start_from_seeds_instead_of_members() {
        let secret = secret_file();
        let base = [
            "dynamo-node",
            "--node-id",
            "d",
            "--cluster-id",
            "test",
            "--cluster-secret-file",
            &secret,
        ];
        let with = |extra: &[&str]| {
            let mut v = base.to_vec();
            v.extend_from_slice(extra);
            NodeConfig::load(Args::parse_from(v))
        };
        let cfg = with(&["--seeds", "127.0.0.1:1,127.0.0.1:2"]).unwrap();
        assert_eq!(cfg.seeds, ["127.0.0.1:1", "127.0.0.1:2"]);
        assert!(cfg.members.is_empty());
        assert_eq!(
            (cfg.gossip_interval_ms, cfg.gossip_fanout),
            (1000, 2),
            "defaults"
        );
        let err = with(&[]).unwrap_err().to_string();
        assert!(err.contains("no members and no seeds"), "{err}");
        let err = with(&["--seeds", "nohost"]).unwrap_err().to_string();
        assert!(err.contains("not HOST:PORT"), "{err}");
        let err = with(&["--seeds", "h:1", "--down-after-ms", "1000"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("two gossip rounds"), "{err}");
        let err = with(&["--seeds", "h:1", "--suspect-phi", "0"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("suspect_phi"), "{err}");
        // Members and seeds together: the members plan the map, the seeds are gossiped with.
        let cfg = NodeConfig::load(args(&["--seeds", "127.0.0.1:9"])).unwrap();
        assert_eq!(cfg.members.len(), 3);
    }

    #[test]
    fn the_cluster_secret_comes_from_a_file_or_the_environment() {
        let cfg = NodeConfig::load(args(&[])).unwrap();
        assert_eq!(
            cfg.cluster_secret.as_bytes(),
            b"0123456789abcdef0123456789abcdef"
        );
        assert_eq!(
            format!("{:?}", cfg.cluster_secret),
            "ClusterSecret(<redacted>)"
        );
        let mut cfg = NodeConfig::default();
        cfg.load_secret(Some("from the environment, 16+".into()))
            .unwrap();
        assert_eq!(cfg.cluster_secret.as_bytes(), b"from the environment, 16+");
    }

    #[test]
    fn unsafe_start_ups_are_refused_with_reasons() {
        let bare = |extra: &[&str]| {
            let mut v = vec![
                "dynamo-node",
                "--node-id",
                "a",
                "--members",
                "a=h:1,b=h:2,c=h:3",
            ];
            v.extend_from_slice(extra);
            let mut cfg = NodeConfig::default();
            cfg.apply(Args::parse_from(v)).unwrap();
            cfg.validate().unwrap_err().to_string()
        };
        let err = bare(&[]);
        assert!(err.contains("cluster_id is not set"), "{err}");
        let err = bare(&["--cluster-id", "c"]);
        assert!(err.contains("the cluster secret is not set"), "{err}");
        assert!(err.contains("openssl rand"), "{err}");
        let mut cfg = NodeConfig::default();
        cfg.load_secret(Some("short".into())).unwrap();
        cfg.cluster_id = "c".into();
        cfg.node_id = "a".into();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("only 5 bytes"), "{err}");
        let err = refused(&["--n", "4", "--r", "1", "--w", "1"]);
        assert!(
            err.contains("n=4 needs at least 4 members; 3 are listed"),
            "{err}"
        );
        let missing = Args::parse_from([
            "dynamo-node",
            "--cluster-secret-file",
            "/nonexistent/secret",
        ]);
        let err = NodeConfig::load(missing).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/secret"), "{err}");
    }
}
