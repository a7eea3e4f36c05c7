//! The simulation in CI: a fixed list of seeds plus a few fresh ones, every run checked,
//! and the same seed giving the same trace.

use std::time::Duration;

use dynamo_node::determinism::Sabotage;
use dynamo_sim::shrink::{injected, kind, shrink};
use dynamo_sim::{run, Config};

/// Short runs (20 simulated seconds of faults, then the usual settling time): CI runs
/// them in debug builds, about ten seconds each.
fn config() -> Config {
    Config {
        chaos: Duration::from_secs(20),
        ..Config::default()
    }
}

fn assert_clean(seed: u64) {
    let r = run(seed, &config());
    assert!(
        r.acked > 100,
        "seed {seed}: the clients got too little done: {r:?}"
    );
    assert!(
        r.stale_puts > 10,
        "seed {seed}: too few late puts on contexts that missed acknowledged writes: {r:?}"
    );
    assert!(
        r.violations.is_empty(),
        "seed {seed} (replay: cargo run -p dynamo-sim -- --seed {seed} --chaos-secs 20):\n{}\nfaults:\n{}",
        r.violations.join("\n"),
        r.faults.join("\n")
    );
}

#[test]
fn fixed_seeds_pass_the_checker() {
    for seed in [1, 2, 3, 4] {
        assert_clean(seed);
    }
}

#[test]
fn fresh_seeds_pass_the_checker() {
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    for seed in [base, base.wrapping_mul(31).wrapping_add(7)] {
        println!("fresh seed {seed}");
        assert_clean(seed);
    }
}

#[test]
fn a_seed_replays_the_same_trace_and_another_seed_does_not() {
    let cfg = Config {
        chaos: Duration::from_secs(10),
        settle: Duration::from_secs(20),
        ..Config::default()
    };
    let a = run(11, &cfg);
    let b = run(11, &cfg);
    let c = run(12, &cfg);
    assert!(a.events > 1000, "{a:?}");
    assert_eq!((a.trace, a.events, a.ops), (b.trace, b.events, b.ops));
    assert_eq!(a.faults, b.faults);
    assert_ne!(a.trace, c.trace);
}

/// The checker can fail: with a bug planted in the nodes it finds what the bug does.
#[test]
fn the_checker_finds_planted_bugs() {
    // A put that returns a context covering siblings the client never saw: its next
    // chained put supersedes blind writes. Found in every seed tried (8 of 8).
    let wide = Config {
        sabotage: vec![Sabotage::WideContext],
        ..config()
    };
    for seed in [1, 2] {
        let r = run(seed, &wide);
        assert!(
            r.violations
                .iter()
                .any(|v| v.contains("acknowledged elements lost")),
            "seed {seed}: {:?}",
            r.violations
        );
    }
    // A node on a wiped disk taking incarnation 1 again reuses its old dots: it needs a
    // wipe and a write coordinated there that meets a version of the same dot (a blind
    // write of a key whose epoch number the node happens to mint again). With 60 s of
    // faults, seeds 4, 83, 112, 208 and 235 of 1-400 do (5 of 400; every change to the
    // nodes' code reshuffles the schedules: 1 of 200 before new replicas still receiving
    // were left out of read repair): each loses an acknowledged element (Riak's KV679).
    // Without the bug all five are clean.
    let long = Config {
        chaos: Duration::from_secs(60),
        ..Config::default()
    };
    let reused = Config {
        sabotage: vec![Sabotage::ReusedDots],
        ..long.clone()
    };
    let r = run(112, &reused);
    assert!(
        r.violations.iter().any(|v| {
            v.contains("carries different bytes") || v.contains("acknowledged elements lost")
        }),
        "{r:?}"
    );
    let clean = run(112, &long);
    assert!(clean.violations.is_empty(), "{clean:?}");
    // The nodes' purge task runs: this run purges tombstones (2) and drops fallback
    // copies (3).
    assert!(
        clean.purges.purged > 0 && clean.purges.cleaned > 0,
        "{:?}",
        clean.purges
    );

    // A hint acknowledged by its target before the target synced it, and deleted by its
    // holder on that answer: with nodes syncing periodically, it needs a version that
    // lives only in hints when the targets lose power before their next sync. A hinted
    // version written by a fallback coordinator is also in that coordinator's own copy
    // (dropped only after a synced hand-off to the replicas), so the nemesis splits two
    // of a key's replicas off and cuts the power of the third, left with the rest: what
    // it coordinated since its last sync then lives only in the hints for the other two,
    // whose power fails just after the handoff. Seeds 9, 14 and 23 of 1-40 (20 s of
    // faults) lose acknowledged elements so; all are clean without the bug (seed 9
    // below).
    let periodic = Config {
        periodic_sync: Some(Duration::from_millis(900)),
        ..config()
    };
    let unsynced = Config {
        sabotage: vec![Sabotage::UnsyncedHint],
        ..periodic.clone()
    };
    for seed in [9, 23] {
        let r = run(seed, &unsynced);
        assert!(
            r.violations
                .iter()
                .any(|v| v.contains("acknowledged elements lost")),
            "seed {seed}: {r:?}"
        );
    }
    let clean = run(9, &periodic);
    assert!(clean.violations.is_empty(), "{clean:?}");
}

