//! The group-commit pipeline behind [`super::Store`]: one writer thread applies groups of
//! queued mutations as one unsynced engine batch; with synced writes, one syncer thread
//! syncs once for every group that queued during its previous sync and only then
//! acknowledges them. A failed write or sync poisons the store.
//!
//! # Sync pacing
//!
//! Every sync costs a disk flush, and on the development VM (3 nodes, one disk) the
//! flushes of the whole machine, not the bytes written, are what costs: the host takes
//! guest CPU while it flushes (steal), which freezes every process, the load generator
//! included. Past ~1,000 flushes a second (one sync per node every 3 ms) the freeze
//! decides the tail latency. So the syncer starts at most one sync per *group window*
//! (start to start; default 3 ms): writes that queue meanwhile share the next sync, and
//! an idle store syncs at once.
//!
//! Waiting out the window only pays while more writes are still coming. A sync that
//! covered k writes acknowledged k writers; once k writes are pending again, those
//! writers have most likely all come back (closed loop: clients waiting for their
//! acknowledgement send nothing new), and waiting longer only delays them. So the next
//! sync starts as soon as at least as many writes are pending as the previous sync
//! covered, but no sooner than [`FLOOR`] (1 ms, or the window if shorter) after it began.
//! A lone writer (k = 1) therefore syncs every 1 ms. Under an open-loop load, where
//! arrivals do not wait for acknowledgements, the count is reached only about as often as
//! not before the window ends, so syncs stay close to one per window.
//!
//! Interleaved runs on the VM (synced puts, 3 nodes, medians of 7-17 runs; the table is
//! in docs/performance.md), the 1 ms fixed window that was the default before, a fixed
//! 3 ms one, and this rule:
//! - 16 clients: 4,945, 4,279 and 5,202 puts/s; p99.9 16.5, 10.3 and 9.4 ms;
//! - 7,000 puts/s (half of peak): ~2,300, ~950 and ~1,220 flushes a second; p99.9 21.7,
//!   12.5 and 17.2 ms;
//! - 2,000 puts/s: p99.9 13.6-27.8 ms with 1 ms, 5.9-7.2 with this rule;
//! - 64 clients and one client: the same throughput.
//!
//! Syncing a lone write at once instead cut one client's p50 from 1.07 to 0.62-0.78 ms,
//! but its 3,200-4,000 flushes a second cost 7-8% steal and a p99.9 of 13-14 ms.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::apply::{apply, Mutation, Outcome, Overlay};
use super::cache::SetCache;
use super::stopped;
use super::trees::Trees;
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

pub(super) fn poison_error() -> StorageError {
    StorageError::Engine(
        "an earlier write or sync failed; the store refuses writes until the node restarts".into(),
    )
}

/// What the writer shares with [`write_group`]: the engine and what it keeps beside it.
pub(super) struct Writer {
    pub engine: Arc<dyn Engine>,
    pub q: u32,
    pub cache: Arc<SetCache>,
    pub trees: Arc<Trees>,
    pub poisoned: Arc<AtomicBool>,
}

