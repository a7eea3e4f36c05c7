//! A simulated Kubernetes side for the orchestration core: a StatefulSet controller that
//! creates pods and claims by ordinal and removes the highest ordinals, plus the cluster
//! status, events and fault injection (crash the operator before or after its k-th side
//! effect). Paired with [`MemoryAdmin`] it is a whole cluster in memory, on which tests
//! check the safety properties after every step:
//! - no claim is deleted while its node is in a live map or not drained;
//! - the StatefulSet never drops a pod whose node is in a live map;
//! - every partition keeps at least N copies.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::admin::memory::MemoryAdmin;
use crate::admin::{AdminError, ClusterAdmin, MapState, MoveProgress};
use crate::crd::ScalingOperation;
use crate::desired::Names;
use crate::orchestrate::{EventType, WorkloadError, Workloads};
use crate::scaling::{StsView, WorkloadView};
use dynamo_core::ring::{NodeId, PartitionMap};

/// Crash injection: the `crash_at`-th side effect (counting from 1) fails, before it
/// takes effect or, with `after`, after it did.
#[derive(Debug, Default, Clone)]
pub struct Faults {
    pub calls: u64,
    pub crash_at: Option<u64>,
    pub after: bool,
}

impl Faults {
    /// Counts a side effect; `Some(after)` when this one crashes.
    fn hit(&mut self) -> Option<bool> {
        self.calls += 1;
        (self.crash_at == Some(self.calls)).then_some(self.after)
    }
}

#[derive(Debug, Default)]
struct State {
    sts: Option<u32>,
    resource_version: u64,
    /// Pods by ordinal: (ready, terminating).
    pods: BTreeMap<u32, (bool, bool)>,
    /// Claims by ordinal, with their UIDs.
    pvcs: BTreeMap<u32, u64>,
    next_uid: u64,
    operation: Option<ScalingOperation>,
    events: Vec<(EventType, String, String)>,
    violations: Vec<String>,
    deleted_volumes: Vec<u32>,
    /// Ordinals whose pods never become ready.
    broken: BTreeSet<u32>,
    /// Bump the StatefulSet's resourceVersion right after the next observe (a concurrent writer).
    race: bool,
}

/// The simulated world: Kubernetes side and admin side of one cluster.
#[derive(Clone)]
pub struct World {
    pub names: Names,
    pub admin: MemoryAdmin,
    state: Arc<Mutex<State>>,
    faults: Arc<Mutex<Faults>>,
}

/// Error text of an injected crash.
pub const CRASH: &str = "injected operator crash";

impl World {
    /// An empty namespace with cluster `name` and no objects yet.
    pub fn new(name: &str) -> Self {
        Self {
            names: Names::new(name, "default"),
            admin: MemoryAdmin::new(),
            state: Arc::default(),
            faults: Arc::default(),
        }
    }

    /// Arms a crash at the `k`-th side effect from now on.
    pub fn crash_at(&self, k: u64, after: bool) {
        let mut f = self.faults.lock();
        *f = Faults {
            calls: 0,
            crash_at: Some(k),
            after,
        };
    }

    /// Side effects counted since the last `crash_at`.
    pub fn side_effects(&self) -> u64 {
        self.faults.lock().calls
    }

    fn fault(&self) -> Option<bool> {
        self.faults.lock().hit()
    }

    /// One round of the StatefulSet controller, the kubelet and the nodes: pods above
    /// the replicas terminate then go; missing pods (and claims) are created, then come
    /// up; the admin side reaches the pods that are up and moves `moves` partition
    /// replicas. A pod is ready only once a map exists (as a node's `/readyz`), so the
    /// first map is committed over reachable, unready nodes.
    pub fn tick(&self, moves: usize) {
        let maps = self.admin.snapshot();
        let has_map = maps.current.is_some() || maps.pending.is_some();
        let mut s = self.state.lock();
        let replicas = s.sts.unwrap_or(0);
        s.pods
            .retain(|&o, (_, terminating)| !(o >= replicas && *terminating));
        let st = &mut *s;
        for (&o, pod) in st.pods.iter_mut() {
            if o >= replicas {
                *pod = (false, true);
            } else {
                pod.0 = !st.broken.contains(&o) && has_map;
            }
        }
        let up: Vec<NodeId> = st
            .pods
            .iter()
            .filter(|(o, p)| !p.1 && !st.broken.contains(o))
            .map(|(&o, _)| self.names.pod(o))
            .collect();
        for o in 0..replicas {
            if let Entry::Vacant(pod) = st.pods.entry(o) {
                pod.insert((false, false));
                if let Entry::Vacant(pvc) = st.pvcs.entry(o) {
                    st.next_uid += 1;
                    pvc.insert(st.next_uid);
                }
            }
        }
        drop(s);
        self.admin.set_up(up);
        self.admin.tick(moves);
    }

    /// Makes the pod of `ordinal` unready (or ready again) from the next tick on.
    pub fn set_broken(&self, ordinal: u32, broken: bool) {
        let mut s = self.state.lock();
        if broken {
            s.broken.insert(ordinal);
        } else {
            s.broken.remove(&ordinal);
        }
    }

    /// Makes another writer change the StatefulSet right after the operator's next read.
    pub fn race_next_observe(&self) {
        self.state.lock().race = true;
    }

    /// Safety violations seen so far.
    pub fn violations(&self) -> Vec<String> {
        self.state.lock().violations.clone()
    }

    /// Claims deleted so far, by ordinal.
    pub fn deleted_volumes(&self) -> Vec<u32> {
        self.state.lock().deleted_volumes.clone()
    }

