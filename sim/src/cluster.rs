//! The simulated cluster: real nodes (coordinator, store, hinted handoff, read repair,
//! gossip, anti-entropy, tombstone purging and fallback clean-up, transfers) on the
//! loopback transport, each on a simulated disk, with their background tasks, that the
//! nemesis crashes, powers off, wipes and restarts.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dynamo_core::map_state::MapState;
use dynamo_core::{planner, Member};
use dynamo_node::clock::Clock;
use dynamo_node::config::{FsyncPolicy, NodeConfig, Replication};
use dynamo_node::determinism::with_rng;
use dynamo_node::network::loopback::LoopbackNet;
use dynamo_node::node::Node;
use dynamo_node::service::kv::KvService;
use dynamo_node::storage::memory::MemoryEngine;
use dynamo_node::storage::power::PowerCycle;
use dynamo_node::store::Store;
use dynamo_node::{antientropy, change, gossip, handoff};
use rand::Rng;
use tokio::task::JoinHandle;

/// Partitions of the simulated cluster.
pub const Q: u32 = 16;

/// Wall-clock time in a simulation: a fixed start plus simulated time elapsed, plus the
/// machine's clock error (which the nemesis makes jump).
pub struct SimClock {
    start: tokio::time::Instant,
    skew_ms: Arc<AtomicI64>,
}

impl Clock for SimClock {
    fn now_ms(&self) -> u64 {
        let now = 1_800_000_000_000 + self.start.elapsed().as_millis() as i64;
        (now + self.skew_ms.load(Ordering::Relaxed)) as u64
    }
}

/// A running node process.
pub struct Process {
    pub node: Arc<Node>,
    pub kv: Arc<KvService>,
    power: Arc<PowerCycle>,
    tasks: Vec<JoinHandle<()>>,
}

/// One member's machine: its disk, and its process when it runs.
pub struct Machine {
    pub member: Member,
    pub disk: Arc<MemoryEngine>,
    pub process: Option<Process>,
    /// Removed from the cluster by a finished change, and stopped for good.
    pub retired: bool,
    /// How far the machine's clock is off, in milliseconds.
    pub skew_ms: Arc<AtomicI64>,
}

pub struct Cluster {
    pub net: Arc<LoopbackNet>,
    pub machines: Vec<Machine>,
    /// `None`: every node syncs every write before acknowledging it; otherwise every node
    /// acknowledges writes unsynced and syncs every so often (the `periodic` policy).
    pub periodic_sync: Option<Duration>,
    start: tokio::time::Instant,
    first_map: MapState,
    /// Tombstones purged and fallback copies dropped by processes that have stopped
    /// (their nodes' metrics go with them); see [`Cluster::purges`].
    stopped_purges: Purges,
}

/// What the nodes' purge tasks did in a run (from their metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Purges {
    /// Tombstones purged (counted once, by the partition's owner).
    pub purged: u64,
    /// Copies of keys a node does not replicate that it dropped (a fallback's clean-up).
    pub cleaned: u64,
}

impl Purges {
    fn of(node: &Node) -> Self {
        Self {
            purged: node.metrics.tombstones_purged.get(),
            cleaned: node.metrics.fallback_copies_dropped.get(),
        }
    }

    fn add(&mut self, other: Self) {
        self.purged += other.purged;
        self.cleaned += other.cleaned;
    }
}

impl Cluster {
    /// `nodes` members, each started on an empty disk, under one first map, syncing
    /// every write or (`periodic_sync`) every so often.
    pub fn start(
        net: Arc<LoopbackNet>,
        nodes: usize,
        start: tokio::time::Instant,
        periodic_sync: Option<Duration>,
    ) -> Self {
        let members: Vec<Member> = (1..=nodes)
            .map(|i| Member::new(format!("n{i}"), format!("sim:{i}")))
            .collect();
        let map = planner::plan(None, &members, Q, 3).expect("a first map");
        let mut c = Self {
            net,
            periodic_sync,
            machines: members
                .into_iter()
                .map(|member| Machine {
                    member,
                    disk: Arc::new(MemoryEngine::new()),
                    process: None,
                    retired: false,
                    skew_ms: Arc::new(AtomicI64::new(0)),
                })
                .collect(),
            start,
            first_map: MapState::in_force(map),
            stopped_purges: Purges::default(),
        };
        for i in 0..nodes {
            c.boot(i);
        }
        c
    }

