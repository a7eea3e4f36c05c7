//! The simulated network: the fate of every call between nodes (delay, loss of the
//! request or of the reply, duplication, partitions that may be one-way, frozen ends, a
//! link that reorders), drawn from the run's seeded generator, and recorded in the trace.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use dynamo_node::determinism::with_rng;
use dynamo_node::network::loopback::{Delivery, Faults};
use parking_lot::Mutex;
use rand::Rng;

use crate::trace::{now_ms, Trace};

/// How unreliable the network is while faults are on.
#[derive(Clone, Copy, Debug)]
pub struct Weather {
    /// Largest delay of a request, in milliseconds.
    pub max_delay_ms: u64,
    /// Chance that a request is lost, that a reply is lost, that a write arrives twice.
    pub loss: f64,
    pub reply_loss: f64,
    pub duplication: f64,
}

impl Weather {
    pub const CALM: Weather = Weather {
        max_delay_ms: 2,
        loss: 0.0,
        reply_loss: 0.0,
        duplication: 0.0,
    };
    pub const STORM: Weather = Weather {
        max_delay_ms: 40,
        loss: 0.02,
        reply_loss: 0.02,
        duplication: 0.02,
    };
}

/// The network's state: its weather and the directed links that are cut.
pub struct Net {
    start: tokio::time::Instant,
    trace: Arc<Trace>,
    weather: Mutex<Weather>,
    /// (from, to) pairs whose requests are lost.
    cut: Mutex<BTreeSet<(String, String)>>,
    /// Frozen nodes (as by SIGSTOP) and when each thaws: a call to or from one is not
    /// answered (the caller times out), and a write arrives only when it thaws.
    frozen: Mutex<BTreeMap<String, tokio::time::Instant>>,
    /// A link (both ways) that reorders its messages, and until when.
    reorder: Mutex<Option<(String, String, tokio::time::Instant)>>,
}

/// On a reordering link, each call is held back up to this long, so that calls made
/// later overtake it (request timeouts are 500 ms: most still arrive in time).
pub const REORDER_HOLD_MS: u64 = 400;
/// On a reordering link, the chance that a replica write is held back past its
/// coordinator's timeout, arriving 0.6-3 s later, after the writes that followed it.
pub const REORDER_LATE_WRITE: f64 = 0.25;

impl Net {
    pub fn new(start: tokio::time::Instant, trace: Arc<Trace>) -> Arc<Self> {
        Arc::new(Self {
            start,
            trace,
            weather: Mutex::new(Weather::CALM),
            cut: Mutex::new(BTreeSet::new()),
            frozen: Mutex::new(BTreeMap::new()),
            reorder: Mutex::new(None),
        })
    }

    pub fn set_weather(&self, w: Weather) {
        *self.weather.lock() = w;
    }

    /// Cuts every link from a node of `from` to a node of `to` (one way).
    pub fn cut(&self, from: &[String], to: &[String]) {
        let mut cut = self.cut.lock();
        for a in from {
            for b in to {
                cut.insert((a.clone(), b.clone()));
            }
        }
    }

    /// Freezes `id` for `pause`.
    pub fn freeze(&self, id: &str, pause: Duration) {
        let thaw = tokio::time::Instant::now() + pause;
        self.frozen.lock().insert(id.to_owned(), thaw);
    }

    /// Makes the link between `a` and `b` reorder its messages (both ways) for
    /// `window`: each call is held back a random time up to [`REORDER_HOLD_MS`], and a
    /// replica write now and then far longer, so that later calls arrive first.
    pub fn reorder(&self, a: &str, b: &str, window: Duration) {
        let until = tokio::time::Instant::now() + window;
        *self.reorder.lock() = Some((a.to_owned(), b.to_owned(), until));
    }

    /// Whether a call from `from` to `to` goes over the reordering link now.
    fn reordered(&self, from: &str, to: &str) -> bool {
        let reorder = self.reorder.lock();
        reorder.as_ref().is_some_and(|(a, b, until)| {
            tokio::time::Instant::now() < *until
                && ((a == from && b == to) || (a == to && b == from))
        })
    }

    /// Heals every partition, thaws every frozen node and ends reordering.
    pub fn heal(&self) {
        self.cut.lock().clear();
        self.frozen.lock().clear();
        *self.reorder.lock() = None;
    }

