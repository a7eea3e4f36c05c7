//! Deterministic simulation of a whole cluster.
//!
//! One seed, one thread, one run: five real nodes (coordinator, store, hinted handoff,
//! read repair, gossip and failure detection, anti-entropy, transfers) on the in-process
//! loopback transport, in one tokio current-thread runtime with paused time, so that time
//! is simulated and jumps straight to the next timer. Every source of nondeterminism the
//! node has goes through a seam the simulation fixes: random numbers come from the seed
//! ([`dynamo_node::determinism`]), the store's writer runs inline instead of on its
//! thread ([`dynamo_node::store::Store::inline`]), blocking work runs inline, `select!`s
//! are biased, and the network's every call is decided by [`net::Net`] from the same
//! generator. So a seed replays exactly; [`Report::trace`] is a hash of every call the
//! network delivered and every client operation's outcome, with its simulated time.
//!
//! Why not turmoil: it simulates TCP for one runtime per host, so the nodes would talk
//! gRPC over simulated sockets; the node already has a transport seam with an in-process
//! implementation that runs the same request paths, and one runtime for all nodes keeps
//! the schedule in one place.
//!
//! A run: clients write (and deleters delete) for [`Config::chaos`] while a nemesis
//! partitions the network (also one way), makes it lossy, slow and duplicating, freezes
//! nodes, kills them, cuts their power (unsynced writes lost), wipes their disks, makes
//! their disks fail and their clocks jump; then everything heals, every node restarts,
//! the cluster gets [`Config::settle`] of quiet, and [`check::check`] compares a dump of
//! every replica with what the clients saw.

pub mod change;
pub mod check;
pub mod cluster;
pub mod net;
pub mod trace;
pub mod workload;

use std::sync::Arc;
use std::time::Duration;

use dynamo_node::determinism::{self, with_rng, Sabotage};
use dynamo_node::network::loopback::LoopbackNet;
use parking_lot::Mutex;
use rand::Rng;

use cluster::Cluster;
use net::{Net, Weather};
use trace::Trace;
use workload::{Client, History, Kind};

/// The shape of a run.
#[derive(Clone, Debug)]
pub struct Config {
    pub nodes: usize,
    /// Keys per client kind.
    pub keys: usize,
    /// Clients of each kind.
    pub clients_per_kind: usize,
    /// Simulated time the clients write while faults come and go.
    pub chaos: Duration,
    /// Simulated quiet time after every fault healed, before the check.
    pub settle: Duration,
    /// Whether the nemesis runs.
    pub faults: bool,
    /// Whether members change (a node added, or one removed) while faults happen.
    pub changes: bool,
    /// Bugs planted in the nodes (to show the checker finds them).
    pub sabotage: Vec<Sabotage>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            nodes: 5,
            keys: 4,
            clients_per_kind: 2,
            chaos: Duration::from_secs(60),
            settle: Duration::from_secs(60),
            faults: true,
            changes: true,
            sabotage: Vec::new(),
        }
    }
}

/// What a run found.
#[derive(Debug)]
pub struct Report {
    pub seed: u64,
    /// Hash of the run's trace, and how many events it covers.
    pub trace: u64,
    pub events: u64,
    pub ops: u64,
    pub failed_ops: u64,
    pub acked: u64,
    /// The faults the nemesis injected, in order.
    pub faults: Vec<String>,
    pub violations: Vec<String>,
}

/// Runs the simulation of `seed` on this thread.
pub fn run(seed: u64, cfg: &Config) -> Report {
    determinism::enter(seed);
    determinism::sabotage(&cfg.sabotage);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
    let report = rt.block_on(world(seed, cfg.clone()));
    drop(rt);
    determinism::leave();
    report
}

