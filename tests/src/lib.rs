//! Test harness: a cluster of real `dynamo-node` processes on loopback.
//!
//! [`Cluster`] starts nodes with their own data directories and ports, can SIGKILL,
//! SIGSTOP/SIGCONT, restart and wipe them, and kills every process it started when it is
//! dropped, so a failing test leaves nothing behind. Node logs go to files in the
//! cluster's temporary directory and are printed when a test fails to start a node.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use dynamo_proto::v1::{
    admin_client::AdminClient, anti_entropy_client::AntiEntropyClient, kv_client::KvClient,
    replica_client::ReplicaClient, tree_request::Query, TreeRequest, TreeRoots,
};
use tonic::transport::{Channel, Endpoint};

pub mod local_k8s;
pub mod pki;
pub mod proxy;

/// Settings of a test cluster.
#[derive(Clone, Debug)]
pub struct Options {
    pub nodes: usize,
    pub n: u32,
    pub r: u32,
    pub w: u32,
    pub partitions: u32,
    pub request_timeout_ms: u64,
    pub extra: Vec<String>,
    /// Whether nodes reach each other through [`proxy::Link`]s, so that a test can
    /// partition them ([`Cluster::partition`]). Clients still reach every node directly.
    pub proxied: bool,
    /// TLS on both ports (mutual on the peer port) with certificates of a CA made for
    /// the cluster ([`Cluster::pki`]), a revocation list, and files reloaded every 250 ms.
    /// The harness's own clients present a node certificate named `harness`.
    pub tls: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            nodes: 3,
            n: 3,
            r: 2,
            w: 2,
            partitions: 64,
            request_timeout_ms: 1000,
            extra: Vec::new(),
            proxied: false,
            tls: false,
        }
    }
}

/// One node of the test cluster.
pub struct NodeProc {
    pub id: String,
    /// The client API (`--listen`): Kv, Health, read-only Admin.
    pub grpc: SocketAddr,
    /// The peer API (`--peer-listen`): replication, gossip, anti-entropy, map changes;
    /// the node's address in maps.
    pub peer: SocketAddr,
    pub http: SocketAddr,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    /// Set for a node started from seeds (`--seeds`) instead of the member list.
    pub seeds: Option<String>,
    child: Option<Child>,
    stopped: bool,
}

/// A cluster of real node processes.
pub struct Cluster {
    pub opts: Options,
    pub nodes: Vec<NodeProc>,
    /// `links[i][j]`: how node `i` reaches node `j` when proxied.
    links: Vec<Vec<Option<proxy::Link>>>,
    dir: tempfile::TempDir,
    /// The cluster's CA and certificates, with [`Options::tls`].
    pub pki: Option<pki::Pki>,
    /// Each node's certificate, with [`Options::tls`] (replace the files to rotate).
    pub certs: Vec<pki::CertFiles>,
    /// What the harness's clients connect with, with [`Options::tls`].
    harness_tls: Option<dynamo_proto::tls::ClientTls>,
    // Declared last: released after every process is gone.
    _serial: std::sync::MutexGuard<'static, ()>,
}

/// Clusters in one test binary run one at a time: timing-sensitive tests on a 2-core
/// machine must not fight each other for CPU.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The `dynamo-node` binary: `$DYNAMO_NODE_BIN`, or the one cargo built next to this test.
pub fn node_binary() -> PathBuf {
    if let Ok(p) = std::env::var("DYNAMO_NODE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/dynamo-node
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("dynamo-node");
    assert!(
        bin.exists(),
        "{} not found: run `cargo build -p dynamo-node` or set DYNAMO_NODE_BIN",
        bin.display()
    );
    bin
}

/// The `dynamoctl` binary built beside the tests (or `DYNAMOCTL_BIN`).
pub fn dynamoctl_binary() -> PathBuf {
    if let Ok(p) = std::env::var("DYNAMOCTL_BIN") {
        return PathBuf::from(p);
    }
    let bin = node_binary().with_file_name("dynamoctl");
    assert!(
        bin.exists(),
        "{} not found: build the workspace or set DYNAMOCTL_BIN",
        bin.display()
    );
    bin
}

/// `count` distinct free loopback ports below the kernel's ephemeral range (32768 and up on
/// Linux), so an outgoing connection cannot take a stopped node's port before it restarts.
/// Every listener is held until all are found, so no port is handed out twice (one node once
/// got its gRPC port as its HTTP port, and its HTTP server never started), and calls in one
/// process continue one walk over the range, so they never hand out each other's ports.
fn free_ports(count: usize) -> Vec<SocketAddr> {
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    // 97 is prime to SPAN: the walk visits every port of the range once.
    static WALK: std::sync::OnceLock<std::sync::atomic::AtomicU32> = std::sync::OnceLock::new();
    let walk = WALK.get_or_init(|| {
        let seed = std::process::id().wrapping_mul(7919)
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
        std::sync::atomic::AtomicU32::new(seed % SPAN)
    });
    let mut held = Vec::with_capacity(count);
    for _ in 0..SPAN {
        if held.len() == count {
            break;
        }
        let step = walk.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = LOW + step.wrapping_mul(97) % SPAN;
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port as u16)) {
            held.push(l);
        }
    }
    assert_eq!(held.len(), count, "no {count} free loopback ports");
    held.iter()
        .map(|l| l.local_addr().expect("local addr"))
        .collect()
}

