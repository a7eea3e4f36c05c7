//! The state one node shares between its services and background tasks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dynamo_core::codec::decode_set;
use dynamo_core::context::ContextKey;
use dynamo_core::limits::{check_key, check_value};
use dynamo_core::map_state::MapState;
use dynamo_core::{Actor, Member, PartitionMap, SiblingSet};
use parking_lot::RwLock;
use tokio::sync::Notify;

use crate::clock::Clock;
use crate::config::NodeConfig;
use crate::dots::Epochs;
use crate::failure_detection;
use crate::gossip::state::{Entry, Status};
use crate::gossip::Gossip;
use crate::health::Health;
use crate::identity::Identity;
use crate::maps::{InstallError, Live};
use crate::metrics::Metrics;
use crate::network::{Transport, WriteEntry};
use crate::storage::StorageError;
use crate::store::{Change, Store};

/// Why [`Node::accept`] refused entries sent by a peer.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("corrupt sibling set: {0}")]
    Corrupt(String),
    #[error("invalid replica entry: {0}")]
    Invalid(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Everything a node's request handlers and background tasks share.
pub struct Node {
    pub cfg: NodeConfig,
    pub identity: Identity,
    /// This node's actor (node id + incarnation) at epoch 0; a write takes it at the
    /// key's epoch (see [`crate::dots`]).
    pub actor: Actor,
    /// The key epochs this incarnation mints.
    pub epochs: Epochs,
    /// The live maps (see [`crate::maps`]): stored, planned at a first start from the
    /// configured members, committed through the admin API, or taken from gossip. Read
    /// them once per request ([`Self::live`], [`Self::map`]), so that one request sees one
    /// state.
    live: RwLock<Arc<Live>>,
    /// Serializes installs of map states (each one is persisted first).
    installing: parking_lot::Mutex<()>,
    /// Wakes the tasks that act on a new map state (transfers, clean-up).
    pub maps_changed: Notify,
    /// The moves this node receives in the pending change (see [`crate::change`]).
    pub moves: parking_lot::Mutex<crate::change::MoveBook>,
    /// Serializes the transitions this node makes as the claimant.
    pub transitions: tokio::sync::Mutex<()>,
    pub store: Store,
    pub transport: Arc<dyn Transport>,
    /// Who this node knows of, and their heartbeats (see [`crate::gossip`]).
    pub gossip: Gossip,
    /// The failure detector's verdicts on peers (see [`crate::health`]).
    pub health: Health,
    pub metrics: Metrics,
    pub clock: Arc<dyn Clock>,
    /// Makes and checks this cluster's causal contexts (its tag and secret MAC key).
    pub context_key: ContextKey,
    /// Wakes hinted handoff (a peer came back, or a hint was stored).
    pub handoff_wakeup: Notify,
    /// The rate budget of hinted handoff and anti-entropy (see [`crate::budget`]).
    pub budget: crate::budget::Budget,
    /// The outcome of the last anti-entropy sweep (see [`crate::antientropy`]).
    pub anti_entropy: parking_lot::Mutex<Option<crate::antientropy::LastSweep>>,
    /// Serializes this node's coordinations of one key (see [`crate::key_lock`]).
    pub key_locks: crate::key_lock::KeyLocks,
    /// New replicas found still receiving a partition (see [`crate::arriving`]).
    pub arriving: crate::arriving::Arriving,
    pub started: Instant,
    /// Who may call what (see [`crate::access`]); open until the server sets its rules.
    pub access: Arc<crate::access::Access>,
    ready: AtomicBool,
    /// Set once the server is stopping: sessions stop reading requests.
    stopping: tokio::sync::watch::Sender<bool>,
}

impl Node {
    pub fn new(
        cfg: NodeConfig,
        identity: Identity,
        state: MapState,
        store: Store,
        transport: Arc<dyn Transport>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let actor = Actor::new(identity.node_id.clone(), identity.incarnation);
        let context_key = ContextKey::new(&cfg.cluster_id, cfg.cluster_secret.as_bytes());
        let epochs = Epochs::starting_at(identity.next_epoch);
        let budget = crate::budget::Budget::new(cfg.budget());
        let me = Entry {
            // Grows on every start (the wall clock's milliseconds), so that peers take
            // this process's heartbeats over the last one's.
            generation: clock.now_ms(),
            heartbeat: 0,
            node_id: identity.node_id.clone(),
            addr: cfg.peer_addr(),
            client_addr: cfg.gossiped_client_addr(),
            zone: state.member(&identity.node_id).and_then(|m| m.zone.clone()),
            incarnation: identity.incarnation,
            status: Status::Alive,
            map_version: state.version,
        };
        let interval = cfg.gossip_interval();
        let gossip = Gossip::new(me, cfg.seeds.clone(), interval, cfg.gossip_fanout);
        let health = Health::new(failure_detection::Settings {
            expected_interval_ms: cfg.gossip_interval_ms,
            // As the default's half of a second is to rounds of a second.
            min_std_dev_ms: cfg.gossip_interval_ms / 2,
            suspect_phi: cfg.suspect_phi,
            down_after_ms: cfg.down_after_ms,
            ..failure_detection::Settings::default()
        });
        Self {
            cfg,
            identity,
            actor,
            epochs,
            live: {
                transport.set_map_epoch(state.newest().map_or(0, |m| m.epoch));
                RwLock::new(Arc::new(Live::new(state)))
            },
            installing: Default::default(),
            maps_changed: Notify::new(),
            moves: Default::default(),
            transitions: Default::default(),
            store,
            transport,
            gossip,
            health,
            metrics: Metrics::default(),
            clock,
            context_key,
            handoff_wakeup: Notify::new(),
            anti_entropy: Default::default(),
            budget,
            key_locks: Default::default(),
            arriving: Default::default(),
            started: Instant::now(),
            access: crate::access::Access::open(),
            ready: AtomicBool::new(false),
            stopping: tokio::sync::watch::Sender::new(false),
        }
    }

    pub fn id(&self) -> &str {
        &self.identity.node_id
    }

    pub fn timeout(&self) -> Duration {
        self.cfg.request_timeout()
    }

    /// The live maps, as one snapshot.
    pub fn live(&self) -> Arc<Live> {
        self.live.read().clone()
    }

    /// The map reads and routing use, if this node holds any map yet.
    pub fn try_map(&self) -> Option<Arc<PartitionMap>> {
        self.live.read().reads.clone()
    }

    /// The map reads and routing use. Only for code that runs once the node holds a map
    /// (background tasks start then; request handlers check [`Self::try_map`] first).
    pub fn map(&self) -> Arc<PartitionMap> {
        self.try_map()
            .expect("only called once the node holds a partition map")
    }

    /// Installs `state` if it supersedes the one held (see
    /// [`MapState::supersedes`]): persisted first, then in force for every request that
    /// starts after. Returns whether it was installed.
    pub fn install(&self, state: MapState) -> Result<bool, InstallError> {
        let _one = self.installing.lock();
        let held = self.live();
        if !state.supersedes(&held.state) {
            return Ok(false);
        }
        if let Some(q) = state.partitions() {
            if q != self.store.partitions() {
                return Err(InstallError::Partitions {
                    ours: self.store.partitions(),
                    theirs: q,
                });
            }
        }
        crate::maps::save(&**self.store.engine(), &state)?;
        tracing::info!(
            version = state.version,
            current = ?state.current.as_ref().map(|m| m.epoch),
            pending = ?state.pending.as_ref().map(|m| m.epoch),
            "map state installed"
        );
        for m in state.members() {
            if m.id != self.id() {
                self.health.watch(&m.id);
            }
        }
        // A member of the map in force that no map of the new state names has left
        // (a member only of an aborted pending map was never in, and may be added again).
        for id in state.left_since(&held.state) {
            if id != self.id() {
                tracing::info!(peer = %id, "gossip: forgetting a node that left the cluster");
                self.gossip.forget(&id, self.clock.now_ms());
                self.health.forget(&id);
            }
        }
        // A change begins: streaming partitions costs what it costs, whatever the
        // background work before it did (see `budget`).
        let epoch = |s: &MapState| s.pending.as_ref().map(|m| m.epoch);
        if epoch(&state).is_some() && epoch(&state) != epoch(&held.state) {
            self.budget.restart();
        }
        let version = state.version;
        self.transport
            .set_map_epoch(state.newest().map_or(0, |m| m.epoch));
        *self.live.write() = Arc::new(Live::new(state));
        self.gossip.set_map_version(self.id(), version);
        self.maps_changed.notify_waiters();
        Ok(true)
    }

    /// Waits until the node holds a map.
    pub async fn has_map(&self) {
        loop {
            let changed = self.maps_changed.notified();
            if self.try_map().is_some() {
                return;
            }
            changed.await;
        }
    }

    /// Looks up a member of a live map.
    pub fn member(&self, id: &str) -> Option<Member> {
        self.live.read().state.member(id).cloned()
    }

    /// N of the map reads use (the configured N before the node holds a map).
    pub fn n(&self) -> u32 {
        self.try_map()
            .map_or(self.cfg.replication.n, |m| m.replication)
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Tells every session to stop reading requests: the server is stopping, and open
    /// sessions would otherwise hold its graceful shutdown for the whole grace period.
    pub fn stop_sessions(&self) {
        self.stopping.send_replace(true);
    }

    /// Completes once [`Self::stop_sessions`] was called.
    pub fn stopping(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.stopping.subscribe();
        async move {
            let _ = rx.wait_for(|stopping| *stopping).await;
        }
    }

    /// Accepts sibling sets sent by a peer: joins them into the store, or keeps them as
    /// hints when they are meant for another node (this node is a sloppy-quorum fallback).
    /// Every entry is checked first (see [`Self::check_entry`]), so a bad one stores
    /// nothing; then all are applied together (one writer group).
    pub async fn accept(&self, entries: Vec<WriteEntry>) -> Result<(), AcceptError> {
        let now = self.clock.now_ms();
        let mut hinted = false;
        let sync = entries.iter().any(|e| e.sync);
        let changes = entries
            .into_iter()
            .map(|e| {
                let set = self.check_entry(&e)?;
                Ok(match e.hint_for.filter(|t| t != self.id()) {
                    Some(target) => {
                        hinted = true;
                        Change::Hint {
                            target,
                            key: e.key,
                            set,
                            now_ms: now,
                        }
                    }
                    None => Change::Join { key: e.key, set },
                })
            })
            .collect::<Result<Vec<_>, AcceptError>>()?;
        self.store.apply_all(changes).await?;
        if sync {
            self.store.sync().await?;
        }
        if hinted {
            self.handoff_wakeup.notify_one();
        }
        Ok(())
    }

    /// Checks a peer's entry as a client's request is checked, and decodes its set: the
    /// key's size, every value's size, the set's size (at most `max_set_bytes` for each
    /// of N + 1 coordinators that may each have made a set up to it concurrently), its
    /// counters and actors (bounded by the codec), and that a hint names a member.
    pub fn check_entry(&self, e: &WriteEntry) -> Result<SiblingSet, AcceptError> {
        let invalid = |why: String| AcceptError::Invalid(why);
        check_key(&e.key).map_err(|err| invalid(err.to_string()))?;
        let n = self.n() as usize;
        let limit = self.cfg.max_set_bytes.saturating_mul(n + 1);
        if e.set.len() > limit {
            return Err(invalid(format!(
                "sibling set of {} bytes; a replica takes at most {limit} (max_set_bytes \
                 times N + 1)",
                e.set.len()
            )));
        }
        let set = decode_set(&e.set).map_err(|err| AcceptError::Corrupt(err.to_string()))?;
        for v in set.values() {
            check_value(v, self.cfg.max_value_bytes).map_err(|err| invalid(err.to_string()))?;
        }
        if let Some(target) = &e.hint_for {
            if target.contains('\0') || self.member(target).is_none() {
                return Err(invalid(format!(
                    "hint_for {target:?} is not a member of this cluster"
                )));
            }
        }
        Ok(set)
    }
}