async fn world(seed: u64, cfg: Config) -> Report {
    let start = tokio::time::Instant::now();
    let trace = Arc::new(Trace::default());
    let net = Net::new(start, trace.clone());
    let loopback = LoopbackNet::new();
    loopback.set_faults(net.clone());
    let cluster = Arc::new(Mutex::new(Cluster::start(loopback, cfg.nodes, start)));
    let history = Arc::new(Mutex::new(History::default()));
    let until = start + cfg.chaos;
    let mut clients = Vec::new();
    for (k, kind) in [
        Kind::ReadModifyWrite,
        Kind::Chain,
        Kind::Blind,
        Kind::Deleter,
    ]
    .into_iter()
    .enumerate()
    {
        for c in 0..cfg.clients_per_kind {
            let id = k * cfg.clients_per_kind + c;
            // Chain and blind clients share keys: a blind write is concurrent with every
            // chained put, so it must survive as a sibling. A deleter has keys of its own.
            let family = match kind {
                Kind::ReadModifyWrite => "s".to_owned(),
                Kind::Chain | Kind::Blind => "c".to_owned(),
                Kind::Deleter => format!("d{id}-"),
            };
            let keys: Vec<String> = (0..cfg.keys).map(|i| format!("{family}{i}")).collect();
            let client = Client {
                id,
                kind,
                keys,
                cluster: cluster.clone(),
                history: history.clone(),
                trace: trace.clone(),
                start,
                until,
            };
            clients.push(tokio::spawn(client.run()));
        }
    }
    let changes = Arc::new(Mutex::new(Vec::new()));
    let committer = cfg
        .changes
        .then(|| tokio::spawn(change::committer(cluster.clone(), until, changes.clone())));
    let mut faults = Vec::new();
    if cfg.faults {
        nemesis(&cluster, &net, until, &mut faults).await;
    }
    for c in clients {
        let _ = c.await;
    }
    // Heal everything and restart every node, then let the cluster converge.
    heal(&mut cluster.lock(), &net);
    // A change under way finishes once the faults are gone (within the settling time).
    let settled = tokio::time::Instant::now() + cfg.settle;
    if let Some(committer) = committer {
        let _ = tokio::time::timeout_at(settled, committer).await;
    }
    faults.extend(changes.lock().drain(..));
    tokio::time::sleep_until(settled).await;
    let violations = {
        let c = cluster.lock();
        check::check(&c, &history.lock())
    };
    let h = history.lock();
    let (trace_hash, events) = trace.finish();
    Report {
        seed,
        trace: trace_hash,
        events,
        ops: h.ops,
        failed_ops: h.failed,
        acked: h.acked.values().map(|s| s.len() as u64).sum(),
        faults,
        violations,
    }
}

/// Ends every fault: the network heals (frozen nodes thaw), nodes whose disk failed get
/// a working one and restart, and every stopped node starts.
fn heal(c: &mut Cluster, net: &Net) {
    net.heal();
    net.set_weather(Weather::CALM);
    c.restart_failed_disks();
    for i in 0..c.machines.len() {
        c.restart(i);
    }
}

/// Injects a fault every few simulated seconds until `until`, healing the previous one
/// sometimes (any number of nodes may be down at once).
async fn nemesis(
    cluster: &Arc<Mutex<Cluster>>,
    net: &Arc<Net>,
    until: tokio::time::Instant,
    log: &mut Vec<String>,
) {
    let start = tokio::time::Instant::now();
    let mut wiped = false;
    while tokio::time::Instant::now() < until {
        let pause = with_rng(|r| r.random_range(1_000..5_000));
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let at = start.elapsed().as_millis();
        let mut c = cluster.lock();
        let ids = c.ids();
        let n = ids.len();
        let pick = with_rng(|r| r.random_range(0..11));
        let victim = with_rng(|r| r.random_range(0..n));
        let machine = c.index_of(&ids[victim]).expect("a machine per id");
        let fault = match pick {
            0 => {
                net.heal();
                let mut side: Vec<String> = ids.clone();
                with_rng(|r| {
                    for i in (1..side.len()).rev() {
                        side.swap(i, r.random_range(0..=i));
                    }
                });
                let cut = with_rng(|r| r.random_range(1..n));
                let (a, b) = side.split_at(cut);
                net.cut(a, b);
                net.cut(b, a);
                format!("partition {a:?} | {b:?}")
            }
            1 => {
                net.heal();
                let from = vec![ids[victim].clone()];
                let to: Vec<String> = ids.iter().filter(|i| **i != ids[victim]).cloned().collect();
                net.cut(&from, &to);
                format!("one-way: {} cannot send", ids[victim])
            }
            2 => {
                net.set_weather(Weather::STORM);
                "storm: delays, loss, duplicates".to_owned()
            }
            3 => {
                c.kill(machine, false);
                format!("kill {}", ids[victim])
            }
            4 => {
                c.kill(machine, true);
                format!("power loss {}", ids[victim])
            }
            // One wipe per run: a second one before the first wiped replica is repaired
            // could take every copy of a write, which no store survives.
            5 if !wiped && with_rng(|r| r.random_bool(0.3)) => {
                wiped = true;
                c.wipe(machine);
                format!("wipe {}", ids[victim])
            }
            6 => {
                let pause = with_rng(|r| r.random_range(500..8_000));
                net.freeze(&ids[victim], Duration::from_millis(pause));
                format!("freeze {} for {pause} ms", ids[victim])
            }
            7 => {
                // Mostly small steps either way; sometimes far ahead (past the
                // tombstone grace, which then means nothing on that node).
                let ms = with_rng(|r| match r.random_bool(0.2) {
                    true => r.random_range(60_000..600_000),
                    false => r.random_range(-15_000..15_000),
                });
                c.jump_clock(machine, ms);
                format!("clock of {} jumps {ms:+} ms", ids[victim])
            }
            8 => {
                c.fail_disk(machine);
                format!("disk of {} fails its writes", ids[victim])
            }
            _ => {
                heal(&mut c, net);
                "heal; restart all".to_owned()
            }
        };
        log.push(format!("{at} ms: {fault}"));
    }
}
