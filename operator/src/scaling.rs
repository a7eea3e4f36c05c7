//! The scaling state machine, as pure logic: from what is observed (the Kubernetes side,
//! the admin side and the operation recorded in status) to the one next action.
//!
//! Every transition to a new step is first *recorded* in status (`Action::Record`) and
//! only a later pass performs that step's side effect, which is idempotent and derived
//! from observed state. So an operator killed at any point and restarted resumes: it
//! re-reads the recorded step and re-derives the same action.
//!
//! - Scale-out: Provisioning (grow the StatefulSet, wait for the pods to be ready and
//!   reachable; for the first map, which no node holds yet and so no node is ready
//!   without, only for them to exist and be reachable) → Committing (plan with the Strategy 3 planner, commit) → Moving (wait
//!   until moves are done and every node synced) → Finalizing (retire the old map) → done.
//! - Scale-in: Committing (plan without the highest ordinals) → Moving (also wait until
//!   the departing nodes are drained: hold nothing the others lack) → Finalizing →
//!   Shrinking (lower the StatefulSet with optimistic concurrency, wait for the pods to be
//!   gone) → CleaningUp (delete their claims if the policy says so) → done.
//! - A change of `spec.replicas` while an operation runs: before Finalizing the pending
//!   map is aborted (the old map stayed live and complete, so nothing is lost) and the
//!   operation cleared; from Finalizing on, the operation finishes first. Then a new
//!   operation starts from the committed map. Neither way can wedge. The first map of a
//!   new cluster is never aborted (it is the only map): its operation finishes first.
//! - Refusals (no operation starts): `spec.replicas` below N, a changed partition count,
//!   or an unhealthy cluster.

use std::collections::{BTreeMap, BTreeSet};

use dynamo_core::ring::{NodeId, PartitionMap};

use crate::admin::{MapState, MoveProgress};
use crate::crd::{Direction, PvcPolicy, ScalingOperation, Step};
use crate::desired::{ordinal_members, Names};

/// What the user asked for, from the validated spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Intent {
    pub replicas: i32,
    pub n: u32,
    pub partitions: u32,
    pub pvc_policy: PvcPolicy,
}

/// The StatefulSet as observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StsView {
    pub replicas: u32,
    pub resource_version: Option<String>,
}

/// What the Kubernetes side shows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkloadView {
    /// The StatefulSet, if it exists.
    pub statefulset: Option<StsView>,
    /// Existing pods by ordinal, and whether each is ready.
    pub pods: BTreeMap<u32, bool>,
    /// Ordinals whose data claim exists.
    pub pvcs: BTreeSet<u32>,
    /// Failure zone of each pod's Kubernetes node (value of the zone topology label).
    pub zones: BTreeMap<u32, String>,
    /// The operation recorded in status.
    pub operation: Option<ScalingOperation>,
}

/// Everything a decision is derived from.
#[derive(Clone, Debug)]
pub struct Observed {
    pub names: Names,
    pub intent: Intent,
    pub workloads: WorkloadView,
    pub maps: MapState,
    /// Progress of the pending map, when there is one.
    pub progress: Option<MoveProgress>,
    /// Drained state of the current map's members that the pending map drops.
    pub drained: BTreeMap<NodeId, bool>,
    /// Nodes the admin side sees up.
    pub reachable: BTreeSet<NodeId>,
}

/// The one side effect of this pass.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Nothing to do now (steady, waiting, or refused).
    Nothing,
    /// Write the operation (or its absence) to status.
    Record(Option<ScalingOperation>),
    /// Set the StatefulSet's replicas; with the resourceVersion it was observed at when
    /// shrinking (optimistic concurrency).
    Scale {
        replicas: u32,
        expected_resource_version: Option<String>,
    },
    /// Commit the planned map as the pending version.
    Commit(PartitionMap),
    /// Retire the old map version.
    Finalize(u64),
    /// Drop the pending map version.
    Abort(u64),
    /// Delete a departed ordinal's data claim (re-read live, UID precondition).
    DeleteVolume(u32),
}

