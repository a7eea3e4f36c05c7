//! The store's own threads (the writer, and the syncer behind it), and waiting for them
//! to end.
//!
//! A thread ends once its queue is closed and drained: the writer when the store drops
//! its sender ([`super::Store::close`], or the store's drop), the syncer when the writer
//! is gone. Each thread holds a token until it returns or unwinds, so waiting for all
//! tokens to be gone can give up at a deadline (a thread held by a hung disk), which a
//! join cannot; the join afterwards is then immediate.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Instant;

use parking_lot::Mutex;

/// Starts the store's threads; [`Self::started`] makes the [`Threads`] that waits for
/// them.
pub(super) struct Spawner {
    alive: mpsc::Sender<()>,
    gone: mpsc::Receiver<()>,
    handles: Vec<JoinHandle<()>>,
}

impl Spawner {
    pub fn new() -> Self {
        let (alive, gone) = mpsc::channel();
        Self {
            alive,
            gone,
            handles: Vec::new(),
        }
    }

    /// Runs `body` on a new thread named `name`.
    pub fn spawn(&mut self, name: &str, body: impl FnOnce() + Send + 'static) {
        let alive = self.alive.clone();
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                // Dropped when `body` returns or unwinds: the thread is as good as gone.
                let _alive = alive;
                body();
            })
            .unwrap_or_else(|e| panic!("spawning the {name} thread: {e}"));
        self.handles.push(handle);
    }

    /// Every thread is started.
    pub fn started(self) -> Threads {
        // Only the threads' tokens are left, so the receiver sees the end once they are.
        drop(self.alive);
        Threads {
            gone: Mutex::new(self.gone),
            handles: Mutex::new(self.handles),
            panicked: AtomicBool::new(false),
        }
    }
}

/// The store's running threads.
pub(super) struct Threads {
    gone: Mutex<mpsc::Receiver<()>>,
    /// Taken by the first wait that sees every thread gone.
    handles: Mutex<Vec<JoinHandle<()>>>,
    /// Whether a thread ended by a panic: what it held (replies, writes) is lost.
    panicked: AtomicBool,
}

impl Threads {
    /// Waits until every thread has ended (until `deadline`, if there is one), then joins
    /// them. Whether all have ended, none by a panic.
    pub fn wait(&self, deadline: Option<Instant>) -> bool {
        let gone = self.gone.lock();
        // Nothing is ever sent: the receiver fails once every token is dropped.
        let ended = match deadline {
            None => gone.recv().is_err(),
            Some(d) => matches!(
                gone.recv_timeout(d.saturating_duration_since(Instant::now())),
                Err(mpsc::RecvTimeoutError::Disconnected)
            ),
        };
        drop(gone);
        if !ended {
            return false;
        }
        for handle in self.handles.lock().drain(..) {
            if handle.join().is_err() {
                self.panicked.store(true, Ordering::Release);
            }
        }
        !self.panicked.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_wait_gives_up_at_its_deadline_and_later_joins_every_thread() {
        let (release, held) = mpsc::channel::<()>();
        let mut spawner = Spawner::new();
        spawner.spawn("quick", || {});
        spawner.spawn("held", move || {
            let _ = held.recv();
        });
        let threads = spawner.started();
        let soon = Instant::now() + Duration::from_millis(50);
        assert!(!threads.wait(Some(soon)), "one thread is still held");
        drop(release);
        assert!(threads.wait(None));
        assert!(
            threads.wait(Some(Instant::now())),
            "a second wait sees them gone"
        );
    }

    #[test]
    fn a_thread_that_panicked_does_not_count_as_ended_well() {
        let mut spawner = Spawner::new();
        spawner.spawn("doomed", || panic!("injected panic"));
        let threads = spawner.started();
        assert!(!threads.wait(None));
        assert!(!threads.wait(None), "and it is still reported later");
    }
}
