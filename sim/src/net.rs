//! The simulated network: the fate of every call between nodes (delay, loss of the
//! request or of the reply, duplication, partitions that may be one-way, frozen ends), drawn from the
//! run's seeded generator, and recorded in the trace.

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
}

impl Net {
    pub fn new(start: tokio::time::Instant, trace: Arc<Trace>) -> Arc<Self> {
        Arc::new(Self {
            start,
            trace,
            weather: Mutex::new(Weather::CALM),
            cut: Mutex::new(BTreeSet::new()),
            frozen: Mutex::new(BTreeMap::new()),
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

    /// Heals every partition and thaws every frozen node.
    pub fn heal(&self) {
        self.cut.lock().clear();
        self.frozen.lock().clear();
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