    fn config(&self, i: usize) -> NodeConfig {
        let members: Vec<Member> = self.machines.iter().map(|m| m.member.clone()).collect();
        NodeConfig {
            node_id: members[i].id.clone(),
            advertise: Some(members[i].addr.clone()),
            cluster_id: "sim".into(),
            cluster_secret: "sim-cluster-secret-0123456789abcdef".into(),
            members,
            replication: Replication { n: 3, r: 2, w: 2 },
            partitions: Q,
            request_timeout_ms: 500,
            gossip_interval_ms: 500,
            anti_entropy_interval_ms: 3_000,
            // Short enough that tombstones are purged within a run (a pass every 10 s, see
            // `antientropy::purge::interval`; a tombstone goes 20-30 s after its set stopped
            // changing, once every member is up and no change is under way: mostly in the
            // settling time), and that clock jumps can make a node think one is old.
            tombstone_grace_ms: 20_000,
            fsync: match self.periodic_sync {
                Some(_) => FsyncPolicy::Periodic,
                None => FsyncPolicy::Always,
            },
            fsync_interval_ms: self.periodic_sync.map_or(100, |d| d.as_millis() as u64),
            ..NodeConfig::default()
        }
    }

    /// A new machine with an empty disk, started (it learns the map from the others);
    /// its index. It takes the address of a retired machine, if there is one.
    pub fn add_machine(&mut self) -> usize {
        let k = self.machines.len() + 1;
        // A retired machine's address is taken again, as a re-created pod's would be.
        let in_use = |addr: &str| {
            self.machines
                .iter()
                .any(|m| !m.retired && m.member.addr == addr)
        };
        let addr = self
            .machines
            .iter()
            .find(|m| m.retired && !in_use(&m.member.addr))
            .map_or_else(|| format!("sim:{k}"), |m| m.member.addr.clone());
        self.machines.push(Machine {
            member: Member::new(format!("n{k}"), addr),
            disk: Arc::new(MemoryEngine::new()),
            process: None,
            retired: false,
            skew_ms: Arc::new(AtomicI64::new(0)),
        });
        let i = self.machines.len() - 1;
        self.boot(i);
        i
    }

    /// Stops machine `i` for good: a finished change removed it.
    pub fn retire(&mut self, i: usize) {
        self.kill(i, false);
        self.machines[i].retired = true;
    }

    /// Starts machine `i`'s process on its disk, as the node binary would.
    pub fn boot(&mut self, i: usize) {
        if self.machines[i].process.is_some() || self.machines[i].retired {
            return;
        }
        let power = PowerCycle::new(self.machines[i].disk.clone());
        // A wiped node learns the state the others hold, as it would from its seeds.
        let learned = || {
            self.newest_state()
                .unwrap_or_else(|| self.first_map.clone())
        };
        let node = self
            .net
            .start_node(
                self.config(i),
                power.clone(),
                |engine| Store::inline(engine, Q, self.periodic_sync.is_none()),
                Arc::new(SimClock {
                    start: self.start,
                    skew_ms: self.machines[i].skew_ms.clone(),
                }),
                learned,
            )
            .expect("a simulated node starts on a live disk");
        // The background tasks the node binary starts (`start_background` in
        // node/src/server.rs), with the same intervals.
        let every = Duration::from_millis(node.cfg.anti_entropy_interval_ms);
        let mut tasks = vec![
            tokio::spawn(gossip::run(node.clone())),
            tokio::spawn(handoff::run(node.clone())),
            tokio::spawn(change::run(node.clone())),
            tokio::spawn(antientropy::run(node.clone(), every)),
        ];
        if node.cfg.tombstone_grace_ms > 0 {
            let grace = Duration::from_millis(node.cfg.tombstone_grace_ms);
            let every = antientropy::purge::interval(grace);
            tasks.push(tokio::spawn(antientropy::purge::run(
                node.clone(),
                grace,
                every,
            )));
        }
        if let Some(every) = self.periodic_sync {
            // Nodes started together do not sync together: each from a phase of its own.
            let phase = with_rng(|r| r.random_range(0..every.as_millis() as u64));
            let phase = Duration::from_millis(phase);
            tasks.push(tokio::spawn(periodic_sync(node.clone(), phase, every)));
        }
        node.set_ready(true);
        self.machines[i].process = Some(Process {
            kv: Arc::new(KvService::new(node.clone())),
            node,
            power,
            tasks,
        });
    }