/// Why no operation is started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    BelowReplication { replicas: i32, n: u32 },
    PartitionsChanged { committed: u32, requested: u32 },
    Unhealthy { not_ready: Vec<String> },
    PlanFailed(String),
}

impl Refusal {
    /// Stable category: the Degraded condition's reason and the Event reason.
    pub fn category(&self) -> &'static str {
        match self {
            Self::BelowReplication { .. } => "BelowReplicationFactor",
            Self::PartitionsChanged { .. } => "PartitionsImmutable",
            Self::Unhealthy { .. } => "ClusterUnhealthy",
            Self::PlanFailed(_) => "PlanFailed",
        }
    }

    /// What happened and what to do, for the condition message and the Event.
    pub fn message(&self) -> String {
        match self {
            Self::BelowReplication { replicas, n } => format!(
                "refusing to scale to {replicas} nodes: below replication factor n={n}; set spec.replicas to at least {n}"
            ),
            Self::PartitionsChanged { committed, requested } => format!(
                "refusing to change partitions from {committed} to {requested}: the partition count is fixed at creation; set spec.partitions back to {committed}"
            ),
            Self::Unhealthy { not_ready } => format!(
                "refusing to start scaling while nodes are not ready: {}; scaling starts when they are",
                not_ready.join(", ")
            ),
            Self::PlanFailed(e) => format!("cannot plan the partition map: {e}"),
        }
    }
}

/// The next action and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub action: Action,
    /// What the operator is waiting for, if anything.
    pub waiting: Option<String>,
    /// Why a requested change is refused, if it is.
    pub refusal: Option<Refusal>,
}

impl Decision {
    fn act(action: Action) -> Self {
        Self {
            action,
            waiting: None,
            refusal: None,
        }
    }
    fn wait(why: impl Into<String>) -> Self {
        Self {
            action: Action::Nothing,
            waiting: Some(why.into()),
            refusal: None,
        }
    }
    fn refuse(r: Refusal) -> Self {
        Self {
            action: Action::Nothing,
            waiting: None,
            refusal: Some(r),
        }
    }
    fn steady() -> Self {
        Self::act(Action::Nothing)
    }
}

impl Observed {
    fn map_count(&self) -> u32 {
        self.maps
            .current
            .as_ref()
            .map_or(0, |m| m.members.len() as u32)
    }
    fn sts_replicas(&self) -> u32 {
        self.workloads
            .statefulset
            .as_ref()
            .map_or(0, |s| s.replicas)
    }
    /// The requested node count, or None when it is refused.
    fn requested(&self) -> Result<u32, Refusal> {
        let i = &self.intent;
        if i.replicas < i.n as i32 {
            return Err(Refusal::BelowReplication {
                replicas: i.replicas,
                n: i.n,
            });
        }
        if let Some(m) = &self.maps.current {
            if m.partitions != i.partitions {
                return Err(Refusal::PartitionsChanged {
                    committed: m.partitions,
                    requested: i.partitions,
                });
            }
        }
        Ok(i.replicas as u32)
    }
    /// Whether no map exists yet. The nodes then hold none, so none is ready (a node is
    /// ready once it holds a map): being reachable through the admin side is what counts.
    fn first_map(&self) -> bool {
        self.maps.current.is_none() && self.maps.pending.is_none()
    }
    /// Node ids of ordinals `0..count` whose pod does not exist or that are not reachable.
    fn unreachable(&self, count: u32) -> Vec<String> {
        (0..count)
            .map(|o| (o, self.names.pod(o)))
            .filter(|(o, id)| !self.workloads.pods.contains_key(o) || !self.reachable.contains(id))
            .map(|(_, id)| id)
            .collect()
    }
    /// Node ids of ordinals `0..count` that are not ready or not reachable.
    fn not_ready(&self, count: u32) -> Vec<String> {
        (0..count)
            .map(|o| (o, self.names.pod(o)))
            .filter(|(o, id)| {
                self.workloads.pods.get(o) != Some(&true) || !self.reachable.contains(id)
            })
            .map(|(_, id)| id)
            .collect()
    }
    /// The planner's map for ordinals `0..to`, with the zones the pods run in, so that
    /// preference lists span zones.
    fn plan(&self, to: u32) -> Result<PartitionMap, Refusal> {
        let mut members = ordinal_members(&self.names, to);
        for (ordinal, m) in members.iter_mut().enumerate() {
            m.zone = self.workloads.zones.get(&(ordinal as u32)).cloned();
        }
        dynamo_core::planner::plan(
            self.maps.current.as_ref(),
            &members,
            self.intent.partitions,
            self.intent.n,
        )
        .map_err(|e| Refusal::PlanFailed(e.to_string()))
    }
    fn next_epoch(&self) -> u64 {
        self.maps.current.as_ref().map_or(1, |m| m.epoch + 1)
    }
}

