//! Running the local cluster's node processes.
//!
//! Starts one `dynamo-node` per [`NodeSpec`], forwards each line it prints prefixed with
//! its id (`[node-2] ...`), waits until every node's `/readyz` answers 200, then keeps the
//! cluster up until SIGINT or SIGTERM. Shutdown is orderly: SIGTERM to every node still
//! running, up to [`STOP_GRACE`] for them to exit, then SIGKILL for stragglers.
//!
//! A node that dies on its own is reported and the others keep running (that is how one
//! tests a failure by hand: `kill -9` a node and watch the cluster cope); when every node
//! has died the launcher exits with an error.
//!
//! Children run in their own process group so that the terminal's Ctrl-C reaches only
//! the launcher, which then stops them in order; on Linux they also get SIGTERM if the
//! launcher itself dies (PR_SET_PDEATHSIG), so no node outlives a crashed launcher.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;

use super::{node_specs, ClusterConfig, NodeSpec};

/// Time the nodes get to exit after SIGTERM before they are killed.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// How to launch.
#[derive(Clone, Debug)]
pub struct LaunchOptions {
    /// The `dynamo-node` executable.
    pub node_bin: PathBuf,
    /// Delete the nodes' data directories first.
    pub wipe: bool,
    /// Time allowed for every node to become ready.
    pub ready_timeout: Duration,
    /// How the printed example commands call dynamoctl.
    pub ctl_name: String,
}

/// The `dynamo-node` next to the running executable (where cargo puts both).
pub fn default_node_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("dynamo-node")))
        .unwrap_or_else(|| PathBuf::from("dynamo-node"))
}

/// A started node.
struct Running {
    spec: NodeSpec,
    pid: i32,
    alive: bool,
}

/// The launched cluster: its nodes and the channel their exits are reported on.
struct Cluster {
    nodes: Vec<Running>,
    exits: mpsc::UnboundedReceiver<(usize, String)>,
    exits_tx: mpsc::UnboundedSender<(usize, String)>,
}

/// Starts the cluster, waits for it, and runs it until SIGINT/SIGTERM.
pub async fn run(cfg: &ClusterConfig, opts: &LaunchOptions) -> anyhow::Result<()> {
    let specs = node_specs(cfg).map_err(anyhow::Error::msg)?;
    if !opts.node_bin.is_file() {
        bail!(
            "node binary {} not found: build it (cargo build --release -p dynamo-node) or pass --node-bin",
            opts.node_bin.display()
        );
    }
    prepare_dirs(&specs, opts.wipe)?;
    ensure_secret(&super::secret_path(cfg))?;
    if cfg.tls {
        super::tls::ensure(cfg)?;
    }
    check_ports_free(&specs)?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;

    let (exits_tx, exits) = mpsc::unbounded_channel();
    let mut cluster = Cluster {
        nodes: Vec::new(),
        exits,
        exits_tx,
    };
    for spec in specs {
        if let Err(e) = cluster.spawn(&opts.node_bin, spec) {
            cluster.shutdown().await;
            return Err(e);
        }
    }
    let ready = tokio::select! {
        r = cluster.wait_ready(opts.ready_timeout) => r,
        _ = sigint.recv() => Err(anyhow::anyhow!("interrupted while waiting for the nodes")),
        _ = sigterm.recv() => Err(anyhow::anyhow!("terminated while waiting for the nodes")),
    };
    if let Err(e) = ready {
        cluster.shutdown().await;
        return Err(e);
    }
    print_banner(cfg, &cluster, &opts.ctl_name);
    let result = cluster.watch(&mut sigint, &mut sigterm).await;
    cluster.shutdown().await;
    result
}

