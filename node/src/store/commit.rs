//! The group-commit pipeline behind [`super::Store`]: one writer thread applies groups of
//! queued mutations as one unsynced engine batch; with synced writes, one syncer thread
//! syncs once for every group that queued during its previous sync and only then
//! acknowledges them. A failed write or sync poisons the store.
//!
//! # Sync pacing
//!
//! The syncer starts at most one sync per *group window* (start to start): groups that
//! queue in between share the next sync; an idle store syncs at once. Measured on the
//! development VM (3 nodes), each sync also costs the guest CPU time the host takes
//! while it flushes (steal), which freezes every process, the load generator included.
//! With a 1 ms window against none: at 4,400 synced puts/s, ~800 instead of ~1,300
//! syncs a second per node, steal 5-6% instead of 8-9%, p99 16-17 ms instead of 20-21;
//! at one client, p50 1.06 instead of 0.72-0.82 ms but p99.9 2.4-4.1 instead of 14 ms.
//!
//! A wider window (3 ms keeps this VM under its flush budget; see the README) would make
//! a lone writer wait for it after each of its own syncs. So after a sync that covered a
//! single write the next one waits at most [`LONE_WINDOW`] (1 ms, the default window).
//! Interleaved with a 3 ms window, one client: p50 1.07-1.09 instead of 3.02-3.06 ms and
//! 870-908 instead of 326-350 puts/s, as with the default; under load nothing changes
//! (64 clients: 12,866-13,032 against 10,701-12,967 puts/s; at 6,000/s the same ~960
//! flushes a second and p99.9 12.1-19.4 against 10.9-23.8 ms). Syncing a lone write at
//! once instead was tried: one client's p50 fell to 0.62-0.78 ms, but its 3,200-4,000
//! flushes a second cost 7-8% steal and a p99.9 of 13-14 ms.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::apply::{apply, Mutation, Outcome, Overlay};
use super::cache::SetCache;
use super::stopped;
use crate::storage::{Batch, Engine, StorageError};

/// Most single-key mutations the writer folds into one batch (a request over the limit
/// still goes, alone).
const MAX_GROUP: usize = 512;

type Reply = oneshot::Sender<Result<Outcome, StorageError>>;

pub(super) struct Request {
    pub mutation: Mutation,
    /// Gets the outcome as soon as the mutation is applied, before it is durable; `None`
    /// sends the outcome to `durable` instead.
    pub applied: Option<Reply>,
    /// Answered once the mutation is durable under the store's fsync policy.
    pub durable: Reply,
    /// Kept until the mutation is applied (visible to reads), then dropped: a
    /// coordinator's per-key lock (see [`crate::key_lock`]).
    pub hold: Option<tokio::sync::OwnedMutexGuard<()>>,
}

/// A group written to the WAL, waiting for the sync that makes it durable.
type Unsynced = Vec<(Reply, Result<Outcome, StorageError>)>;

fn poison_error() -> StorageError {
    StorageError::Engine(
        "an earlier write or sync failed; the store refuses writes until the node restarts".into(),
    )
}

/// The writer thread's loop. It records every set it writes in `cache` before answering.
pub(super) fn writer(
    engine: Arc<dyn Engine>,
    q: u32,
    cache: &SetCache,
    poisoned: &AtomicBool,
    rx: mpsc::Receiver<Request>,
    syncer: Option<mpsc::Sender<Unsynced>>,
) {
    let mut carried = None;
    while let Some(first) = carried.take().or_else(|| rx.recv().ok()) {
        let mut weight = first.mutation.weight();
        let mut group = vec![first];
        while weight < MAX_GROUP {
            match rx.try_recv() {
                Ok(r) if weight + r.mutation.weight() > MAX_GROUP => {
                    carried = Some(r);
                    break;
                }
                Ok(r) => {
                    weight += r.mutation.weight();
                    group.push(r);
                }
                Err(_) => break,
            }
        }
        if poisoned.load(Ordering::Acquire) {
            for r in group {
                let _ = r.applied.map(|a| a.send(Err(poison_error())));
                let _ = r.durable.send(Err(poison_error()));
            }
            continue;
        }
        let mut batch = Batch::default();
        let mut overlay = Overlay::default();
        let mut outcomes = Vec::with_capacity(group.len());
        // Released once the group is applied (or has failed), whatever the outcome.
        let mut holds = Vec::new();
        for r in group {
            let result = apply(&*engine, cache, q, r.mutation, &mut batch, &mut overlay);
            outcomes.push((r.applied, r.durable, result));
            holds.extend(r.hold);
        }
        // Synced by the syncer when there is one; otherwise durable once written.
        let written = if batch.is_empty() {
            Ok(())
        } else {
            engine.write(&batch, false)
        };
        if let Err(e) = written {
            tracing::error!(error = %e, "storage write failed; refusing further writes");
            poisoned.store(true, Ordering::Release);
            cache.clear();
            for (applied, durable, _) in outcomes {
                let _ = applied.map(|a| a.send(Err(e.clone())));
                let _ = durable.send(Err(e.clone()));
            }
            continue;
        }
        cache.written(batch);
        drop(holds);
        let unsynced: Unsynced = outcomes
            .into_iter()
            .map(|(applied, durable, result)| match applied {
                Some(a) => {
                    let done = result.as_ref().map(|_| Outcome::Done).map_err(Clone::clone);
                    let _ = a.send(result);
                    (durable, done)
                }
                None => (durable, result),
            })
            .collect();
        match &syncer {
            Some(s) => {
                if let Err(mpsc::SendError(unsynced)) = s.send(unsynced) {
                    for (durable, _) in unsynced {
                        let _ = durable.send(Err(stopped()));
                    }
                }
            }
            None => {
                for (durable, result) in unsynced {
                    let _ = durable.send(result);
                }
            }
        }
    }
}