/// Decides the next action.
pub fn decide(o: &Observed) -> Decision {
    match &o.workloads.operation {
        None => idle(o),
        Some(op) => {
            let requested = o.requested().ok();
            if let Some(d) = interrupted(o, op, requested) {
                return d;
            }
            let mut d = in_operation(o, op);
            if let (Action::Nothing, Err(r)) = (&d.action, o.requested()) {
                d.refusal = Some(r);
            }
            d
        }
    }
}

/// No operation recorded: refuse, tidy up, or start one.
fn idle(o: &Observed) -> Decision {
    let count = o.map_count();
    if let Some(p) = &o.maps.pending {
        if o.maps.current.is_none() {
            // A first map without a recorded operation (status lost): it cannot be
            // aborted (it is the only map), so finish it.
            return Decision::act(Action::Record(Some(ScalingOperation {
                direction: Direction::ScaleOut,
                from: 0,
                to: p.members.len() as i32,
                step: Step::Moving,
                target_epoch: Some(p.epoch as i64),
            })));
        }
        // A pending map without a recorded operation was never ours to finish.
        return Decision::act(Action::Abort(p.epoch));
    }
    let requested = match o.requested() {
        Ok(r) => r,
        Err(r) => return Decision::refuse(r),
    };
    // Pods above the map own nothing (an aborted scale-out): removing them is always safe.
    if o.sts_replicas() > count && count > 0 && requested <= count {
        return Decision::act(Action::Scale {
            replicas: count,
            expected_resource_version: None,
        });
    }
    if requested == count {
        if o.sts_replicas() < count {
            return Decision::act(Action::Scale {
                replicas: count,
                expected_resource_version: None,
            });
        }
        return Decision::steady();
    }
    let not_ready = o.not_ready(count);
    if !not_ready.is_empty() {
        return Decision::refuse(Refusal::Unhealthy { not_ready });
    }
    let op = if requested > count {
        ScalingOperation {
            direction: Direction::ScaleOut,
            from: count as i32,
            to: requested as i32,
            step: Step::Provisioning,
            target_epoch: None,
        }
    } else {
        ScalingOperation {
            direction: Direction::ScaleIn,
            from: count as i32,
            to: requested as i32,
            step: Step::Committing,
            target_epoch: Some(o.next_epoch() as i64),
        }
    };
    Decision::act(Action::Record(Some(op)))
}

/// A change of the requested size that reverses the operation: abort while the old map
/// is still live, otherwise let the operation finish.
fn interrupted(o: &Observed, op: &ScalingOperation, requested: Option<u32>) -> Option<Decision> {
    let requested = requested? as i32;
    let reversed = match op.direction {
        Direction::ScaleOut => requested < op.to,
        Direction::ScaleIn => requested > op.to,
    };
    if !reversed || op.step >= Step::Finalizing {
        return None;
    }
    let target = op.target_epoch.map(|e| e as u64);
    match (&o.maps.pending, target) {
        // The first map cannot be aborted (it is the only one): finish, then scale again.
        (Some(_), _) if o.maps.current.is_none() => None,
        (Some(p), Some(t)) if p.epoch == t => Some(Decision::act(Action::Abort(t))),
        // Already finalized (a crash between finalize and recording it): finish instead.
        _ if target.is_some() && o.maps.current.as_ref().map(|c| c.epoch) == target => None,
        _ => Some(Decision::act(Action::Record(None))),
    }
}

