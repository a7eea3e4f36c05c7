//! Quorum accounting for a write: which intended replicas are covered.
//!
//! A write is meant for the N nodes of the key's preference list. An intended replica is
//! *covered* when it acknowledged the write itself, or when a sloppy-quorum fallback
//! acknowledged it on its behalf (as a hint). The write succeeds when W intended replicas
//! are covered; the ones left uncovered when the deadline passes get a hint kept by the
//! coordinator, so the write still reaches them.

/// Coverage of the intended replicas of one write, by position in the preference list.
#[derive(Debug, Clone)]
pub struct WriteQuorum {
    needed: usize,
    covered: Vec<bool>,
    acks: usize,
}

impl WriteQuorum {
    /// A write meant for `intended` replicas, `needed` of which must be covered.
    pub fn new(intended: usize, needed: usize) -> Self {
        Self {
            needed,
            covered: vec![false; intended],
            acks: 0,
        }
    }

    /// Records that intended replica `i` is covered. Returns true if that reached the
    /// quorum now.
    pub fn ack(&mut self, i: usize) -> bool {
        let before = self.reached();
        if let Some(c) = self.covered.get_mut(i) {
            if !*c {
                *c = true;
                self.acks += 1;
            }
        }
        !before && self.reached()
    }

    pub fn reached(&self) -> bool {
        self.acks >= self.needed
    }

    pub fn acks(&self) -> usize {
        self.acks
    }

    pub fn needed(&self) -> usize {
        self.needed
    }

    /// Intended replicas nobody acknowledged for.
    pub fn uncovered(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.covered.len()).filter(|&i| !self.covered[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_distinct_intended_replicas_only() {
        let mut q = WriteQuorum::new(3, 2);
        assert!(!q.ack(0));
        assert!(
            !q.ack(0),
            "a second ack from the same replica does not count"
        );
        assert!(!q.ack(7), "a stranger does not count");
        assert_eq!(q.acks(), 1);
        assert_eq!(q.uncovered().collect::<Vec<_>>(), [1, 2]);
        assert!(q.ack(2));
        assert!(q.reached());
        assert!(!q.ack(1), "reaching it again is not news");
        assert_eq!(q.acks(), 3);
        assert_eq!(q.uncovered().count(), 0);
    }
}