    /// Events published so far: (type, reason, message).
    pub fn events(&self) -> Vec<(EventType, String, String)> {
        self.state.lock().events.clone()
    }

    /// The StatefulSet's replicas, pods, claims and recorded operation.
    pub fn summary(&self) -> (Option<u32>, Vec<u32>, Vec<u32>, Option<ScalingOperation>) {
        let s = self.state.lock();
        (
            s.sts,
            s.pods.keys().copied().collect(),
            s.pvcs.keys().copied().collect(),
            s.operation.clone(),
        )
    }

    fn violation(&self, what: String) {
        self.state.lock().violations.push(what);
    }
}

impl Workloads for World {
    async fn observe(&self) -> Result<WorkloadView, WorkloadError> {
        let mut s = self.state.lock();
        let view = WorkloadView {
            statefulset: s.sts.map(|r| StsView {
                replicas: r,
                resource_version: Some(s.resource_version.to_string()),
            }),
            pods: s.pods.iter().map(|(&o, p)| (o, p.0)).collect(),
            pvcs: s.pvcs.keys().copied().collect(),
            zones: s
                .pods
                .keys()
                .map(|&o| (o, format!("zone-{}", o % 3)))
                .collect(),
            operation: s.operation.clone(),
        };
        if std::mem::take(&mut s.race) {
            s.resource_version += 1;
        }
        Ok(view)
    }

    async fn record(&self, op: Option<&ScalingOperation>) -> Result<(), WorkloadError> {
        let crash = self.fault();
        if crash == Some(false) {
            return Err(WorkloadError::Api(CRASH.into()));
        }
        self.state.lock().operation = op.cloned();
        crash.map_or(Ok(()), |_| Err(WorkloadError::Api(CRASH.into())))
    }

    async fn scale(&self, replicas: u32, expected: Option<&str>) -> Result<(), WorkloadError> {
        let crash = self.fault();
        if crash == Some(false) {
            return Err(WorkloadError::Api(CRASH.into()));
        }
        {
            let mut s = self.state.lock();
            if let Some(rv) = expected {
                if rv != s.resource_version.to_string() {
                    return Err(WorkloadError::Conflict(format!(
                        "StatefulSet changed since resourceVersion {rv}"
                    )));
                }
            }
            for o in replicas..s.sts.unwrap_or(0) {
                if self.admin.in_live_map(&self.names.pod(o)) {
                    s.violations.push(format!(
                        "StatefulSet shrunk below {} while it is in a live map",
                        self.names.pod(o)
                    ));
                }
            }
            s.sts = Some(replicas);
            s.resource_version += 1;
        }
        crash.map_or(Ok(()), |_| Err(WorkloadError::Api(CRASH.into())))
    }

    async fn delete_volume(&self, ordinal: u32) -> Result<(), WorkloadError> {
        let crash = self.fault();
        if crash == Some(false) {
            return Err(WorkloadError::Api(CRASH.into()));
        }
        let node = self.names.pod(ordinal);
        {
            let mut s = self.state.lock();
            if s.pods.contains_key(&ordinal) {
                return Err(WorkloadError::Conflict(format!("pod {node} still exists")));
            }
            if s.pvcs.remove(&ordinal).is_some() {
                if self.admin.in_live_map(&node) || !self.admin.is_drained(&node) {
                    s.violations
                        .push(format!("volume of {node} deleted before it was drained"));
                }
                s.deleted_volumes.push(ordinal);
            }
        }
        self.admin.wipe(&node);
        crash.map_or(Ok(()), |_| Err(WorkloadError::Api(CRASH.into())))
    }

    async fn event(
        &self,
        kind: EventType,
        reason: &str,
        message: &str,
    ) -> Result<(), WorkloadError> {
        self.state
            .lock()
            .events
            .push((kind, reason.into(), message.into()));
        Ok(())
    }
}

/// The admin side of the world, with the same crash injection as the Kubernetes side.
impl ClusterAdmin for World {
    async fn members(&self) -> Result<BTreeSet<NodeId>, AdminError> {
        self.admin.members().await
    }
    async fn maps(&self) -> Result<MapState, AdminError> {
        self.admin.maps().await
    }
    async fn commit(&self, map: &PartitionMap) -> Result<(), AdminError> {
        self.faulty(self.admin.commit(map)).await
    }
    async fn progress(&self, epoch: u64) -> Result<MoveProgress, AdminError> {
        self.admin.progress(epoch).await
    }
    async fn drained(&self, node: &str) -> Result<bool, AdminError> {
        self.admin.drained(node).await
    }
    async fn finalize(&self, epoch: u64) -> Result<(), AdminError> {
        self.faulty(self.admin.finalize(epoch)).await
    }
    async fn abort(&self, epoch: u64) -> Result<(), AdminError> {
        self.faulty(self.admin.abort(epoch)).await
    }
}

impl World {
    async fn faulty(
        &self,
        call: impl std::future::Future<Output = Result<(), AdminError>>,
    ) -> Result<(), AdminError> {
        match self.fault() {
            Some(false) => Err(AdminError::Unavailable(CRASH.into())),
            Some(true) => {
                call.await?;
                Err(AdminError::Unavailable(CRASH.into()))
            }
            None => call.await,
        }
    }

    /// Checks that every partition has at least `n` copies once a map exists.
    pub fn check_copies(&self, n: usize) {
        if self.admin.snapshot().current.is_some() {
            let min = self.admin.min_copies();
            if min < n {
                self.violation(format!(
                    "a partition has only {min} copies, fewer than n={n}"
                ));
            }
        }
    }
}
