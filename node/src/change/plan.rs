//! The preview of a change: the map the Strategy 3 planner makes for a member list, the
//! partition replicas it moves, and estimates of the keys and bytes they carry.

use std::collections::BTreeSet;

use dynamo_core::map_state::MapState;
use dynamo_core::{planner, Member, PartitionMap};
use dynamo_proto::maps;
use dynamo_proto::v1::{PlanRequest, PlanResponse, PlannedMove};
use tonic::Status;

use crate::node::Node;

/// Plans the next map for the request's members (the newest map's, if none given).
pub fn preview(node: &Node, req: PlanRequest) -> Result<PlanResponse, Status> {
    let live = node.live();
    let state = &live.state;
    let newest = state.newest();
    let members: Vec<Member> = match req.members.is_empty() {
        true => newest.map(|m| m.members.clone()).ok_or_else(|| {
            Status::invalid_argument("no members given and no map to take them from")
        })?,
        false => req
            .members
            .into_iter()
            .map(maps::member_from_proto)
            .collect(),
    };
    let q = newest.map_or(
        if req.partitions == 0 {
            node.store.partitions()
        } else {
            req.partitions
        },
        |m| m.partitions,
    );
    let n = match (req.replication, newest) {
        (0, Some(m)) => m.replication,
        (0, None) => node.cfg.replication.n,
        (n, _) => n,
    };
    let map = planner::plan(state.current.as_ref(), &members, q, n)
        .map_err(|e| Status::invalid_argument(format!("cannot plan: {e}")))?;
    let preview = MapState {
        version: state.version + 1,
        current: state.current.clone(),
        pending: Some(map.clone()),
    };
    let (keys_per, bytes_per) = estimate(node);
    let moves: Vec<PlannedMove> = preview
        .moves()
        .into_iter()
        .map(|m| PlannedMove {
            partition: m.partition,
            from: m.from.unwrap_or_default(),
            to: m.to,
            estimated_keys: keys_per,
            estimated_bytes: bytes_per,
        })
        .collect();
    Ok(PlanResponse {
        estimated_keys: keys_per * moves.len() as u64,
        estimated_bytes: bytes_per * moves.len() as u64,
        minimum_moves: state
            .current
            .as_ref()
            .map_or(0, |old| minimum_moves(old, &map)),
        moves,
        map: Some(maps::map_to_proto(&map)),
    })
}

/// The fewest partition replicas any balanced assignment moves from `old` to `new`'s
/// members: every joining member's share (`⌊Q·N/S'⌋` replicas each), or every leaving
/// member's replicas, whichever is more.
pub fn minimum_moves(old: &PartitionMap, new: &PartitionMap) -> u64 {
    let olds: BTreeSet<&str> = old.members.iter().map(|m| m.id.as_str()).collect();
    let news: BTreeSet<&str> = new.members.iter().map(|m| m.id.as_str()).collect();
    let share = u64::from(new.partitions) * u64::from(new.replication) / news.len() as u64;
    let joining = news.difference(&olds).count() as u64 * share;
    let leaving: u64 = olds
        .difference(&news)
        .map(|id| old.replicated_by(id).count() as u64)
        .sum();
    joining.max(leaving)
}

/// Keys and bytes of one partition replica, estimated from this node's store: its keys
/// and bytes over the partitions it replicates (engine estimates, no scan: a scan sorts
/// the data memtable, and a plan is asked for while clients are served).
fn estimate(node: &Node) -> (u64, u64) {
    let Some(map) = node.try_map() else {
        return (0, 0);
    };
    let held = map.replicated_by(node.id()).count() as u64;
    if held == 0 {
        return (0, 0);
    }
    let engine = node.store.engine();
    (
        engine.data_keys_estimate() / held,
        engine.size_bytes() / held,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Vec<Member> {
        (0..n)
            .map(|i| Member::new(format!("n{i}"), format!("h:{i}")))
            .collect()
    }

    #[test]
    fn the_planner_moves_at_most_five_percent_over_the_minimum() {
        for (from, to) in [(3, 4), (4, 5), (4, 3), (5, 3), (3, 6)] {
            let old = planner::plan(None, &members(from), 256, 3).unwrap();
            let new = planner::plan(Some(&old), &members(to), 256, 3).unwrap();
            let moved = MapState::in_force(old.clone())
                .commit(new.clone())
                .unwrap()
                .unwrap()
                .moves()
                .len() as u64;
            let min = minimum_moves(&old, &new);
            eprintln!("{from}->{to}: {moved} replica moves, minimum {min}");
            assert!(min > 0);
            assert!(
                moved as f64 <= min as f64 * 1.05,
                "{from}->{to}: {moved} moves, minimum {min}"
            );
        }
    }
}
