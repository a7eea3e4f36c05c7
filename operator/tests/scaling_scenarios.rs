//! The orchestration core driven against the simulated cluster (`sim::World`: a
//! StatefulSet controller plus the in-memory admin model). Every scenario checks the
//! safety properties after every pass: no volume deleted before its node drained, no pod
//! removed while its node is in a live map, every partition with at least N copies.
use dynamo_operator::crd::{Direction, PvcPolicy, Step};
use dynamo_operator::orchestrate::{step, EventType};
use dynamo_operator::scaling::{Action, Decision, Intent};
use dynamo_operator::sim::World;

const N: usize = 3;
const MOVES_PER_TICK: usize = 24;
const MAX_PASSES: usize = 400;

fn intent(replicas: i32) -> Intent {
    Intent {
        replicas,
        n: N as u32,
        partitions: 256,
        pvc_policy: PvcPolicy::Delete,
    }
}

fn settled(d: &Decision, w: &World) -> bool {
    d.action == Action::Nothing && d.waiting.is_none() && w.summary().3.is_none()
}

/// Runs passes (each followed by a world tick) until nothing is left to do. An error is
/// an operator crash: the next pass is a restarted operator, with no memory but the world.
async fn settle(w: &World, intent: &Intent) -> (usize, Decision) {
    for pass in 0..MAX_PASSES {
        let result = step(w, w, &w.names, intent).await;
        w.tick(MOVES_PER_TICK);
        w.check_copies(N);
        assert_eq!(
            w.violations(),
            Vec::<String>::new(),
            "safety violated at pass {pass}"
        );
        if let Ok((_, d)) = result {
            if settled(&d, w) {
                return (pass, d);
            }
        }
    }
    panic!("did not settle in {MAX_PASSES} passes: {:?}", w.summary());
}

/// Runs `k` passes (or fewer if it settles), ignoring errors.
async fn run_passes(w: &World, intent: &Intent, k: usize) {
    for _ in 0..k {
        let r = step(w, w, &w.names, intent).await;
        w.tick(MOVES_PER_TICK);
        w.check_copies(N);
        if let Ok((_, d)) = r {
            if settled(&d, w) {
                return;
            }
        }
    }
}

async fn cluster_of(size: i32) -> World {
    let w = World::new("kv");
    settle(&w, &intent(size)).await;
    w
}

fn map_members(w: &World) -> Vec<String> {
    let maps = w.admin.snapshot();
    assert!(maps.pending.is_none(), "a map change is still pending");
    maps.current
        .expect("a map is committed")
        .members
        .iter()
        .map(|m| m.id.clone())
        .collect()
}

fn ids(k: u32) -> Vec<String> {
    (0..k).map(|o| format!("kv-{o}")).collect()
}

#[tokio::test]
async fn create_commits_a_first_map_over_all_nodes() {
    let w = cluster_of(3).await;
    assert_eq!(map_members(&w), ids(3));
    let (sts, pods, pvcs, op) = w.summary();
    assert_eq!(
        (sts, pods, pvcs, op),
        (Some(3), vec![0, 1, 2], vec![0, 1, 2], None)
    );
    assert_eq!(w.admin.snapshot().current.unwrap().epoch, 1);
    assert_eq!(w.admin.min_copies(), N);
}

#[tokio::test]
async fn scale_out_3_to_5_moves_partitions_then_finalizes() {
    let w = cluster_of(3).await;
    settle(&w, &intent(5)).await;
    assert_eq!(map_members(&w), ids(5));
    let map = w.admin.snapshot().current.unwrap();
    assert_eq!(map.epoch, 2);
    for (_, owned) in map.ownership_counts() {
        assert!(owned == 51 || owned == 52, "unbalanced: {owned}");
    }
    let log = w.admin.log();
    assert_eq!(log, ["commit 1", "finalize 1", "commit 2", "finalize 2"]);
    let reasons: Vec<String> = w.events().into_iter().map(|e| e.1).collect();
    assert!(
        reasons.contains(&"MapCommitted".to_string())
            && reasons.contains(&"StatefulSetScaled".to_string())
    );
}