    /// How long a message between `from` and `to` waits for a frozen end to thaw.
    fn thaw_wait(&self, from: &str, to: &str) -> Duration {
        let now = tokio::time::Instant::now();
        let frozen = self.frozen.lock();
        [from, to]
            .iter()
            .filter_map(|id| frozen.get(*id))
            .map(|thaw| thaw.saturating_duration_since(now))
            .max()
            .unwrap_or_default()
    }
}

impl Faults for Net {
    fn deliver(&self, from: &str, to: &str, method: &'static str) -> Delivery {
        let w = *self.weather.lock();
        let cut = self.cut.lock().contains(&(from.to_owned(), to.to_owned()));
        let thaw = self.thaw_wait(from, to);
        let d = with_rng(|r| Delivery {
            delay: Duration::from_millis(r.random_range(0..=w.max_delay_ms)),
            lose_request: cut || r.random_bool(w.loss),
            lose_reply: r.random_bool(w.reply_loss),
            duplicate: r
                .random_bool(w.duplication)
                .then(|| Duration::from_millis(r.random_range(0..=w.max_delay_ms * 4))),
        });
        // A reordering link: a random hold-up far longer than the usual delays, so that
        // messages sent in one order arrive in another; a write held back past its
        // timeout arrives after its coordinator gave up (and after later writes).
        let d = match self.reordered(from, to) {
            false => d,
            true => with_rng(|r| {
                let delay = Duration::from_millis(r.random_range(0..=REORDER_HOLD_MS));
                match method == "write" && r.random_bool(REORDER_LATE_WRITE) {
                    true => Delivery {
                        lose_request: true,
                        duplicate: Some(Duration::from_millis(r.random_range(600..3_000))),
                        ..d
                    },
                    false => Delivery { delay, ..d },
                }
            }),
        };
        // A frozen end: the caller waits out its timeout, and a write arrives when the
        // node thaws (long after its coordinator gave up on it).
        let d = match thaw.is_zero() {
            true => d,
            false => Delivery {
                lose_request: true,
                duplicate: Some(thaw + d.delay),
                ..d
            },
        };
        self.trace.record((
            now_ms(self.start),
            from,
            to,
            method,
            d.delay.as_millis() as u64,
            d.lose_request,
            d.lose_reply,
            d.duplicate.is_some(),
        ));
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Arrival order of calls sent 1 ms apart from `a` to `b`, by (send time + delay),
    /// and how many were held back past their timeout.
    fn arrivals(net: &Net, a: &str, b: &str) -> (Vec<usize>, usize) {
        let mut at = Vec::new();
        let mut held = 0;
        for i in 0..200u64 {
            let d = net.deliver(a, b, "write");
            let arrival = match (d.lose_request, d.duplicate) {
                (true, Some(late)) => {
                    held += 1;
                    late
                }
                _ => d.delay,
            };
            at.push((i + arrival.as_millis() as u64, i as usize));
        }
        at.sort();
        (at.into_iter().map(|(_, i)| i).collect(), held)
    }

    #[tokio::test(start_paused = true)]
    async fn a_reordering_link_delivers_later_messages_first_and_others_keep_order() {
        dynamo_node::determinism::enter(5);
        let start = tokio::time::Instant::now();
        let net = Net::new(start, Arc::new(Trace::default()));
        net.reorder("n1", "n2", Duration::from_secs(10));
        let inversions = |order: &[usize]| order.windows(2).filter(|w| w[0] > w[1]).count();
        let (reordered, held) = arrivals(&net, "n2", "n1");
        assert!(inversions(&reordered) > 50, "{reordered:?}");
        assert!(held > 20, "{held} writes held past their timeout");
        // Another link keeps the calm weather's order (delays up to 2 ms, sent 1 ms apart:
        // neighbours may swap, nothing overtakes by more).
        let (calm, held) = arrivals(&net, "n1", "n3");
        assert_eq!(held, 0);
        assert!(calm.iter().enumerate().all(|(k, i)| k.abs_diff(*i) <= 2));
        // The window ends, and healing ends it too.
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!net.reordered("n1", "n2"));
        net.reorder("n1", "n2", Duration::from_secs(10));
        net.heal();
        assert!(!net.reordered("n1", "n2"));
        dynamo_node::determinism::leave();
    }
}
