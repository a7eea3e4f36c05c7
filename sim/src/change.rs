//! The committer: changes the cluster's members while the nemesis works, as an operator
//! would. Every so often it plans the next map (a new node added, or a member removed,
//! the claimant too, keeping four to six members), commits it through a running
//! node, finalizes it once every move is done, and then stops the removed node's process
//! for good.

use std::sync::Arc;
use std::time::Duration;

use dynamo_core::{planner, Member};
use dynamo_node::change::{self, ChangeError};
use dynamo_node::determinism::with_rng;
use dynamo_node::node::Node;
use parking_lot::Mutex;
use rand::Rng;

use crate::cluster::{Cluster, Q};

/// A running node to send a call through (none while all are down).
fn via(cluster: &Mutex<Cluster>) -> Option<Arc<Node>> {
    let c = cluster.lock();
    let up = c.up();
    if up.is_empty() {
        return None;
    }
    let i = up[with_rng(|r| r.random_range(0..up.len()))];
    c.machines[i].process.as_ref().map(|p| p.node.clone())
}

/// Changes members every 10-20 simulated seconds until `until`, then finishes the change
/// under way; logs each step in `log`. A change that is pending when it looks (its
/// commit seemed to fail, but reached the claimant) is finished first.
pub async fn committer(
    cluster: Arc<Mutex<Cluster>>,
    until: tokio::time::Instant,
    log: Arc<Mutex<Vec<String>>>,
) {
    let start = tokio::time::Instant::now();
    let note = |what: String| {
        log.lock()
            .push(format!("{} ms: {what}", start.elapsed().as_millis()))
    };
    loop {
        let over = tokio::time::Instant::now() >= until;
        if !over {
            let pause = with_rng(|r| r.random_range(10_000..20_000));
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        let Some(state) = cluster.lock().newest_state() else {
            // Every node is down (an outage). Past `until` nothing else waits here, and
            // looking again at once would never yield to the tasks that restart them.
            if over {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            continue;
        };
        let Some(current) = state.current.clone() else {
            continue;
        };
        if let Some(pending) = state.pending.clone() {
            // Only a change put in force removes anyone: one that turned out not to be
            // pending (another claimant's state won) is looked at again.
            if !finish(&cluster, pending.epoch, &note).await {
                continue;
            }
            let mut c = cluster.lock();
            for gone in current
                .members
                .iter()
                .filter(|m| !pending.members.contains(m))
            {
                if let Some(i) = c.index_of(&gone.id) {
                    c.retire(i);
                    note(format!("change: {} stopped for good", gone.id));
                }
            }
            continue;
        }
        if over {
            return;
        }
        let members: Vec<Member> = current.members.clone();
        let grow = members.len() < 6 && (members.len() <= 4 || with_rng(|r| r.random_bool(0.5)));
        let (next_members, what) = if grow {
            let i = cluster.lock().add_machine();
            let m = cluster.lock().machines[i].member.clone();
            let mut next = members.clone();
            next.push(m.clone());
            (next, format!("add {}", m.id))
        } else {
            // The claimant too: while it is down, the next member up stands in for it.
            let gone = members[with_rng(|r| r.random_range(0..members.len()))]
                .id
                .clone();
            let next: Vec<Member> = members.iter().filter(|m| m.id != gone).cloned().collect();
            (next, format!("remove {gone}"))
        };
        let map = match planner::plan(Some(&current), &next_members, Q, 3) {
            Ok(map) => map,
            Err(e) => {
                note(format!("change: cannot plan {what}: {e}"));
                continue;
            }
        };
        let epoch = map.epoch;
        let Some(node) = via(&cluster) else {
            continue;
        };
        // Whatever the answer, the next look finishes the change if it is pending.
        match change::commit(&node, map, false).await {
            Ok(_) => note(format!("change: committed epoch {epoch}: {what}")),
            Err(e) => note(format!("change: commit of epoch {epoch} ({what}): {e}")),
        }
    }
}

/// Finalizes pending `epoch`, retrying while moves are left or calls fail; whether it is
/// in force.
async fn finish(cluster: &Mutex<Cluster>, epoch: u64, note: &impl Fn(String)) -> bool {
    let mut last_error = String::new();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Some(node) = via(cluster) else {
            continue;
        };
        match change::finalize(&node, epoch, false).await {
            Ok(s) if s.current.as_ref().is_some_and(|m| m.epoch == epoch) => {
                note(format!("change: epoch {epoch} in force"));
                return true;
            }
            Ok(_) | Err(ChangeError::NotReady(_) | ChangeError::Unavailable(_)) => {}
            Err(e) => {
                let error = e.to_string();
                if error != last_error {
                    note(format!("change: finalize of epoch {epoch}: {error}"));
                    last_error = error;
                }
                if matches!(e, ChangeError::Conflict(_) | ChangeError::Invalid(_)) {
                    return false;
                }
            }
        }
    }
}