#[tokio::test]
async fn scale_in_5_to_3_drains_before_shrinking_and_deletes_volumes_after() {
    let w = cluster_of(5).await;
    w.admin.add_hints("kv-4", 30);
    settle(&w, &intent(3)).await;
    assert_eq!(map_members(&w), ids(3));
    let (sts, pods, pvcs, _) = w.summary();
    assert_eq!((sts, pods, pvcs), (Some(3), vec![0, 1, 2], vec![0, 1, 2]));
    assert_eq!(w.deleted_volumes(), vec![3, 4]);
    assert_eq!(w.admin.min_copies(), N);
}

#[tokio::test]
async fn scale_in_with_retain_policy_keeps_volumes() {
    let w = cluster_of(5).await;
    let retain = Intent {
        pvc_policy: PvcPolicy::Retain,
        ..intent(3)
    };
    settle(&w, &retain).await;
    let (sts, _, pvcs, _) = w.summary();
    assert_eq!((sts, pvcs), (Some(3), vec![0, 1, 2, 3, 4]));
    assert!(w.deleted_volumes().is_empty());
}

#[tokio::test]
async fn scale_below_n_is_refused_with_a_warning_and_changes_nothing() {
    let w = cluster_of(3).await;
    let (_, d) = settle(&w, &intent(2)).await;
    assert_eq!(
        d.refusal.as_ref().unwrap().category(),
        "BelowReplicationFactor"
    );
    assert!(d.refusal.unwrap().message().contains("at least 3"));
    assert_eq!(map_members(&w), ids(3));
    assert_eq!(w.summary().0, Some(3));
    assert!(w
        .events()
        .iter()
        .any(|e| e.0 == EventType::Warning && e.1 == "BelowReplicationFactor"));
}

#[tokio::test]
async fn partition_count_change_is_refused() {
    let w = cluster_of(3).await;
    let (_, d) = settle(
        &w,
        &Intent {
            partitions: 512,
            ..intent(4)
        },
    )
    .await;
    assert_eq!(d.refusal.unwrap().category(), "PartitionsImmutable");
    assert_eq!(map_members(&w), ids(3));
}

#[tokio::test]
async fn scaling_while_unhealthy_is_refused_until_healthy() {
    let w = cluster_of(3).await;
    w.set_broken(1, true);
    w.tick(0);
    let (_, d) = settle(&w, &intent(4)).await;
    assert_eq!(d.refusal.as_ref().unwrap().category(), "ClusterUnhealthy");
    assert!(d.refusal.unwrap().message().contains("kv-1"));
    assert_eq!(w.summary().0, Some(3), "nothing was started");
    w.set_broken(1, false);
    w.tick(0);
    settle(&w, &intent(4)).await;
    assert_eq!(map_members(&w), ids(4));
}

#[tokio::test]
async fn scale_in_interrupted_by_scale_up_at_every_pass_never_wedges() {
    for k in 0..60 {
        let w = cluster_of(5).await;
        run_passes(&w, &intent(3), k).await;
        let before = w.summary().3;
        settle(&w, &intent(5)).await;
        assert_eq!(
            map_members(&w),
            ids(5),
            "interrupted after {k} passes at {before:?}"
        );
        assert_eq!(w.summary().0, Some(5));
        assert_eq!(w.admin.min_copies(), N);
    }
}

#[tokio::test]
async fn scale_out_interrupted_by_scale_down_at_every_pass_never_wedges() {
    for k in 0..60 {
        let w = cluster_of(3).await;
        run_passes(&w, &intent(5), k).await;
        settle(&w, &intent(3)).await;
        assert_eq!(map_members(&w), ids(3), "interrupted after {k} passes");
        assert_eq!(w.summary().0, Some(3));
    }
}