/// The writer thread's loop. It records every set it writes in `cache` before answering.
pub(super) fn writer(
    w: &Writer,
    rx: mpsc::Receiver<Request>,
    syncer: Option<mpsc::Sender<Unsynced>>,
) {
    let mut carried = None;
    while let Some(first) = carried.take().or_else(|| rx.recv().ok()) {
        let mut weight = first.mutation.weight();
        let alone = first.mutation.is_alone();
        let mut group = vec![first];
        while weight < MAX_GROUP && !alone {
            match rx.try_recv() {
                Ok(r) if r.mutation.is_alone() || weight + r.mutation.weight() > MAX_GROUP => {
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
        let Some(unsynced) = write_group(w, group) else {
            continue;
        };
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

/// The inline writer of a simulation (see [`crate::determinism`]): applies `request` at
/// once on the caller's thread and, for a synced store, syncs before it answers.
pub(super) fn write_inline(w: &Writer, request: Request, synced: bool) {
    let Some(unsynced) = write_group(w, vec![request]) else {
        return;
    };
    let sync = if synced && !unsynced.is_empty() {
        sync_once(&*w.engine, &w.poisoned)
    } else {
        Ok(())
    };
    for (durable, result) in unsynced {
        let _ = durable.send(match &sync {
            Ok(()) => result,
            Err(e) => Err(e.clone()),
        });
    }
}

/// Applies `group` as one unsynced engine batch and answers the mutations that asked to
/// hear when applied. Returns the durable replies still to send, or `None` when the
/// group failed (or the store is poisoned): every reply is sent then.
fn write_group(w: &Writer, group: Vec<Request>) -> Option<Unsynced> {
    if w.poisoned.load(Ordering::Acquire) {
        for r in group {
            let _ = r.applied.map(|a| a.send(Err(poison_error())));
            let _ = r.durable.send(Err(poison_error()));
        }
        return None;
    }
    let mut batch = Batch::default();
    let mut overlay = Overlay::default();
    let mut outcomes = Vec::with_capacity(group.len());
    // Released once the group is applied (or has failed), whatever the outcome.
    let mut holds = Vec::new();
    for r in group {
        let result = apply(
            &*w.engine,
            &w.cache,
            w.q,
            r.mutation,
            &mut batch,
            &mut overlay,
        );
        outcomes.push((r.applied, r.durable, result));
        holds.extend(r.hold);
    }
    // Synced by the syncer when there is one; otherwise durable once written.
    let written = if batch.is_empty() {
        Ok(())
    } else {
        w.engine.write(&batch, false)
    };
    if let Err(e) = written {
        tracing::error!(error = %e, "storage write failed; refusing further writes");
        w.poisoned.store(true, Ordering::Release);
        w.cache.clear();
        for (applied, durable, _) in outcomes {
            let _ = applied.map(|a| a.send(Err(e.clone())));
            let _ = durable.send(Err(e.clone()));
        }
        return None;
    }
    w.cache.written(batch);
    for &p in &overlay.emptied {
        w.trees.reset(p);
    }
    w.trees.apply(&overlay.toggles);
    drop(holds);
    Some(
        outcomes
            .into_iter()
            .map(|(applied, durable, result)| match applied {
                Some(a) => {
                    let done = result.as_ref().map(|_| Outcome::Done).map_err(Clone::clone);
                    let _ = a.send(result);
                    (durable, done)
                }
                None => (durable, result),
            })
            .collect(),
    )
}

/// Syncs the WAL, poisoning the store if that fails (or if it already is).
fn sync_once(engine: &dyn Engine, poisoned: &AtomicBool) -> Result<(), StorageError> {
    let synced = if poisoned.load(Ordering::Acquire) {
        Err(poison_error())
    } else {
        engine.sync()
    };
    if let Err(e) = &synced {
        tracing::error!(error = %e, "WAL sync failed; refusing further writes");
        poisoned.store(true, Ordering::Release);
    }
    synced
}

/// The soonest a sync starts after the previous one began, once as many writes are
/// pending as it covered (or the window, if that is shorter).
pub(super) const FLOOR: Duration = Duration::from_millis(1);

/// When the syncer may start its next sync: [`FLOOR`] after the previous one began once
/// as many writes are pending as it covered, the whole window after it otherwise.
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

    /// How long the next sync waits, at `now`, with `pending` writes queued for it.
    pub fn wait(&self, now: Instant, pending: usize) -> Duration {
        let Some(last) = self.last_start else {
            return Duration::ZERO;
        };
        let until = if pending >= self.last_covered.max(1) {
            self.window.min(FLOOR)
        } else {
            self.window
        };
        (last + until).saturating_duration_since(now)
    }

    /// Records a sync started at `now` that covers `writes` writes.
    pub fn started(&mut self, now: Instant, writes: usize) {
        self.last_start = Some(now);
        self.last_covered = writes;
    }
}

/// Syncs the WAL once for all groups written since the last sync, then acknowledges them;
/// paced by a [`Pacer`] (see the module docs).
pub(super) fn syncer(
    engine: &dyn Engine,
    poisoned: &AtomicBool,
    rx: mpsc::Receiver<Unsynced>,
    window: Duration,
) {
    let mut pacer = Pacer::new(window);
    while let Ok(first) = rx.recv() {
        let mut pending = first.len();
        let mut groups = vec![first];
        loop {
            while let Ok(g) = rx.try_recv() {
                pending += g.len();
                groups.push(g);
            }
            let wait = pacer.wait(Instant::now(), pending);
            if wait.is_zero() {
                break;
            }
            match rx.recv_timeout(wait) {
                Ok(g) => {
                    pending += g.len();
                    groups.push(g);
                }
                Err(_) => break,
            }
        }
        pacer.started(Instant::now(), pending);
        let synced = sync_once(engine, poisoned);
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

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn a_sync_waits_only_for_what_is_left_of_the_window() {
        let t0 = Instant::now();
        let mut p = Pacer::new(MS(4));
        assert_eq!(p.wait(t0, 1), Duration::ZERO, "first sync");
        p.started(t0, 5);
        assert_eq!(p.wait(t0 + MS(1), 4), MS(3), "busy: the rest of the window");
        assert_eq!(
            p.wait(t0 + MS(5), 1),
            Duration::ZERO,
            "idle: the window is over"
        );
        let mut off = Pacer::new(Duration::ZERO);
        off.started(t0, 5);
        assert_eq!(off.wait(t0, 1), Duration::ZERO, "window 0: pacing off");
    }

    #[test]
    fn once_as_many_writes_are_pending_as_the_last_sync_covered_it_waits_only_the_floor() {
        let t0 = Instant::now();
        let mut p = Pacer::new(MS(4));
        p.started(t0, 5);
        assert_eq!(p.wait(t0, 4), MS(4), "one writer still to come");
        assert_eq!(p.wait(t0, 5), FLOOR, "every writer is back");
        assert_eq!(p.wait(t0 + MS(2), 5), Duration::ZERO, "past the floor");
        assert_eq!(p.wait(t0 + MS(2), 7), Duration::ZERO, "more than before");
        assert_eq!(p.wait(t0 + MS(2), 4), MS(2), "still short of 5");
        p.started(t0, 1);
        assert_eq!(p.wait(t0, 1), FLOOR, "a lone writer syncs every floor");
        p.started(t0, 0);
        assert_eq!(p.wait(t0, 0), MS(4), "nothing pending: no early sync");
        let mut short = Pacer::new(Duration::from_micros(300));
        short.started(t0, 1);
        assert_eq!(
            short.wait(t0, 1),
            Duration::from_micros(300),
            "a window under the floor is kept"
        );
    }
}
