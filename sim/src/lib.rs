//! Deterministic simulation of a whole cluster.
//!
//! One seed, one thread, one run: five real nodes (coordinator, store, hinted handoff,
//! read repair, gossip and failure detection, anti-entropy, tombstone purging and
//! fallback clean-up, transfers) on the in-process
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
pub mod shrink;
pub mod trace;
pub mod watch;
pub mod workload;

use std::sync::Arc;
use std::time::Duration;

use std::collections::BTreeSet;

use dynamo_node::determinism::{self, Sabotage};
use dynamo_node::network::loopback::LoopbackNet;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use cluster::{Cluster, Purges};
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
    /// Faults the nemesis draws but does not inject, by their number in the run (from 0):
    /// the rest of the schedule stays as it was.
    pub skip: BTreeSet<usize>,
    /// `None`: the nodes sync every write before acknowledging it; otherwise they sync
    /// every so often (the `periodic` fsync policy: a power loss loses what was
    /// acknowledged since the last sync).
    pub periodic_sync: Option<Duration>,
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
            skip: BTreeSet::new(),
            periodic_sync: None,
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
    /// Acknowledged late puts on a context that missed acknowledged elements.
    pub stale_puts: u64,
    /// Elements the checker let an outage take back (acknowledged, or buried, within a
    /// sync interval before it; see [`Config::periodic_sync`]).
    pub excused: u64,
    /// The faults the nemesis injected (or skipped), in order, then the member changes.
    pub faults: Vec<String>,
    /// When the nemesis drew each fault (ms since the start), by its number.
    pub fault_times: Vec<u64>,
    /// What the nodes' purge tasks did: tombstones purged, fallback copies dropped.
    pub purges: Purges,
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
    let cluster = Arc::new(Mutex::new(Cluster::start(
        loopback,
        cfg.nodes,
        start,
        cfg.periodic_sync,
    )));
    let history = Arc::new(Mutex::new(History::default()));
    let until = start + cfg.chaos;
    let mut clients = Vec::new();
    // The keys clients write without reading first (chained and blind puts): the
    // nemesis cuts off the replicas of one of them (see `split_then_outage`).
    let mut unread_keys = BTreeSet::new();
    for (k, kind) in [
        Kind::ReadModifyWrite,
        Kind::Chain,
        Kind::Blind,
        Kind::Deleter,
        Kind::Late,
    ]
    .into_iter()
    .enumerate()
    {
        for c in 0..cfg.clients_per_kind {
            let id = k * cfg.clients_per_kind + c;
            // Chain and blind clients share keys: a blind write is concurrent with every
            // chained put, so it must survive as a sibling. A deleter has keys of its own.
            // A late client writes the read-modify-write keys and a deleter's. The
            // read-modify-write clients write the chained and blind keys too, merging
            // their siblings as real clients do: unmerged, every blind write stayed a
            // sibling, and each write decoded and joined thousands of them (most of a
            // run's time).
            let family = |kind| match kind {
                Kind::ReadModifyWrite => "s".to_owned(),
                Kind::Chain | Kind::Blind => "c".to_owned(),
                Kind::Deleter => format!("d{id}-"),
                Kind::Late => format!("d{}-", 3 * cfg.clients_per_kind + c),
            };
            let mut keys: Vec<String> = (0..cfg.keys)
                .map(|i| format!("{}{i}", family(kind)))
                .collect();
            if let Kind::Late = kind {
                keys.extend((0..cfg.keys).map(|i| format!("s{i}")));
            }
            if let Kind::ReadModifyWrite = kind {
                keys.extend((0..cfg.keys).map(|i| format!("c{i}")));
            }
            if let Kind::Chain | Kind::Blind = kind {
                unread_keys.extend(keys.iter().cloned());
            }
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
    if std::env::var_os("DYNAMO_SIM_WATCH").is_some() {
        tokio::spawn(watch::map_states(cluster.clone(), start));
    }
    let changes = Arc::new(Mutex::new(Vec::new()));
    let committer = cfg
        .changes
        .then(|| tokio::spawn(change::committer(cluster.clone(), until, changes.clone())));
    let mut faults = Vec::new();
    let mut fault_times = Vec::new();
    let mut outages = Vec::new();
    if cfg.faults {
        let log = (&mut faults, &mut fault_times, &mut outages);
        let periodic = cfg.periodic_sync.is_some();
        let keys: Vec<String> = unread_keys.into_iter().collect();
        let world = (&cluster, &net, &keys[..]);
        nemesis(seed, world, until, &cfg.skip, periodic, log).await;
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
    let (violations, excused, purges) = {
        let c = cluster.lock();
        let h = history.lock();
        let excused = excused(&h, &outages, cfg.periodic_sync);
        let violations = check::check(&c, &h, &excused);
        (violations, excused.len() as u64, c.purges())
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
        stale_puts: h.stale_puts,
        excused,
        faults,
        fault_times,
        purges,
        violations,
    }
}

/// The elements an outage (a power loss of every machine, at each of `outages`) may
/// have taken back with nodes syncing every `periodic_sync`: those whose put or delete
/// was acknowledged after the last sync every copy of it may have missed (a copy made
/// before `outage - periodic_sync` was synced by then; one made exactly then may have
/// just missed a sync, and the next falls at the outage's instant), or while the outage
/// was under way (within a request timeout of it).
fn excused(h: &History, outages: &[u64], periodic_sync: Option<Duration>) -> BTreeSet<String> {
    let Some(every) = periodic_sync else {
        return BTreeSet::new();
    };
    let every = every.as_millis() as u64;
    let exposed = |t: &u64| outages.iter().any(|o| *t + every >= *o && *t <= o + 500);
    h.acked_at
        .iter()
        .chain(&h.buried_at)
        .filter(|(_, t)| exposed(t))
        .map(|(e, _)| e.clone())
        .collect()
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

/// One fault of the nemesis.
enum Fault {
    /// The two sides cannot talk (either way).
    Partition(Vec<String>, Vec<String>),
    /// The node cannot send to any other.
    OneWay(String),
    Storm,
    Kill(usize, String),
    PowerLoss(usize, String),
    Wipe(usize, String),
    Freeze(String, u64),
    ClockJump(usize, String, i64),
    FailDisk(usize, String),
    /// The link between two nodes reorders its messages for a while (milliseconds).
    Reorder(String, String, u64),
    /// Every machine loses power at once (drawn only when the nodes sync periodically);
    /// with `Some(ms)`, the power first comes back (every node restarts, and starts
    /// handing off its hints) and fails again this many ms later.
    Outage(Option<u64>),
    /// The replicas of a key (drawn only when the nodes sync periodically) are cut off
    /// from every other node for `split_ms`, so that writes of the key coordinated on
    /// the other side live only in hints (sloppy quorum); then the network heals, every
    /// stopped node starts, hints are handed off, and `outage_ms` after the last one
    /// every machine loses power (before every node synced: the nodes sync about once a
    /// second, each on its own phase). A hint deleted before its target synced the
    /// version it delivered is lost then.
    ///
    /// With `lone` (one of the replicas, and ms), that replica stays with the rest and
    /// loses power that long before the split ends: the writes it coordinated in its
    /// last sync interval then live only in the hints it sent to the other side's
    /// nodes for the two replicas cut off. Then only the key's replicas lose power.
    SplitThenOutage {
        key: String,
        replicas: Vec<String>,
        rest: Vec<String>,
        split_ms: u64,
        outage_ms: u64,
        lone: Option<(String, u64)>,
    },
    Heal,
}

/// What a fault does after it was injected, outside the cluster's lock (the nemesis
/// sleeps in between).
enum Later {
    /// Every machine loses power this many ms from now.
    Outage(u64),
    /// The network heals and every stopped node starts this many ms from now (`.0`),
    /// then every machine (or, with `.2`, only these nodes) loses power `.1` ms after no
    /// node holds a hint any more. With `.3`, a replica loses power alone first, and
    /// the outage follows the handoff of the key's hints to the replicas cut off.
    HealThenOutage(u64, u64, Option<Vec<String>>, Option<Lone>),
}

/// The replica of a split (see [`Fault::SplitThenOutage`]) left with the other nodes.
struct Lone {
    id: String,
    /// How long before the split ends it loses power (no later than the clients' end).
    before_ms: u64,
    key: String,
    /// The key's other replicas, cut off from it and the rest.
    cut: Vec<String>,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Partition(a, b) => write!(f, "partition {a:?} | {b:?}"),
            Fault::OneWay(id) => write!(f, "one-way: {id} cannot send"),
            Fault::Storm => write!(f, "storm: delays, loss, duplicates"),
            Fault::Kill(_, id) => write!(f, "kill {id}"),
            Fault::PowerLoss(_, id) => write!(f, "power loss {id}"),
            Fault::Wipe(_, id) => write!(f, "wipe {id}"),
            Fault::Freeze(id, ms) => write!(f, "freeze {id} for {ms} ms"),
            Fault::ClockJump(_, id, ms) => write!(f, "clock of {id} jumps {ms:+} ms"),
            Fault::FailDisk(_, id) => write!(f, "disk of {id} fails its writes"),
            Fault::Reorder(a, b, ms) => write!(f, "link {a} <-> {b} reorders for {ms} ms"),
            Fault::Outage(None) => write!(f, "power loss of every machine"),
            Fault::Outage(Some(ms)) => write!(
                f,
                "every machine restarts, then all lose power again after {ms} ms"
            ),
            Fault::SplitThenOutage {
                key,
                replicas,
                rest,
                split_ms,
                outage_ms,
                lone: None,
            } => write!(
                f,
                "split {rest:?} | {replicas:?} (the replicas of {key}) for {split_ms} ms, \
                 heal and restart all, then power loss of {} {outage_ms} ms \
                 after the hints are handed off",
                match split_ms % 2 {
                    1 => "the replicas",
                    _ => "every machine",
                }
            ),
            Fault::SplitThenOutage {
                key,
                replicas,
                rest,
                split_ms,
                outage_ms,
                lone: Some((lone, before)),
            } => {
                let cut: Vec<&String> = replicas.iter().filter(|r| *r != lone).collect();
                write!(
                    f,
                    "split {rest:?} + {lone:?} | {cut:?} (the replicas of {key}) for \
                     {split_ms} ms, power loss of {lone} {before} ms before the split \
                     ends, heal and restart all, then power loss of the replicas \
                     {outage_ms} ms after the hints are handed off"
                )
            }
            Fault::Heal => write!(f, "heal; restart all"),
        }
    }
}

/// The seed of the nemesis' own generator: its schedule (when each fault comes, and
/// what it is) does not depend on what the nodes and clients draw, so a run with some
/// faults skipped, or a shorter one, has the same faults at the same times otherwise.
fn nemesis_seed(seed: u64) -> u64 {
    seed ^ 0x6e65_6d65_7369_7300
}

/// Injects a fault every few simulated seconds until `until`, healing the previous one
/// sometimes (any number of nodes may be down at once). Fault `i` (from 0) is drawn but
/// not injected if `skip` holds `i`.
async fn nemesis(
    seed: u64,
    (cluster, net, keys): (&Arc<Mutex<Cluster>>, &Arc<Net>, &[String]),
    until: tokio::time::Instant,
    skip: &BTreeSet<usize>,
    periodic: bool,
    (log, times, outages): (&mut Vec<String>, &mut Vec<u64>, &mut Vec<u64>),
) {
    let start = tokio::time::Instant::now();
    let mut schedule = StdRng::seed_from_u64(nemesis_seed(seed));
    let mut wiped = false;
    for i in 0.. {
        let pause = schedule.random_range(1_000..5_000);
        // Each fault draws from a generator of its own, so that what one fault draws
        // (which depends on the cluster's state) does not shift the next.
        let mut r = StdRng::seed_from_u64(schedule.random());
        tokio::time::sleep(Duration::from_millis(pause)).await;
        if tokio::time::Instant::now() >= until {
            return;
        }
        let at = start.elapsed().as_millis() as u64;
        times.push(at);
        let later = {
            let mut c = cluster.lock();
            let fault = draw(&mut r, &c, wiped, periodic, keys);
            if skip.contains(&i) {
                log.push(format!("#{i} {at} ms: (skipped) {fault}"));
                continue;
            }
            log.push(format!("#{i} {at} ms: {fault}"));
            inject(fault, &mut c, net, &mut wiped, at, outages)
        };
        let outage_after = match later {
            None => continue,
            // The power came back, and fails again a little later.
            Some(Later::Outage(ms)) => ms,
            // The split ends, and the power fails a little later.
            Some(Later::HealThenOutage(split, ms, only, lone)) => {
                let healed = tokio::time::Instant::now() + Duration::from_millis(split);
                if let Some(lone) = &lone {
                    // The lone replica's power fails first: what it coordinated since its
                    // last sync is gone from it, and lives on in the hints it sent to the
                    // other nodes for the replicas cut off. It fails while clients still
                    // write (if the split outlasts them, when they stop).
                    let at = healed - Duration::from_millis(lone.before_ms);
                    let now = tokio::time::Instant::now();
                    tokio::time::sleep_until(at.min(until.max(now))).await;
                    let mut c = cluster.lock();
                    if let Some(i) = c.index_of(&lone.id) {
                        c.kill(i, true);
                    }
                }
                tokio::time::sleep_until(healed).await;
                heal(&mut cluster.lock(), net);
                // Once the nodes hear of each other again (a gossip round or two), the
                // holders hand their hints off: the power fails a little after the last
                // one went (or after 3 s, if some cannot go). After a lone replica's power
                // loss, the hints that matter are the key's for the replicas cut off, held
                // by the other nodes (the lone replica's own go once it restarted and its
                // handoff came round): the power fails a little after those went, while
                // the replicas may not have synced them.
                let give_up = tokio::time::Instant::now() + Duration::from_secs(3);
                let pending = |c: &Cluster| match &lone {
                    Some(l) => c.holds_hint(&l.key, &l.cut, &l.id),
                    None => c.holds_hints(),
                };
                while tokio::time::Instant::now() < give_up && pending(&cluster.lock()) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                if let Some(ids) = only {
                    // Only the key's replicas lose power: the holders keep running, so
                    // a hint they deleted stays deleted.
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    outages.push(start.elapsed().as_millis() as u64);
                    let mut c = cluster.lock();
                    let machines: Vec<usize> = ids.iter().filter_map(|id| c.index_of(id)).collect();
                    for i in machines {
                        c.kill(i, true);
                    }
                    continue;
                }
                ms
            }
        };
        tokio::time::sleep(Duration::from_millis(outage_after)).await;
        outages.push(start.elapsed().as_millis() as u64);
        cluster.lock().kill_all(true);
    }
}

/// Injects `fault` (at `at` ms); what it does later, if anything.
fn inject(
    fault: Fault,
    c: &mut Cluster,
    net: &Arc<Net>,
    wiped: &mut bool,
    at: u64,
    outages: &mut Vec<u64>,
) -> Option<Later> {
    let mut later = None;
    match fault {
        Fault::Partition(a, b) => {
            net.heal();
            net.cut(&a, &b);
            net.cut(&b, &a);
        }
        Fault::OneWay(id) => {
            net.heal();
            let to: Vec<String> = c.ids().into_iter().filter(|i| *i != id).collect();
            net.cut(&[id], &to);
        }
        Fault::Storm => net.set_weather(Weather::STORM),
        Fault::Kill(m, _) => c.kill(m, false),
        Fault::PowerLoss(m, _) => c.kill(m, true),
        Fault::Outage(None) => {
            outages.push(at);
            c.kill_all(true);
        }
        Fault::Outage(Some(ms)) => {
            for m in 0..c.machines.len() {
                c.restart(m);
            }
            later = Some(Later::Outage(ms));
        }
        Fault::SplitThenOutage {
            key,
            replicas,
            rest,
            split_ms,
            outage_ms,
            lone,
        } => {
            net.heal();
            // The lone replica, if any, stays with the rest.
            let (cut, with_rest): (Vec<String>, Vec<String>) = replicas
                .iter()
                .cloned()
                .partition(|r| lone.as_ref().is_none_or(|(l, _)| l != r));
            let rest: Vec<String> = rest.into_iter().chain(with_rest).collect();
            net.cut(&cut, &rest);
            net.cut(&rest, &cut);
            // Half of them (by the split's parity, drawn anyway) cut the power of the
            // key's replicas only, as does every split with a lone replica.
            let only = (split_ms % 2 == 1 || lone.is_some()).then(|| replicas.clone());
            let lone = lone.map(|(id, before_ms)| Lone {
                id,
                before_ms,
                key,
                cut: cut.clone(),
            });
            later = Some(Later::HealThenOutage(split_ms, outage_ms, only, lone));
        }
        Fault::Wipe(m, _) => {
            *wiped = true;
            c.wipe(m);
        }
        Fault::Freeze(id, ms) => net.freeze(&id, Duration::from_millis(ms)),
        Fault::ClockJump(m, _, ms) => c.jump_clock(m, ms),
        Fault::FailDisk(m, _) => c.fail_disk(m),
        Fault::Reorder(a, b, ms) => net.reorder(&a, &b, Duration::from_millis(ms)),
        Fault::Heal => heal(c, net),
    }
    later
}

/// The next fault, drawn from `r` against the cluster as it is (`periodic`: the nodes
/// sync periodically, and a power loss is sometimes the whole cluster's, sometimes
/// after the replicas of one of `keys` were cut off from the rest).
fn draw(r: &mut StdRng, c: &Cluster, wiped: bool, periodic: bool, keys: &[String]) -> Fault {
    let ids = c.ids();
    let n = ids.len();
    // The split before an outage is drawn only with periodic syncs (two chances in 14),
    // so the schedules of runs that sync every write are as they were.
    let pick = r.random_range(0..if periodic { 14 } else { 12 });
    let victim = r.random_range(0..n);
    let id = ids[victim].clone();
    let machine = c.index_of(&id).expect("a machine per id");
    match pick {
        0 => {
            let mut side: Vec<String> = ids.clone();
            for i in (1..side.len()).rev() {
                side.swap(i, r.random_range(0..=i));
            }
            let cut = r.random_range(1..n);
            let b = side.split_off(cut);
            Fault::Partition(side, b)
        }
        1 => Fault::OneWay(id),
        2 => Fault::Storm,
        3 => Fault::Kill(machine, id),
        4 if periodic && r.random_bool(0.5) => {
            Fault::Outage(r.random_bool(0.5).then(|| r.random_range(200..2_000)))
        }
        4 => Fault::PowerLoss(machine, id),
        // One wipe per run: a second one before the first wiped replica is repaired
        // could take every copy of a write, which no store survives.
        5 if !wiped && r.random_bool(0.3) => Fault::Wipe(machine, id),
        6 => Fault::Freeze(id, r.random_range(500..8_000)),
        // Mostly small steps either way; sometimes far ahead (past the tombstone grace,
        // which then means nothing on that node).
        7 => {
            let ms = match r.random_bool(0.2) {
                true => r.random_range(60_000..600_000),
                false => r.random_range(-15_000..15_000),
            };
            Fault::ClockJump(machine, id, ms)
        }
        8 => Fault::FailDisk(machine, id),
        9 => {
            let other = ids[(victim + r.random_range(1..n)) % n].clone();
            Fault::Reorder(id, other, r.random_range(2_000..10_000))
        }
        12 | 13 => split_then_outage(r, c, keys).unwrap_or(Fault::Heal),
        _ => Fault::Heal,
    }
}

/// The replicas of one of `keys` (under the newest map a running node holds) cut off
/// from the other nodes long enough for both sides to believe the other down (a peer
/// silent for about 3.3 s is suspect, with gossip every 500 ms), so that the key's
/// writes coordinated on the other side go to fallbacks as hints; then, once the
/// network healed, an outage shortly after those hints were handed off. `keys` are
/// those clients write without reading: a read needs R replicas, so on the far side
/// only a put that reads nothing first is acknowledged. `None` if no node runs (no map
/// to read).
fn split_then_outage(r: &mut StdRng, c: &Cluster, keys: &[String]) -> Option<Fault> {
    let key = keys.get(r.random_range(0..keys.len().max(1)))?.clone();
    let state = c.newest_state()?;
    let map = state.newest()?;
    let ids = c.ids();
    let replicas: Vec<String> = map
        .preference_list(map.partition_of(key.as_bytes()))
        .map(|m| m.id.clone())
        .filter(|id| ids.contains(id))
        .collect();
    let rest = ids
        .into_iter()
        .filter(|id| !replicas.contains(id))
        .collect();
    // Within a sync interval of the handoff (the simulation's nodes sync every 900 ms or
    // so), and mostly before every node synced.
    let (split_ms, outage_ms) = (r.random_range(4_000..9_000), r.random_range(0..700));
    // Drawn after the rest, so that the splits drawn before this shape existed keep their
    // key, length and outage.
    let lone = (r.random_bool(0.5) && !replicas.is_empty()).then(|| {
        let lone = replicas[r.random_range(0..replicas.len())].clone();
        (lone, r.random_range(1_000..2_500))
    });
    // With a lone replica the outage follows the handoff closely: the replicas cut off
    // must not have synced since the hints reached them (each syncs once a sync interval,
    // on its own phase).
    let outage_ms = match lone {
        Some(_) => outage_ms / 4,
        None => outage_ms,
    };
    Some(Fault::SplitThenOutage {
        key,
        replicas,
        rest,
        split_ms,
        outage_ms,
        lone,
    })
}