/// A failing seed shrinks to a schedule no longer than its own that still fails the same
/// way, and the shrunk schedule replays.
#[test]
fn a_failing_seed_shrinks_to_a_schedule_that_still_fails() {
    let wide = Config {
        sabotage: vec![Sabotage::WideContext],
        ..config()
    };
    let first = run(2, &wide);
    let (faults, what) = (
        injected(&first, &wide),
        kind(&first.violations[0]).to_owned(),
    );
    let s = shrink(2, &wide, first, 8).expect("seed 2 fails with the planted bug");
    assert!(s.runs <= 8);
    assert!(
        s.cfg.chaos <= wide.chaos && s.faults_after <= faults,
        "{s:?}"
    );
    assert!(
        s.cfg.chaos < wide.chaos || s.faults_after < faults || !s.cfg.changes,
        "nothing shrunk: {s:?}"
    );
    let replay = run(2, &s.cfg);
    assert_eq!(replay.trace, s.report.trace, "{}", s.flags());
    assert!(
        replay.violations.iter().any(|v| kind(v) == what),
        "{}: {:?}",
        s.flags(),
        replay.violations
    );
}

/// Nodes that sync periodically, with power losses of the whole cluster: the checker
/// lets an outage take back only what was acknowledged within a sync interval before
/// it, and seed 6 (two outages) loses nothing else. (Seed 125 was this test's until the
/// nemesis learnt to split a key's replicas off before an outage: its schedule now has
/// no outage. Seed 6's second outage is since a split with a lone replica, whose power
/// fails first, then the power of the key's replicas after the handoff.)
#[test]
fn periodic_sync_nodes_lose_nothing_an_outage_may_not_take() {
    let periodic = Config {
        periodic_sync: Some(Duration::from_millis(900)),
        ..config()
    };
    let r = run(6, &periodic);
    let outages = r.faults.iter().filter(|f| f.contains("lose power")).count()
        + r.faults
            .iter()
            .filter(|f| {
                f.contains("power loss of every") || f.contains("power loss of the replicas")
            })
            .count();
    assert!(outages >= 2, "{:?}", r.faults);
    assert!(r.acked > 100, "{r:?}");
    // Some elements were at risk, and far from all.
    assert!(r.excused > 0 && r.excused < r.acked / 10, "{r:?}");
    assert!(
        r.violations.is_empty(),
        "seed 6 with periodic syncs:\n{}\nfaults:\n{}",
        r.violations.join("\n"),
        r.faults.join("\n")
    );
}

/// Seed 31 with periodic syncs, shrunk to its whole-cluster outage: a put used to return
/// a context covering dots its client never saw (superseded on the coordinator's copy
/// by a write the outage then took back), and a late client's next put on it superseded
/// a version that was live again, losing 128 acknowledged elements of one key. Since the
/// nemesis also splits a key's replicas off before an outage, seed 31's schedule differs
/// (its shrunk run was `--skip 0,2`, whose outage is gone): fault 0 is now such a split
/// and outage, so the run skips only fault 2; the story itself is pinned by the node's
/// `a_returned_context_never_covers_a_version_a_power_loss_revives`.
#[test]
fn an_outage_that_revives_a_version_loses_no_acknowledged_element() {
    let cfg = Config {
        chaos: Duration::from_secs(12),
        skip: [2].into_iter().collect(),
        periodic_sync: Some(Duration::from_millis(900)),
        ..config()
    };
    let r = run(31, &cfg);
    assert!(
        r.faults.iter().any(|f| f.contains("power loss of every")),
        "{:?}",
        r.faults
    );
    assert!(r.stale_puts > 0, "no late put on a stale context: {r:?}");
    assert!(
        r.violations.is_empty(),
        "seed 31 with periodic syncs:\n{}\nfaults:\n{}",
        r.violations.join("\n"),
        r.faults.join("\n")
    );
}

/// Two claimants, one on each side of a partition. Seed 751: the claimant committed a
/// change (remove n2) that reached three nodes, then n4, cut off alone and its own stand-in
/// claimant, committed another map of the same version; once healed, each side kept its
/// state forever (gossip compared versions only), and the change never finished. Seed
/// 671: the claimant, cut off with a minority, committed a map the majority never saw
/// while the majority's stand-in committed another. Now a claimant that does not believe
/// most members alive refuses to commit, and gossip settles two states of one version
/// (the lower digest wins everywhere).
#[test]
fn two_claimants_on_two_sides_of_a_partition_end_with_one_map() {
    let long = Config {
        chaos: Duration::from_secs(60),
        ..Config::default()
    };
    for seed in [671, 751] {
        let r = run(seed, &long);
        assert!(
            r.violations.is_empty(),
            "seed {seed}:\n{}\nfaults:\n{}",
            r.violations.join("\n"),
            r.faults.join("\n")
        );
        if seed == 671 {
            assert!(
                r.faults
                    .iter()
                    .any(|f| f.contains("a change needs most members up")),
                "the minority claimant committed: {:?}",
                r.faults
            );
        }
    }
}