impl Cluster {
    /// Spawns one node with its output forwarded and its exit reported.
    fn spawn(&mut self, bin: &Path, spec: NodeSpec) -> anyhow::Result<()> {
        let mut cmd = Command::new(bin);
        cmd.args(&spec.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        #[cfg(target_os = "linux")]
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {} for {}", bin.display(), spec.id))?;
        let pid = child.id().context("child has no pid")? as i32;
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        tokio::spawn(forward_lines(stdout, format!("[{}] ", spec.id), false));
        tokio::spawn(forward_lines(stderr, format!("[{}] ", spec.id), true));
        let index = self.nodes.len();
        let tx = self.exits_tx.clone();
        tokio::spawn(async move {
            let status = match child.wait().await {
                Ok(status) => status.to_string(),
                Err(e) => format!("wait failed: {e}"),
            };
            let _ = tx.send((index, status));
        });
        eprintln!("started {} (pid {pid}): {}", spec.id, spec.args.join(" "));
        self.nodes.push(Running {
            spec,
            pid,
            alive: true,
        });
        Ok(())
    }

    fn alive(&self) -> impl Iterator<Item = &Running> {
        self.nodes.iter().filter(|n| n.alive)
    }

    fn mark_exited(&mut self, index: usize, status: &str, expected: bool) {
        let node = &mut self.nodes[index];
        node.alive = false;
        if expected {
            eprintln!("{} stopped ({status})", node.spec.id);
        } else {
            eprintln!(
                "{} (pid {}) exited unexpectedly: {status}",
                node.spec.id, node.pid
            );
        }
    }

    /// Polls every node's `/readyz` until all answer 200; fails if a node exits first.
    async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut ready = vec![false; self.nodes.len()];
        loop {
            if let Ok((i, status)) = self.exits.try_recv() {
                self.mark_exited(i, &status, false);
                bail!(
                    "{} exited before it was ready ({status}); see its output above",
                    self.nodes[i].spec.id
                );
            }
            for (i, node) in self.nodes.iter().enumerate() {
                if !ready[i] && http_status(&node.spec.http_addr, "/readyz").await == Some(200) {
                    ready[i] = true;
                    eprintln!("{} is ready", node.spec.id);
                }
            }
            if ready.iter().all(|&r| r) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let waiting: Vec<&str> = self
                    .nodes
                    .iter()
                    .zip(&ready)
                    .filter(|(_, &r)| !r)
                    .map(|(n, _)| n.spec.id.as_str())
                    .collect();
                bail!(
                    "not ready after {timeout:?}: {} (GET /readyz did not answer 200)",
                    waiting.join(", ")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Runs until a signal (Ok) or until every node has died (Err).
    async fn watch(&mut self, sigint: &mut Signal, sigterm: &mut Signal) -> anyhow::Result<()> {
        loop {
            tokio::select! {
                _ = sigint.recv() => { eprintln!("SIGINT: stopping the cluster"); return Ok(()); }
                _ = sigterm.recv() => { eprintln!("SIGTERM: stopping the cluster"); return Ok(()); }
                Some((i, status)) = self.exits.recv() => {
                    self.mark_exited(i, &status, false);
                    let left = self.alive().count();
                    if left == 0 {
                        bail!("every node has exited");
                    }
                    eprintln!("{left} of {} nodes still running", self.nodes.len());
                }
            }
        }
    }

    /// SIGTERM to every live node, [`STOP_GRACE`] to exit, then SIGKILL.
    async fn shutdown(&mut self) {
        for node in self.alive() {
            send_signal(node.pid, libc::SIGTERM);
        }
        self.reap_until(Instant::now() + STOP_GRACE).await;
        let stragglers: Vec<i32> = self.alive().map(|n| n.pid).collect();
        for (node, pid) in self.alive().zip(&stragglers) {
            eprintln!(
                "{} did not stop within {STOP_GRACE:?}: killing it",
                node.spec.id
            );
            send_signal(*pid, libc::SIGKILL);
        }
        if !stragglers.is_empty() {
            self.reap_until(Instant::now() + Duration::from_secs(5))
                .await;
        }
        // Let the forwarders print the nodes' last lines.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    async fn reap_until(&mut self, deadline: Instant) {
        while self.alive().next().is_some() {
            let timeout = tokio::time::sleep_until(deadline.into());
            tokio::select! {
                Some((i, status)) = self.exits.recv() => self.mark_exited(i, &status, true),
                _ = timeout => return,
            }
        }
    }
}

fn send_signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions. The pid is a child we have not
    // reaped yet (its waiter reports the exit first), so it cannot have been reused.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Copies lines from a child's output to ours with a prefix.
async fn forward_lines(from: impl AsyncRead + Unpin, prefix: String, to_stderr: bool) {
    let mut lines = BufReader::new(from).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        use std::io::Write;
        let text = format!("{prefix}{line}\n");
        let _ = if to_stderr {
            std::io::stderr().lock().write_all(text.as_bytes())
        } else {
            std::io::stdout().lock().write_all(text.as_bytes())
        };
    }
}

/// The HTTP status of `GET path` at `addr`, or None when it does not answer in time.
pub async fn http_status(addr: &str, path: &str) -> Option<u16> {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 64];
        let mut len = 0;
        while len < 12 {
            let n = stream.read(&mut head[len..]).await.ok()?;
            if n == 0 {
                break;
            }
            len += n;
        }
        parse_status_line(&head[..len])
    };
    tokio::time::timeout(Duration::from_secs(1), attempt)
        .await
        .ok()
        .flatten()
}

fn parse_status_line(head: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(head).ok()?;
    let mut parts = text.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}