/// The longest a sync waits after one that covered a single write, whatever the window:
/// a lone writer gains nothing from a longer wait, since no other write is coming to
/// share its sync.
pub(super) const LONE_WINDOW: Duration = Duration::from_millis(1);

/// When the syncer may start its next sync: at least `window` after the previous one
/// began, or at most [`LONE_WINDOW`] after it when it covered a single write.
pub(super) struct Pacer {
    window: Duration,
    last_start: Option<Instant>,
    /// Writes the previous sync covered.
    last_covered: usize,
}

impl Pacer {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            last_start: None,
            last_covered: 0,
        }
    }

    /// How long the next sync waits, at `now`.
    pub fn wait(&self, now: Instant) -> Duration {
        let window = if self.last_covered <= 1 {
            self.window.min(LONE_WINDOW)
        } else {
            self.window
        };
        self.last_start.map_or(Duration::ZERO, |last| {
            (last + window).saturating_duration_since(now)
        })
    }

    /// Records a sync started at `now` that covers `writes` writes.
    pub fn started(&mut self, now: Instant, writes: usize) {
        self.last_start = Some(now);
        self.last_covered = writes;
    }
}

/// Syncs the WAL once for all groups written since the last sync, then acknowledges them;
/// starts at most one sync per `window` (see the module docs).
pub(super) fn syncer(
    engine: &dyn Engine,
    poisoned: &AtomicBool,
    rx: mpsc::Receiver<Unsynced>,
    window: Duration,
) {
    let mut pacer = Pacer::new(window);
    while let Ok(first) = rx.recv() {
        let wait = pacer.wait(Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        let mut groups = vec![first];
        while let Ok(g) = rx.try_recv() {
            groups.push(g);
        }
        pacer.started(Instant::now(), groups.iter().map(Vec::len).sum());
        let synced = if poisoned.load(Ordering::Acquire) {
            Err(poison_error())
        } else {
            engine.sync()
        };
        if let Err(e) = &synced {
            tracing::error!(error = %e, "WAL sync failed; refusing further writes");
            poisoned.store(true, Ordering::Release);
        }
        for (durable, result) in groups.into_iter().flatten() {
            let _ = durable.send(match &synced {
                Ok(()) => result,
                Err(e) => Err(e.clone()),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sync_waits_only_for_what_is_left_of_the_window() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut p = Pacer::new(ms(4));
        assert_eq!(p.wait(t0), Duration::ZERO, "first sync");
        p.started(t0, 5);
        assert_eq!(p.wait(t0 + ms(1)), ms(3), "busy: the rest of the window");
        assert_eq!(
            p.wait(t0 + ms(5)),
            Duration::ZERO,
            "idle: the window is over"
        );
        let mut off = Pacer::new(Duration::ZERO);
        off.started(t0, 5);
        assert_eq!(off.wait(t0), Duration::ZERO, "window 0: pacing off");
    }

    #[test]
    fn a_lone_writer_waits_at_most_the_lone_window() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut p = Pacer::new(ms(4));
        p.started(t0, 1);
        assert_eq!(p.wait(t0), LONE_WINDOW, "after a sync of one write");
        assert_eq!(p.wait(t0 + LONE_WINDOW), Duration::ZERO);
        p.started(t0, 2);
        assert_eq!(
            p.wait(t0),
            ms(4),
            "two writes shared the last sync: the full window"
        );
        let mut short = Pacer::new(Duration::from_micros(300));
        short.started(t0, 1);
        assert_eq!(
            short.wait(t0),
            Duration::from_micros(300),
            "a window under the lone window is kept"
        );
    }
}
