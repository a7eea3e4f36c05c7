//! The cluster's status, computed (purely) from what a reconcile pass observed and
//! decided. Conditions keep their `lastTransitionTime` while their status is unchanged.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::admin::{MapState, MoveProgress};
use crate::crd::{Direction, DynamoClusterStatus, Phase, ScalingOperation};

/// Inputs of the status.
#[derive(Clone, Debug, Default)]
pub struct StatusInputs {
    pub generation: Option<i64>,
    pub pods: i32,
    pub ready: i32,
    pub selector: String,
    pub maps: MapState,
    pub progress: Option<MoveProgress>,
    pub operation: Option<ScalingOperation>,
    /// What the operator waits for, if anything.
    pub waiting: Option<String>,
    /// A refusal or error: (reason, message).
    pub problem: Option<(String, String)>,
}

/// Computes the status; `previous` supplies transition times, `now` the current time.
pub fn status(
    i: &StatusInputs,
    previous: Option<&DynamoClusterStatus>,
    now: &Time,
) -> DynamoClusterStatus {
    let current = i.maps.current.as_ref();
    let map_nodes = current.map_or(0, |m| m.members.len() as i32);
    let phase = match (&i.operation, &i.problem, current) {
        (Some(op), _, _) if op.direction == Direction::ScaleOut => Phase::ScalingOut,
        (Some(_), _, _) => Phase::ScalingIn,
        (None, Some(_), _) => Phase::Degraded,
        (None, None, Some(_)) => Phase::Available,
        (None, None, None) => Phase::Pending,
    };
    let available = current.is_some() && i.ready >= map_nodes;
    let old = previous
        .map(|p| p.conditions.as_slice())
        .unwrap_or_default();
    let conditions = vec![
        condition(
            old,
            now,
            i.generation,
            "Available",
            available,
            match (current, available) {
                (None, _) => (
                    "NoPartitionMap",
                    "no partition map committed yet".to_string(),
                ),
                (_, true) => (
                    "NodesReady",
                    format!("{} of {map_nodes} nodes of the map are ready", i.ready),
                ),
                (_, false) => (
                    "NodesNotReady",
                    format!("{} of {map_nodes} nodes of the map are ready", i.ready),
                ),
            },
        ),
        condition(
            old,
            now,
            i.generation,
            "Progressing",
            i.operation.is_some(),
            match &i.operation {
                Some(op) => (
                    "Scaling",
                    format!(
                        "{:?} {} -> {} nodes, step {:?}{}",
                        op.direction,
                        op.from,
                        op.to,
                        op.step,
                        i.waiting
                            .as_ref()
                            .map(|w| format!(": {w}"))
                            .unwrap_or_default()
                    ),
                ),
                None => ("Idle", "no scaling operation in progress".to_string()),
            },
        ),
        condition(
            old,
            now,
            i.generation,
            "Degraded",
            i.problem.is_some(),
            match &i.problem {
                Some((reason, message)) => (reason.as_str(), message.clone()),
                None => ("AsExpected", "no refused request and no error".to_string()),
            },
        ),
    ];
    let partitions_per_node: BTreeMap<String, i32> = current
        .map(|m| {
            m.ownership_counts()
                .into_iter()
                .map(|(n, c)| (n, c as i32))
                .collect()
        })
        .unwrap_or_default();
    DynamoClusterStatus {
        observed_generation: i.generation,
        replicas: i.pods,
        ready_replicas: i.ready,
        selector: Some(i.selector.clone()),
        map_epoch: current.map_or(0, |m| m.epoch as i64),
        phase,
        conditions,
        operation: i.operation.clone(),
        partition_moves_pending: i.progress.as_ref().map_or(0, |p| p.pending as i32),
        partition_moves_done: i.progress.as_ref().map_or(0, |p| p.done as i32),
        partitions_per_node,
    }
}

fn condition(
    old: &[Condition],
    now: &Time,
    generation: Option<i64>,
    type_: &str,
    status: bool,
    (reason, message): (&str, String),
) -> Condition {
    let status = if status { "True" } else { "False" }.to_string();
    let last_transition_time = old
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.into(),
        status,
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynamo_core::planner::plan;
    use dynamo_core::ring::Member;

    fn t(s: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap())
    }

    fn map(nodes: u32) -> MapState {
        let members: Vec<Member> = (0..nodes)
            .map(|i| Member::new(format!("kv-{i}"), "a:1"))
            .collect();
        MapState::in_force(plan(None, &members, 16, 3).unwrap())
    }

    #[test]
    fn healthy_cluster_is_available_with_partitions_per_node() {
        let i = StatusInputs {
            generation: Some(2),
            pods: 3,
            ready: 3,
            maps: map(3),
            ..Default::default()
        };
        let s = status(&i, None, &t(10));
        assert_eq!(s.phase, Phase::Available);
        assert_eq!(s.map_epoch, 1);
        assert_eq!(s.partitions_per_node.values().sum::<i32>(), 16);
        let avail = s
            .conditions
            .iter()
            .find(|c| c.type_ == "Available")
            .unwrap();
        assert_eq!(
            (avail.status.as_str(), avail.observed_generation),
            ("True", Some(2))
        );
    }

    #[test]
    fn refusal_degrades_and_transition_time_is_kept_while_unchanged() {
        let i = StatusInputs {
            pods: 3,
            ready: 3,
            maps: map(3),
            problem: Some(("BelowReplicationFactor".into(), "refusing".into())),
            ..Default::default()
        };
        let first = status(&i, None, &t(10));
        assert_eq!(first.phase, Phase::Degraded);
        let second = status(&i, Some(&first), &t(20));
        let d = second
            .conditions
            .iter()
            .find(|c| c.type_ == "Degraded")
            .unwrap();
        assert_eq!(
            (d.status.as_str(), d.reason.as_str()),
            ("True", "BelowReplicationFactor")
        );
        assert_eq!(d.last_transition_time, t(10));
    }
}
