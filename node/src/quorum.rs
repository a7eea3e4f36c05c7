//! Quorum accounting for a write: which intended replicas are covered.
//!
//! A write is meant for the N nodes of the key's preference list. An intended replica is
//! *covered* when it acknowledged the write itself, or when a sloppy-quorum fallback
//! acknowledged it on its behalf (as a hint). The write succeeds when W intended replicas
//! are covered; the ones left uncovered when the deadline passes get a hint kept by the
//! coordinator, so the write still reaches them.

use std::collections::BTreeSet;

/// Coverage of the intended replicas of one write.
#[derive(Debug, Clone)]
pub struct WriteQuorum {
    needed: usize,
    intended: Vec<String>,
    covered: BTreeSet<String>,
}

impl WriteQuorum {
    pub fn new(intended: Vec<String>, needed: usize) -> Self {
        Self {
            needed,
            intended,
            covered: BTreeSet::new(),
        }
    }

    /// Records that `replica` is covered. Returns true if that reached the quorum now.
    pub fn ack(&mut self, replica: &str) -> bool {
        let before = self.reached();
        if self.intended.iter().any(|r| r == replica) {
            self.covered.insert(replica.to_owned());
        }
        !before && self.reached()
    }

    pub fn reached(&self) -> bool {
        self.covered.len() >= self.needed
    }

    pub fn acks(&self) -> usize {
        self.covered.len()
    }

    pub fn needed(&self) -> usize {
        self.needed
    }

    /// Intended replicas nobody acknowledged for.
    pub fn uncovered(&self) -> impl Iterator<Item = &String> {
        self.intended.iter().filter(|r| !self.covered.contains(*r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_distinct_intended_replicas_only() {
        let mut q = WriteQuorum::new(vec!["a".into(), "b".into(), "c".into()], 2);
        assert!(!q.ack("a"));
        assert!(
            !q.ack("a"),
            "a second ack from the same replica does not count"
        );
        assert!(!q.ack("zz"), "a stranger does not count");
        assert!(q.ack("c"));
        assert!(q.reached());
        assert!(!q.ack("b"), "reaching it again is not news");
        assert_eq!(q.uncovered().count(), 0);
    }
}
