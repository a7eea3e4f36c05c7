//! What a deterministic simulation (the `dynamo-sim` crate) changes in the node, per
//! thread: the random numbers the node draws come from the simulation's seeded generator,
//! and work the node would hand to tokio's blocking pool runs inline, on the simulation's
//! one thread, so that its completion is not ordered by the operating system.
//!
//! Outside a simulation (no [`enter`] on this thread) nothing changes: the thread's
//! random generator, and `spawn_blocking`.
//!
//! A simulation can also break the node on purpose ([`Sabotage`]), to prove that its
//! checker finds what each bug would do.

use std::cell::RefCell;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

thread_local! {
    static SIMULATED: RefCell<Option<StdRng>> = const { RefCell::new(None) };
    static SABOTAGE: RefCell<Vec<Sabotage>> = const { RefCell::new(Vec::new()) };
}

/// A bug a simulation plants in the node, to show that its checker catches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sabotage {
    /// A node on an empty disk always takes incarnation 1, so after a wipe it hands out
    /// again the dots of writes it made before.
    ReusedDots,
    /// A put returns a context covering the whole stored set, not only what the client
    /// saw plus its own write: its next put supersedes siblings it never saw.
    WideContext,
    /// Hinted handoff does not ask the target to sync a delivered hint before it answers,
    /// and deletes the hint on that answer: with the target syncing periodically, a power
    /// loss of the target right after delivery loses what may have lived only in the hint.
    UnsyncedHint,
}

/// Plants `bugs` in the nodes this thread runs (none outside a simulation).
pub fn sabotage(bugs: &[Sabotage]) {
    SABOTAGE.with(|s| *s.borrow_mut() = bugs.to_vec());
}

/// Whether `bug` is planted on this thread.
pub fn sabotaged(bug: Sabotage) -> bool {
    SABOTAGE.with(|s| s.borrow().contains(&bug))
}

/// Makes this thread simulated, drawing from a generator seeded with `seed`, until
/// [`leave`].
pub fn enter(seed: u64) {
    SIMULATED.with(|s| *s.borrow_mut() = Some(StdRng::seed_from_u64(seed)));
}

/// Ends [`enter`], and any [`sabotage`].
pub fn leave() {
    SIMULATED.with(|s| *s.borrow_mut() = None);
    sabotage(&[]);
}

/// Whether this thread runs a simulation.
pub fn simulated() -> bool {
    SIMULATED.with(|s| s.borrow().is_some())
}

/// Runs `f` with this thread's random generator: the simulation's, if there is one.
pub fn with_rng<T>(f: impl FnOnce(&mut dyn rand::RngCore) -> T) -> T {
    SIMULATED.with(|s| match s.borrow_mut().as_mut() {
        Some(rng) => f(rng),
        None => f(&mut rand::rng()),
    })
}

/// A random `u64` from [`with_rng`]'s generator.
pub fn random_u64() -> u64 {
    with_rng(|r| r.random())
}

/// A blocking task that panicked.
#[derive(Debug, thiserror::Error)]
#[error("a blocking task failed: {0}")]
pub struct BlockingError(String);

/// Runs `f` on tokio's blocking pool, or at once on this thread in a simulation.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, BlockingError> {
    if simulated() {
        return Ok(f());
    }
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BlockingError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_numbers_and_leaving_restores_the_thread_generator() {
        enter(7);
        let a: Vec<u64> = (0..4).map(|_| random_u64()).collect();
        enter(7);
        let b: Vec<u64> = (0..4).map(|_| random_u64()).collect();
        assert_eq!(a, b);
        assert!(simulated());
        leave();
        assert!(!simulated());
        let c: Vec<u64> = (0..4).map(|_| random_u64()).collect();
        assert_ne!(a, c, "the thread's own generator, not the seed's");
    }

    #[tokio::test]
    async fn blocking_work_runs_inline_only_in_a_simulation() {
        let here = std::thread::current().id();
        let elsewhere = blocking(move || std::thread::current().id()).await.unwrap();
        assert_ne!(elsewhere, here);
        enter(1);
        let inline = blocking(move || std::thread::current().id()).await.unwrap();
        leave();
        assert_eq!(inline, here);
    }
}
