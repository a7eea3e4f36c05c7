//! A debugging aid: with `DYNAMO_SIM_WATCH` set, a run prints (to stderr) every change of
//! each node's map state as the node holds it: version, epochs, members, and the claimant
//! it would act on. How two claimants' states of one version were found (seeds 671, 751).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::cluster::Cluster;

/// Prints each node's map state whenever it changed (looked at every 50 simulated ms).
pub async fn map_states(cluster: Arc<Mutex<Cluster>>, start: tokio::time::Instant) {
    let ids = |m: &dynamo_core::PartitionMap| -> Vec<String> {
        m.members.iter().map(|m| m.id.clone()).collect()
    };
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let c = cluster.lock();
        for m in &c.machines {
            let now = match &m.process {
                None => "down".to_owned(),
                Some(p) => {
                    let s = p.node.live().state.clone();
                    let down = |id: &str| id != p.node.id() && p.node.health.is_down(id);
                    format!(
                        "v{} current {:?} pending {:?} claimant {:?}",
                        s.version,
                        s.current.as_ref().map(|m| (m.epoch, ids(m))),
                        s.pending.as_ref().map(|m| (m.epoch, ids(m))),
                        s.acting_claimant(down).map(|c| c.id.clone()),
                    )
                }
            };
            if last.get(&m.member.id) != Some(&now) {
                eprintln!("{} ms {}: {now}", start.elapsed().as_millis(), m.member.id);
                last.insert(m.member.id.clone(), now);
            }
        }
    }
}