    /// What the purge tasks of every process so far did (running or stopped).
    pub fn purges(&self) -> Purges {
        let mut all = self.stopped_purges;
        for p in self.running() {
            all.add(Purges::of(&p.node));
        }
        all
    }

    /// The newest map state any running node holds.
    pub fn newest_state(&self) -> Option<MapState> {
        self.running()
            .map(|p| p.node.live().state.clone())
            .max_by_key(|s| s.version)
    }

    /// Kills machine `i`'s process (`power_loss`: and loses what its disk had not synced).
    pub fn kill(&mut self, i: usize, power_loss: bool) {
        if let Some(p) = self.machines[i].process.take() {
            p.power.end(power_loss);
            for t in &p.tasks {
                t.abort();
            }
            self.stopped_purges.add(Purges::of(&p.node));
            self.net.set_down(&self.machines[i].member.id, true);
        }
    }

    /// Kills every machine (`power_loss`: every machine loses power at once).
    pub fn kill_all(&mut self, power_loss: bool) {
        for i in 0..self.machines.len() {
            self.kill(i, power_loss);
        }
    }

    /// Kills machine `i` and gives it an empty disk.
    pub fn wipe(&mut self, i: usize) {
        self.kill(i, true);
        self.machines[i].disk = Arc::new(MemoryEngine::new());
    }

    /// Makes machine `i`'s disk fail every write from now on (until its process is
    /// restarted on it, see [`Cluster::restart_failed_disks`]).
    pub fn fail_disk(&mut self, i: usize) {
        if let Some(p) = &self.machines[i].process {
            p.power.fail_writes();
        }
    }

    /// Restarts every process whose disk failed (the disk is replaced by a working one
    /// holding the same data, as after an operator's repair).
    pub fn restart_failed_disks(&mut self) {
        for i in 0..self.machines.len() {
            if self.machines[i]
                .process
                .as_ref()
                .is_some_and(|p| p.power.failing())
            {
                self.kill(i, false);
                self.restart(i);
            }
        }
    }

    /// Moves machine `i`'s clock by `ms` (forward or back).
    pub fn jump_clock(&self, i: usize, ms: i64) {
        self.machines[i].skew_ms.fetch_add(ms, Ordering::Relaxed);
    }

    /// Starts machine `i` again (unless retired).
    pub fn restart(&mut self, i: usize) {
        if self.machines[i].retired {
            return;
        }
        self.net.set_down(&self.machines[i].member.id, false);
        self.boot(i);
    }

    pub fn running(&self) -> impl Iterator<Item = &Process> {
        self.machines.iter().filter_map(|m| m.process.as_ref())
    }

    /// The index of the machine of node `id`.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.machines.iter().position(|m| m.member.id == id)
    }

    /// Whether a running node holds a hint.
    pub fn holds_hints(&self) -> bool {
        self.running()
            .any(|p| p.node.store.hint_summary().is_ok_and(|s| !s.is_empty()))
    }

    /// Whether a running node other than `not` holds a hint of `key` for one of
    /// `targets`.
    pub fn holds_hint(&self, key: &str, targets: &[String], not: &str) -> bool {
        self.running().filter(|p| p.node.id() != not).any(|p| {
            p.node
                .store
                .holds_hint(key.as_bytes(), targets.iter().map(String::as_str))
                .unwrap_or(false)
        })
    }

    /// The indexes of running machines.
    pub fn up(&self) -> Vec<usize> {
        (0..self.machines.len())
            .filter(|&i| self.machines[i].process.is_some())
            .collect()
    }

    /// The ids of the machines not retired.
    pub fn ids(&self) -> Vec<String> {
        self.machines
            .iter()
            .filter(|m| !m.retired)
            .map(|m| m.member.id.clone())
            .collect()
    }
}

/// Syncs the node's disk every `every` after `phase`, as the node binary's `periodic`
/// fsync policy does.
async fn periodic_sync(node: Arc<Node>, phase: Duration, every: Duration) {
    tokio::time::sleep(phase).await;
    loop {
        // A failed sync poisons the store (it refuses writes until the node restarts).
        let _ = node.store.sync().await;
        tokio::time::sleep(every).await;
    }
}