#[tokio::test]
async fn scale_in_waits_for_a_stuck_departing_node_instead_of_dropping_it() {
    let w = cluster_of(4).await;
    w.admin.add_hints("kv-3", 1000);
    run_passes(&w, &intent(3), 50).await;
    let op = w.summary().3.expect("still scaling in");
    assert_eq!((op.direction, op.step), (Direction::ScaleIn, Step::Moving));
    assert_eq!(
        w.summary().0,
        Some(4),
        "the departing pod is kept while it holds hints"
    );
    assert!(w.deleted_volumes().is_empty());
}

/// Side effects of an uninterrupted run from `from` to `to` nodes, and its final state.
async fn reference(from: i32, to: i32) -> (u64, World) {
    let w = cluster_of(from).await;
    w.crash_at(u64::MAX, false);
    settle(&w, &intent(to)).await;
    (w.side_effects(), w)
}

async fn crash_everywhere(from: i32, to: i32) {
    let (effects, reference) = reference(from, to).await;
    assert!(effects >= 5, "the run has several steps ({effects})");
    for k in 1..=effects {
        for after in [false, true] {
            let w = cluster_of(from).await;
            w.crash_at(k, after);
            settle(&w, &intent(to)).await;
            let ctx = format!("crash at side effect {k} (after: {after})");
            assert_eq!(w.summary(), reference.summary(), "{ctx}");
            assert_eq!(w.admin.snapshot(), reference.admin.snapshot(), "{ctx}");
            assert_eq!(w.deleted_volumes(), reference.deleted_volumes(), "{ctx}");
        }
    }
}

#[tokio::test]
async fn operator_restarted_between_every_pair_of_scale_in_steps_ends_the_same() {
    crash_everywhere(5, 3).await;
}

#[tokio::test]
async fn operator_restarted_between_every_pair_of_scale_out_steps_ends_the_same() {
    crash_everywhere(3, 5).await;
}

/// A small deterministic generator (xorshift), so random schedules replay exactly.
struct Rng(u64);
impl Rng {
    fn next(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

/// Random schedules of size changes (including refused ones below n), operator crashes
/// before and after side effects, and stuck nodes; the safety checks run after every pass
/// and the cluster must end at the last valid size.
#[tokio::test]
async fn random_schedules_of_scaling_crashes_and_hints_stay_safe_and_converge() {
    for seed in 1..=25u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let w = cluster_of(3).await;
        let mut size = 3;
        for _ in 0..6 {
            let requested = 2 + rng.next(5) as i32; // 2..=6; 2 is below n and refused
            if requested >= N as i32 {
                size = requested;
            }
            if rng.next(2) == 0 {
                w.crash_at(1 + rng.next(6), rng.next(2) == 0);
            }
            if rng.next(3) == 0 {
                w.admin.add_hints(
                    &format!("kv-{}", rng.next(size as u64)),
                    rng.next(20) as u32,
                );
            }
            run_passes(&w, &intent(requested), rng.next(40) as usize).await;
            assert_eq!(w.violations(), Vec::<String>::new(), "seed {seed}");
        }
        w.crash_at(u64::MAX, false);
        settle(&w, &intent(size)).await;
        assert_eq!(map_members(&w), ids(size as u32), "seed {seed}");
        assert_eq!(w.summary().0, Some(size as u32), "seed {seed}");
        assert!(w.admin.min_copies() >= N, "seed {seed}");
    }
}

#[tokio::test]
async fn a_shrink_racing_another_writer_conflicts_then_retries() {
    let w = cluster_of(4).await;
    let target = intent(3);
    for _ in 0..MAX_PASSES {
        if w.summary().3.is_some_and(|op| op.step == Step::Shrinking) {
            break;
        }
        step(&w, &w, &w.names, &target).await.unwrap();
        w.tick(MOVES_PER_TICK);
    }
    assert_eq!(w.summary().0, Some(4), "about to shrink");
    w.race_next_observe();
    let err = step(&w, &w, &w.names, &target).await.unwrap_err();
    assert_eq!(err.category(), "Conflict", "{err}");
    assert_eq!(w.summary().0, Some(4), "nothing shrank on stale state");
    settle(&w, &target).await;
    assert_eq!((w.summary().0, map_members(&w)), (Some(3), ids(3)));
}
