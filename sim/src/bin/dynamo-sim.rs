//! Runs simulation seeds: one (`--seed`) with its faults and trace (and, if it fails,
//! a search for a shorter schedule that still fails), or a soak of many on every core,
//! printing seeds per minute and every failing seed with the command that replays it.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use dynamo_node::determinism::Sabotage;
use dynamo_sim::shrink::shrink;
use dynamo_sim::{run, Config};

/// A soak prints its progress every this many seeds.
const PROGRESS_EVERY: u64 = 100;

#[derive(Parser)]
#[command(about = "Deterministic simulation of a dynamo cluster")]
struct Args {
    /// Replay this one seed, printing its faults and every violation.
    #[arg(long)]
    seed: Option<u64>,
    /// Soak: how many seeds, starting at --from.
    #[arg(long, default_value_t = 1000)]
    seeds: u64,
    #[arg(long, default_value_t = 1)]
    from: u64,
    /// Threads (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    /// Simulated seconds of faults per seed.
    #[arg(long, default_value_t = 60)]
    chaos_secs: u64,
    /// Plant a bug in the nodes, to see the checker find it: reused-dots, wide-context,
    /// unsynced-hint (use it with --periodic-sync-ms).
    #[arg(long, value_parser = parse_sabotage)]
    sabotage: Vec<Sabotage>,
    /// The nodes sync every this many milliseconds (the `periodic` fsync policy) instead
    /// of syncing every write before acknowledging it.
    #[arg(long)]
    periodic_sync_ms: Option<u64>,
    /// No member changes.
    #[arg(long)]
    no_changes: bool,
    /// Faults the nemesis draws but does not inject, by number (from 0): `3,5,9`.
    #[arg(long, value_parser = dynamo_sim::shrink::parse_skip, default_value = "")]
    skip: BTreeSet<usize>,
    /// With --seed: if it fails, at most this many re-runs looking for a shorter
    /// schedule that fails the same way (0: none).
    #[arg(long, default_value_t = 30)]
    shrink_runs: usize,
}

fn parse_sabotage(s: &str) -> Result<Sabotage, String> {
    match s {
        "reused-dots" => Ok(Sabotage::ReusedDots),
        "wide-context" => Ok(Sabotage::WideContext),
        "unsynced-hint" => Ok(Sabotage::UnsyncedHint),
        other => Err(format!(
            "no such sabotage {other:?} (reused-dots, wide-context, unsynced-hint)"
        )),
    }
}

fn sabotage_name(s: Sabotage) -> &'static str {
    match s {
        Sabotage::ReusedDots => "reused-dots",
        Sabotage::WideContext => "wide-context",
        Sabotage::UnsyncedHint => "unsynced-hint",
    }
}

fn main() {
    let args = Args::parse();
    let cfg = Config {
        chaos: Duration::from_secs(args.chaos_secs),
        sabotage: args.sabotage.clone(),
        changes: !args.no_changes,
        periodic_sync: args.periodic_sync_ms.map(Duration::from_millis),
        skip: args.skip.clone(),
        ..Config::default()
    };
    let mut sabotage: String = args
        .sabotage
        .iter()
        .map(|s| format!(" --sabotage {}", sabotage_name(*s)))
        .collect();
    if let Some(ms) = args.periodic_sync_ms {
        sabotage.push_str(&format!(" --periodic-sync-ms {ms}"));
    }
    if let Some(seed) = args.seed {
        let r = run(seed, &cfg);
        for f in &r.faults {
            println!("fault {f}");
        }
        println!(
            "seed {seed}: trace {:016x} ({} events), {} ops ({} failed), {} elements acknowledged, {} late puts on stale contexts, {} elements an outage may take back, {} tombstones purged, {} fallback copies dropped",
            r.trace,
            r.events,
            r.ops,
            r.failed_ops,
            r.acked,
            r.stale_puts,
            r.excused,
            r.purges.purged,
            r.purges.cleaned
        );
        for v in &r.violations {
            println!("VIOLATION {v}");
        }
        let failed = !r.violations.is_empty();
        if failed && args.shrink_runs > 0 {
            let s = shrink(seed, &cfg, r, args.shrink_runs).expect("a failing run");
            println!(
                "shrunk in {} re-runs: {} simulated seconds of faults{}, {} faults injected instead of {}, still: {}",
                s.runs,
                s.cfg.chaos.as_secs(),
                if s.cfg.changes { "" } else { ", no member changes" },
                s.faults_after,
                s.faults_before,
                s.kind
            );
            for f in s.report.faults.iter().filter(|f| !f.contains("(skipped)")) {
                println!("  fault {f}");
            }
            println!(
                "  replay: cargo run --release -p dynamo-sim -- {}{sabotage} --shrink-runs 0",
                s.flags()
            );
        }
        std::process::exit(i32::from(failed));
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let next = Arc::new(AtomicU64::new(args.from));
    let end = args.from + args.seeds;
    let failed = Arc::new(AtomicU64::new(0));
    // Tombstones purged and fallback copies dropped, over every seed.
    let purged = Arc::new(AtomicU64::new(0));
    let cleaned = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (next, failed, cfg) = (next.clone(), failed.clone(), cfg.clone());
            let (purged, cleaned, done) = (purged.clone(), cleaned.clone(), done.clone());
            let sabotage = sabotage.clone();
            std::thread::spawn(move || loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= end {
                    return;
                }
                let r = run(seed, &cfg);
                purged.fetch_add(r.purges.purged, Ordering::Relaxed);
                cleaned.fetch_add(r.purges.cleaned, Ordering::Relaxed);
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                if n % PROGRESS_EVERY == 0 {
                    // A long soak says how far it got.
                    let secs = started.elapsed().as_secs_f64();
                    println!(
                        "progress: {n} seeds in {secs:.0} s ({:.1} seeds/minute), {} failed",
                        n as f64 * 60.0 / secs,
                        failed.load(Ordering::Relaxed)
                    );
                }
                if !r.violations.is_empty() {
                    failed.fetch_add(1, Ordering::Relaxed);
                    println!(
                        "FAILED seed {seed}: {}\n  replay (and shrink): cargo run --release -p dynamo-sim -- --seed {seed} --chaos-secs {}{}{sabotage}",
                        r.violations[0],
                        cfg.chaos.as_secs(),
                        if cfg.changes { "" } else { " --no-changes" },
                    );
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{} seeds in {secs:.1} s on {threads} threads: {:.0} seeds/minute, {} failed; {} tombstones purged, {} fallback copies dropped",
        args.seeds,
        args.seeds as f64 * 60.0 / secs,
        failed.load(Ordering::Relaxed),
        purged.load(Ordering::Relaxed),
        cleaned.load(Ordering::Relaxed)
    );
    std::process::exit(i32::from(failed.load(Ordering::Relaxed) > 0));
}