/// Writes a random cluster secret to `path` unless one is there (owner-only), so that
/// every node of the local cluster shares it and restarts keep it.
pub fn ensure_secret(path: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if path.exists() {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let secret: String = (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating the cluster secret {}", path.display()))?;
    writeln!(f, "{secret}").with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn prepare_dirs(specs: &[NodeSpec], wipe: bool) -> anyhow::Result<()> {
    for spec in specs {
        if wipe && spec.data_dir.exists() {
            std::fs::remove_dir_all(&spec.data_dir)
                .with_context(|| format!("wiping {}", spec.data_dir.display()))?;
        }
        std::fs::create_dir_all(&spec.data_dir)
            .with_context(|| format!("creating {}", spec.data_dir.display()))?;
    }
    Ok(())
}

fn check_ports_free(specs: &[NodeSpec]) -> anyhow::Result<()> {
    for spec in specs {
        for (what, addr) in [
            ("client gRPC", &spec.grpc_addr),
            ("peer gRPC", &spec.peer_addr),
            ("HTTP", &spec.http_addr),
        ] {
            if let Err(e) = std::net::TcpListener::bind(addr.as_str()) {
                bail!(
                    "{what} address {addr} of {} is not available ({e}): is another cluster running? \
                     stop it or pass --base-port/--peer-base-port/--http-base-port",
                    spec.id
                );
            }
        }
    }
    Ok(())
}

fn print_banner(cfg: &ClusterConfig, cluster: &Cluster, ctl: &str) {
    let addrs: Vec<&str> = cluster
        .nodes
        .iter()
        .map(|n| n.spec.grpc_addr.as_str())
        .collect();
    let all = addrs.join(",");
    let mut out = format!(
        "\nlocal cluster {:?} is ready: {} nodes, N={} R={} W={}, Q={}, fsync={}, data in {}\n",
        cfg.cluster_id,
        cfg.nodes,
        cfg.n,
        cfg.r,
        cfg.w,
        cfg.partitions,
        cfg.fsync,
        cfg.data_dir.display()
    );
    for n in &cluster.nodes {
        out.push_str(&format!(
            "  {:<8} client {}  peer {}  http http://{}/metrics  pid {}\n",
            n.spec.id, n.spec.grpc_addr, n.spec.peer_addr, n.spec.http_addr, n.pid
        ));
    }
    if cfg.tls {
        let (cert, key) = super::tls::cert_and_key(cfg, super::tls::ADMIN_NAME);
        out.push_str(&format!(
            "TLS is on (mutual on the peer ports); dynamoctl needs the CA, and for \
             `change` and `repair` the admin certificate:\n  export DYNAMO_CA={} \
             DYNAMO_CERT={} DYNAMO_KEY={}\n",
            super::tls::ca(cfg).display(),
            cert.display(),
            key.display()
        ));
    }
    out.push_str(&format!(
        "try:\n  export DYNAMO_ADDR={all}\n  {ctl} put hello world\n  {ctl} get hello\n  \
         {ctl} status\n  {ctl} bench --prefill --duration 10s\nCtrl-C stops the cluster.\n"
    ));
    eprintln!("{out}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_parse() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(
            parse_status_line(b"HTTP/1.0 503 Service Unavailable"),
            Some(503)
        );
        assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH"), None);
        assert_eq!(parse_status_line(b""), None);
    }

    #[tokio::test]
    async fn http_status_reads_a_real_answer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 256];
            let _ = s.read(&mut buf).await;
            s.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
        });
        assert_eq!(http_status(&addr, "/readyz").await, Some(503));
    }

    #[tokio::test]
    async fn http_status_of_a_closed_port_is_none() {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        assert_eq!(http_status(&addr, "/readyz").await, None);
    }

    #[test]
    fn wipe_clears_only_node_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ClusterConfig {
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        };
        let specs = node_specs(&cfg).unwrap();
        std::fs::create_dir_all(&specs[0].data_dir).unwrap();
        std::fs::write(specs[0].data_dir.join("old"), b"x").unwrap();
        std::fs::write(dir.path().join("keep"), b"x").unwrap();
        prepare_dirs(&specs, false).unwrap();
        assert!(specs[0].data_dir.join("old").exists());
        prepare_dirs(&specs, true).unwrap();
        assert!(!specs[0].data_dir.join("old").exists());
        assert!(specs.iter().all(|s| s.data_dir.is_dir()));
        assert!(dir.path().join("keep").exists());
    }

    #[test]
    fn the_cluster_secret_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c").join("cluster-secret");
        ensure_secret(&path).unwrap();
        let first = std::fs::read_to_string(&path).unwrap();
        assert_eq!(first.trim().len(), 64);
        ensure_secret(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), first, "kept");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "owner-only");
    }
}