/// `count` consecutive free loopback ports (the gRPC ports of ordinals 0..count when
/// nodes are reached as `host:base+ordinal`); returns the first. From the same walk as
/// [`free_ports`], so the two never hand out one port twice in a process.
pub fn free_port_block(count: usize) -> u16 {
    for _ in 0..200 {
        let base = free_ports(1)[0].port();
        if u32::from(base) + count as u32 >= 32_000 {
            continue;
        }
        let held: Vec<TcpListener> = (0..count as u16)
            .filter_map(|k| TcpListener::bind(("127.0.0.1", base + k)).ok())
            .collect();
        if held.len() == count {
            return base;
        }
    }
    panic!("no {count} consecutive free loopback ports");
}

/// Waits up to `limit` for `child` to exit; past it, SIGKILLs and reaps it and returns
/// `None`.
pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Cluster {
    /// Starts a cluster and waits until every node is ready.
    pub fn start(opts: Options) -> Self {
        let serial = SERIAL
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let dir = tempfile::tempdir().expect("temp dir");
        let mut ports = free_ports(3 * opts.nodes).into_iter();
        let nodes: Vec<NodeProc> = (1..=opts.nodes)
            .map(|i| {
                let id = format!("node-{i}");
                NodeProc {
                    grpc: ports.next().expect("a port per node"),
                    peer: ports.next().expect("a port per node"),
                    http: ports.next().expect("a port per node"),
                    data_dir: dir.path().join(&id),
                    log: dir.path().join(format!("{id}.log")),
                    id,
                    seeds: None,
                    child: None,
                    stopped: false,
                }
            })
            .collect();
        let links = (0..nodes.len())
            .map(|i| {
                (0..nodes.len())
                    .map(|j| (opts.proxied && i != j).then(|| proxy::Link::start(nodes[j].peer)))
                    .collect()
            })
            .collect();
        let pki = opts.tls.then(|| pki::Pki::new(&dir.path().join("pki")));
        let certs = match &pki {
            Some(pki) => nodes.iter().map(|n| pki.node(&n.id)).collect(),
            None => Vec::new(),
        };
        let harness_tls = pki
            .as_ref()
            .map(|pki| pki.client(Some(&pki.node("harness"))));
        let mut c = Self {
            opts,
            nodes,
            links,
            dir,
            pki,
            certs,
            harness_tls,
            _serial: serial,
        };
        for i in 0..c.nodes.len() {
            c.spawn(i);
        }
        for i in 0..c.nodes.len() {
            c.wait_ready(i);
        }
        c
    }

    /// Starts one more node, `node-<count+1>`, given only the addresses of nodes
    /// `seeds` (`--seeds`, no `--members`): it learns the cluster by gossip and is in no
    /// preference list. Waits until it is ready; returns its index. Not when proxied.
    pub fn add_by_seeds(&mut self, seeds: &[usize]) -> usize {
        assert!(!self.opts.proxied, "a seeded node is not proxied");
        let i = self.nodes.len();
        let id = format!("node-{}", i + 1);
        let mut ports = free_ports(3).into_iter();
        let seeds = seeds
            .iter()
            .map(|&s| self.nodes[s].peer.to_string())
            .collect::<Vec<_>>()
            .join(",");
        self.nodes.push(NodeProc {
            grpc: ports.next().expect("three ports"),
            peer: ports.next().expect("three ports"),
            http: ports.next().expect("three ports"),
            data_dir: self.dir.path().join(&id),
            log: self.dir.path().join(format!("{id}.log")),
            id,
            seeds: Some(seeds),
            child: None,
            stopped: false,
        });
        for row in &mut self.links {
            row.push(None);
        }
        self.links.push((0..=i).map(|_| None).collect());
        if let Some(pki) = &self.pki {
            let cert = pki.node(&self.nodes[i].id);
            self.certs.push(cert);
        }
        self.spawn(i);
        self.wait_ready(i);
        i
    }

    /// The `--members` flag value of node `i`: every node's peer address, or, when proxied,
    /// the proxy through which `i` reaches it. Nodes started from seeds are not members.
    pub fn members(&self, i: usize) -> String {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.seeds.is_none())
            .map(|(j, n)| {
                let addr = self.links[i][j].as_ref().map_or(n.peer, |l| l.listen);
                format!("{}={addr}", n.id)
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Cuts every link between nodes on different `sides` (indices), both ways,
    /// replacing any earlier partition. Needs [`Options::proxied`].
    pub fn partition(&self, sides: &[&[usize]]) {
        self.heal();
        for (k, a_side) in sides.iter().enumerate() {
            for b_side in &sides[k + 1..] {
                for &a in *a_side {
                    for &b in *b_side {
                        for (from, to) in [(a, b), (b, a)] {
                            self.links[from][to]
                                .as_ref()
                                .expect("a proxied cluster")
                                .cut();
                        }
                    }
                }
            }
        }
    }

    /// Heals every partition.
    pub fn heal(&self) {
        for link in self.links.iter().flatten().flatten() {
            link.heal();
        }
    }

    /// The cluster secret's file (written on first use).
    pub fn secret_file(&self) -> String {
        let path = self.dir.path().join("cluster-secret");
        if !path.exists() {
            std::fs::write(&path, "test-cluster-secret-0123456789").expect("write the secret");
        }
        path.to_string_lossy().into_owned()
    }

    /// The command line of node `i`.
    pub fn command(&self, i: usize) -> Command {
        let n = &self.nodes[i];
        let o = &self.opts;
        let mut cmd = Command::new(node_binary());
        cmd.args(["--node-id", &n.id])
            .args(["--listen", &n.grpc.to_string()])
            .args(["--peer-listen", &n.peer.to_string()])
            .args(["--http-listen", &n.http.to_string()])
            .args(["--data-dir", n.data_dir.to_str().expect("utf-8 path")])
            .args(["--cluster-id", "test-cluster"])
            .args(["--cluster-secret-file", &self.secret_file()]);
        match &n.seeds {
            Some(seeds) => cmd.args(["--seeds", seeds]),
            None => cmd.args(["--members", &self.members(i)]),
        };
        cmd.args([
            "--n",
            &o.n.to_string(),
            "--r",
            &o.r.to_string(),
            "--w",
            &o.w.to_string(),
        ])
        .args(["--partitions", &o.partitions.to_string()])
        .args(["--request-timeout-ms", &o.request_timeout_ms.to_string()]);
        if let (Some(pki), Some(cert)) = (&self.pki, self.certs.get(i)) {
            cmd.arg("--tls-cert")
                .arg(&cert.cert)
                .arg("--tls-key")
                .arg(&cert.key)
                .arg("--tls-ca")
                .arg(pki.ca_path())
                .arg("--tls-crl")
                .arg(pki.crl_path())
                .args(["--tls-reload-interval-ms", "250"]);
        }
        cmd.args(&o.extra).env("RUST_LOG", "info,dynamo_node=debug");
        cmd
    }

    fn spawn(&mut self, i: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.nodes[i].log)
            .expect("open node log");
        let child = self
            .command(i)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn dynamo-node");
        self.nodes[i].child = Some(child);
        self.nodes[i].stopped = false;
    }

    /// Waits until node `i` answers `/readyz` with 200.
    pub fn wait_ready(&mut self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.nodes[i]
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "{} exited with {status} during start-up:\n{}",
                    self.nodes[i].id,
                    self.log(i)
                );
            }
            if http_status(self.nodes[i].http, "/readyz") == Some(200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{} not ready within 30 s:\n{}",
            self.nodes[i].id,
            self.log(i)
        );
    }

    /// Node `i`'s log so far.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }

    fn pid(&self, i: usize) -> libc::pid_t {
        self.nodes[i].child.as_ref().expect("node is running").id() as libc::pid_t
    }

    fn signal(&self, i: usize, sig: libc::c_int) {
        // SAFETY: kill(2) on a child process we spawned and have not reaped.
        let rc = unsafe { libc::kill(self.pid(i), sig) };
        assert_eq!(rc, 0, "kill({sig}) failed for {}", self.nodes[i].id);
    }

    /// SIGKILLs node `i` and reaps it.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERMs node `i` and waits for it to stop cleanly.
    pub fn stop(&mut self, i: usize) {
        self.signal(i, libc::SIGTERM);
        let mut c = self.nodes[i].child.take().expect("running");
        let Some(status) = wait_exit(&mut c, Duration::from_secs(15)) else {
            panic!("{} did not stop within 15 s of SIGTERM", self.nodes[i].id);
        };
        assert!(
            status.success(),
            "{} stopped with {status}:\n{}",
            self.nodes[i].id,
            self.log(i)
        );
    }

    /// Freezes node `i` (SIGSTOP).
    pub fn freeze(&mut self, i: usize) {
        self.signal(i, libc::SIGSTOP);
        self.nodes[i].stopped = true;
    }

    /// Thaws node `i` (SIGCONT).
    pub fn thaw(&mut self, i: usize) {
        self.signal(i, libc::SIGCONT);
        self.nodes[i].stopped = false;
    }

    /// Starts node `i` again (after kill9 or stop) and waits until it is ready.
    pub fn restart(&mut self, i: usize) {
        assert!(
            self.nodes[i].child.is_none(),
            "{} is still running",
            self.nodes[i].id
        );
        self.spawn(i);
        self.wait_ready(i);
    }

    /// Deletes node `i`'s data directory (the node must be down).
    pub fn wipe(&mut self, i: usize) {
        assert!(self.nodes[i].child.is_none(), "wipe a running node");
        std::fs::remove_dir_all(&self.nodes[i].data_dir).expect("remove data dir");
    }

    fn endpoint(&self, i: usize) -> Endpoint {
        endpoint(self.nodes[i].grpc)
    }

    fn peer_endpoint(&self, i: usize) -> Endpoint {
        endpoint(self.nodes[i].peer)
    }

    /// A channel over `endpoint`, with the harness's TLS when the cluster has TLS.
    fn connect(&self, endpoint: Endpoint) -> Channel {
        endpoint
            .connect_with_connector_lazy(dynamo_proto::cork::connector(self.harness_tls.clone()))
    }

    /// A client of node `i`'s Kv service.
    pub fn kv(&self, i: usize) -> KvClient<Channel> {
        KvClient::new(self.connect(self.endpoint(i)))
    }

    /// A client of node `i`'s Admin service on its peer port (every call).
    pub fn admin(&self, i: usize) -> AdminClient<Channel> {
        AdminClient::new(self.connect(self.peer_endpoint(i)))
    }

    /// A client of node `i`'s Admin service on its client port (the calls that change
    /// nothing).
    pub fn client_admin(&self, i: usize) -> AdminClient<Channel> {
        AdminClient::new(self.connect(self.endpoint(i)))
    }

    /// A client of node `i`'s Replica service (reads its local copy, no repair).
    pub fn replica(&self, i: usize) -> ReplicaClient<Channel> {
        ReplicaClient::new(self.connect(self.peer_endpoint(i)))
    }

    /// Node `i`'s Merkle root of every partition (see `dynamo_core::merkle`): equal on two
    /// replicas of a partition iff they hold the same versions of its keys.
    pub async fn roots(&self, i: usize) -> Result<Vec<u64>, tonic::Status> {
        let req = TreeRequest {
            cluster_id: "test-cluster".into(),
            partitions: self.opts.partitions,
            query: Some(Query::Roots(TreeRoots {
                partitions: (0..self.opts.partitions).collect(),
            })),
        };
        let mut client = AntiEntropyClient::new(self.connect(self.peer_endpoint(i)));
        Ok(client.tree(req).await?.into_inner().hashes)
    }

    /// Where the cluster keeps its files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                if n.stopped {
                    // SAFETY: kill(2) on our own child.
                    unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGCONT) };
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if std::thread::panicking() {
            for (i, n) in self.nodes.iter().enumerate() {
                eprintln!("----- log of {} -----\n{}", n.id, self.log(i));
            }
        }
    }
}

/// A gRPC endpoint on loopback `addr`, with the tests' timeouts.
pub fn endpoint(addr: SocketAddr) -> Endpoint {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
}

/// GETs `path` on `addr`; the HTTP status code, or None if nothing answered.
pub fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    http_get(addr, path).map(|(code, _)| code)
}

/// GETs `path` on `addr`: status code and body.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let code = resp.split_whitespace().nth(1)?.parse().ok()?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((code, body))
}

/// Runs `f` until it returns true or `within` passes.
pub async fn eventually(within: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