fn record(op: &ScalingOperation, step: Step) -> Decision {
    Decision::act(Action::Record(Some(ScalingOperation {
        step,
        ..op.clone()
    })))
}

fn in_operation(o: &Observed, op: &ScalingOperation) -> Decision {
    match op.step {
        Step::Provisioning => provisioning(o, op),
        Step::Committing => committing(o, op),
        Step::Moving => moving(o, op),
        Step::Finalizing => finalizing(o, op),
        Step::Shrinking => shrinking(o, op),
        Step::CleaningUp => cleaning_up(o, op),
    }
}

fn provisioning(o: &Observed, op: &ScalingOperation) -> Decision {
    let to = op.to as u32;
    if o.sts_replicas() < to {
        return Decision::act(Action::Scale {
            replicas: to,
            expected_resource_version: None,
        });
    }
    let (missing, state) = match o.first_map() {
        true => (o.unreachable(to), "reachable"),
        false => (o.not_ready(to), "ready"),
    };
    if !missing.is_empty() {
        return Decision::wait(format!(
            "waiting for nodes to be {state}: {}",
            missing.join(", ")
        ));
    }
    let next = ScalingOperation {
        step: Step::Committing,
        target_epoch: Some(o.next_epoch() as i64),
        ..op.clone()
    };
    Decision::act(Action::Record(Some(next)))
}

fn committing(o: &Observed, op: &ScalingOperation) -> Decision {
    let target = op.target_epoch.unwrap_or(0) as u64;
    if o.maps.pending.as_ref().is_some_and(|p| p.epoch == target)
        || o.maps.current.as_ref().is_some_and(|c| c.epoch >= target)
    {
        return record(op, Step::Moving);
    }
    match o.plan(op.to as u32) {
        Ok(map) if map.epoch == target => Decision::act(Action::Commit(map)),
        Ok(map) => Decision::refuse(Refusal::PlanFailed(format!(
            "planned epoch {} but the operation expects {target}; another map change happened",
            map.epoch
        ))),
        Err(r) => Decision::refuse(r),
    }
}

fn moving(o: &Observed, op: &ScalingOperation) -> Decision {
    let target = op.target_epoch.unwrap_or(0) as u64;
    let Some(pending) = o.maps.pending.as_ref().filter(|p| p.epoch == target) else {
        return record(op, Step::Finalizing);
    };
    let Some(progress) = &o.progress else {
        return Decision::wait("waiting for move progress");
    };
    if progress.pending > 0 {
        return Decision::wait(format!(
            "{} partition moves pending, {} done",
            progress.pending, progress.done
        ));
    }
    let unsynced: Vec<&str> = pending
        .members
        .iter()
        .map(|m| m.id.as_str())
        .filter(|id| !progress.synced.contains(*id))
        .collect();
    if !unsynced.is_empty() {
        return Decision::wait(format!(
            "waiting for nodes to sync epoch {target}: {}",
            unsynced.join(", ")
        ));
    }
    let undrained: Vec<&str> = o
        .drained
        .iter()
        .filter(|(_, d)| !**d)
        .map(|(n, _)| n.as_str())
        .collect();
    if !undrained.is_empty() {
        return Decision::wait(format!(
            "waiting for departing nodes to drain: {}",
            undrained.join(", ")
        ));
    }
    record(op, Step::Finalizing)
}

fn finalizing(o: &Observed, op: &ScalingOperation) -> Decision {
    let target = op.target_epoch.unwrap_or(0) as u64;
    if o.maps.pending.as_ref().is_some_and(|p| p.epoch == target) {
        return Decision::act(Action::Finalize(target));
    }
    match op.direction {
        Direction::ScaleOut => Decision::act(Action::Record(None)),
        Direction::ScaleIn => record(op, Step::Shrinking),
    }
}

fn shrinking(o: &Observed, op: &ScalingOperation) -> Decision {
    let to = op.to as u32;
    if let Some(sts) = &o.workloads.statefulset {
        if sts.replicas > to {
            return Decision::act(Action::Scale {
                replicas: to,
                expected_resource_version: sts.resource_version.clone(),
            });
        }
    }
    let lingering: Vec<String> = o
        .workloads
        .pods
        .keys()
        .filter(|&&ord| ord >= to)
        .map(|&ord| o.names.pod(ord))
        .collect();
    if !lingering.is_empty() {
        return Decision::wait(format!(
            "waiting for departed pods to be gone: {}",
            lingering.join(", ")
        ));
    }
    record(op, Step::CleaningUp)
}

fn cleaning_up(o: &Observed, op: &ScalingOperation) -> Decision {
    if o.intent.pvc_policy == PvcPolicy::Delete {
        let departed = (op.to as u32)..(op.from as u32);
        let in_map = |ord: u32| {
            o.maps
                .current
                .as_ref()
                .is_some_and(|m| m.member(&o.names.pod(ord)).is_some())
        };
        if let Some(&ord) = o.workloads.pvcs.iter().find(|&&ord| {
            departed.contains(&ord) && !in_map(ord) && !o.workloads.pods.contains_key(&ord)
        }) {
            return Decision::act(Action::DeleteVolume(ord));
        }
    }
    Decision::act(Action::Record(None))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(replicas: i32, map_nodes: u32, pods: u32) -> Observed {
        let names = Names::new("kv", "ns");
        let current = (map_nodes > 0).then(|| {
            dynamo_core::planner::plan(None, &ordinal_members(&names, map_nodes), 64, 3).unwrap()
        });
        Observed {
            intent: Intent {
                replicas,
                n: 3,
                partitions: 64,
                pvc_policy: PvcPolicy::Delete,
            },
            workloads: WorkloadView {
                statefulset: (pods > 0).then(|| StsView {
                    replicas: pods,
                    resource_version: Some("7".into()),
                }),
                pods: (0..pods).map(|o| (o, true)).collect(),
                pvcs: (0..pods).collect(),
                ..Default::default()
            },
            maps: MapState {
                version: u64::from(map_nodes > 0),
                current,
                pending: None,
            },
            progress: None,
            drained: BTreeMap::new(),
            reachable: (0..pods).map(|o| names.pod(o)).collect(),
            names,
        }
    }

    fn scale_in(step: Step) -> ScalingOperation {
        ScalingOperation {
            direction: Direction::ScaleIn,
            from: 5,
            to: 3,
            step,
            target_epoch: Some(2),
        }
    }

    #[test]
    fn a_new_cluster_records_a_scale_out_from_zero_before_anything_else() {
        let d = decide(&observed(3, 0, 0));
        let Action::Record(Some(op)) = d.action else {
            panic!("{d:?}")
        };
        assert_eq!(
            (op.direction, op.from, op.to, op.step),
            (Direction::ScaleOut, 0, 3, Step::Provisioning)
        );
    }

    #[test]
    fn below_n_is_refused_and_nothing_happens() {
        let d = decide(&observed(2, 3, 3));
        assert_eq!(d.action, Action::Nothing);
        assert_eq!(d.refusal.unwrap().category(), "BelowReplicationFactor");
    }

    #[test]
    fn a_scale_in_waits_for_an_undrained_departing_node() {
        let mut o = observed(3, 5, 5);
        let pending = o.plan(3).unwrap();
        o.maps.pending = Some(pending);
        o.progress = Some(MoveProgress {
            pending: 0,
            done: 40,
            synced: ids(3),
        });
        o.drained = BTreeMap::from([("kv-3".into(), true), ("kv-4".into(), false)]);
        o.workloads.operation = Some(scale_in(Step::Moving));
        let d = decide(&o);
        assert_eq!(d.action, Action::Nothing);
        assert!(d.waiting.unwrap().contains("kv-4"));
    }

    #[test]
    fn scaling_back_up_aborts_a_scale_in_before_finalize_and_finishes_it_after() {
        let mut o = observed(5, 5, 5);
        o.maps.pending = Some(o.plan(3).unwrap());
        o.workloads.operation = Some(scale_in(Step::Moving));
        assert_eq!(decide(&o).action, Action::Abort(2));

        let mut o = observed(5, 3, 5);
        o.workloads.operation = Some(scale_in(Step::Shrinking));
        let d = decide(&o);
        assert_eq!(
            d.action,
            Action::Scale {
                replicas: 3,
                expected_resource_version: Some("7".into())
            }
        );
    }

    #[test]
    fn claims_are_deleted_only_for_departed_ordinals_whose_pods_are_gone() {
        let mut o = observed(3, 3, 3);
        o.workloads.pvcs = (0..5).collect();
        o.workloads.operation = Some(scale_in(Step::CleaningUp));
        assert_eq!(decide(&o).action, Action::DeleteVolume(3));
        o.workloads.pods.insert(3, false);
        assert_eq!(
            decide(&o).action,
            Action::DeleteVolume(4),
            "ordinal 3 still has a pod"
        );
        o.intent.pvc_policy = PvcPolicy::Retain;
        assert_eq!(decide(&o).action, Action::Record(None));
    }

    fn scale_out_from_zero(step: Step) -> ScalingOperation {
        ScalingOperation {
            direction: Direction::ScaleOut,
            from: 0,
            to: 3,
            step,
            target_epoch: (step > Step::Provisioning).then_some(1),
        }
    }

    #[test]
    fn the_first_map_waits_for_pods_to_be_reachable_not_ready() {
        // No node holds a map yet, so none is ready; every pod exists and answers.
        let mut o = observed(3, 0, 3);
        o.workloads.pods = (0..3).map(|ord| (ord, false)).collect();
        o.workloads.operation = Some(scale_out_from_zero(Step::Provisioning));
        let d = decide(&o);
        assert_eq!(
            d.action,
            Action::Record(Some(scale_out_from_zero(Step::Committing)))
        );
        o.reachable.remove("kv-1");
        o.workloads.pods.remove(&2);
        let d = decide(&o);
        assert_eq!(d.action, Action::Nothing);
        assert_eq!(
            d.waiting.as_deref(),
            Some("waiting for nodes to be reachable: kv-1, kv-2")
        );
        // Once a map is in force, a scale-out still waits for the new pods to be ready.
        let mut o = observed(5, 3, 5);
        o.workloads.pods.insert(4, false);
        o.workloads.operation = Some(ScalingOperation {
            direction: Direction::ScaleOut,
            from: 3,
            to: 5,
            step: Step::Provisioning,
            target_epoch: None,
        });
        let d = decide(&o);
        assert_eq!(
            d.waiting.as_deref(),
            Some("waiting for nodes to be ready: kv-4")
        );
    }

    #[test]
    fn a_pending_first_map_is_finished_never_aborted() {
        let mut o = observed(4, 0, 3);
        o.maps.pending = Some(o.plan(3).unwrap());
        o.workloads.operation = Some(scale_out_from_zero(Step::Moving));
        o.intent.replicas = 3;
        o.workloads.operation.as_mut().unwrap().to = 4; // a first scale-out to 4, now 3
        assert_ne!(decide(&o).action, Action::Abort(1));
        o.workloads.operation = None;
        let d = decide(&o);
        assert_eq!(
            d.action,
            Action::Record(Some(scale_out_from_zero(Step::Moving))),
            "a first map pending without an operation is adopted"
        );
    }

    fn ids(k: u32) -> BTreeSet<NodeId> {
        (0..k).map(|o| format!("kv-{o}")).collect()
    }
}
