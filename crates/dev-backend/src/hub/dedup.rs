//! Dedup of reliable frames on `(incarnation, seq)` and the cumulative ack
//! per incarnation: every seq up to it received, gaps allowed above it.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use super::connect::SessionStart;
use super::DevBackendState;

/// Reliable frames of one incarnation seen so far: everything `<= contiguous`
/// plus the out-of-order seqs above it.
#[derive(Debug, Default, Clone)]
struct SeqTracker {
    contiguous: u64,
    ahead: BTreeSet<u64>,
}

impl SeqTracker {
    /// Records `seq`; false when it was seen before (a duplicate).
    fn observe(&mut self, seq: u64) -> bool {
        if seq <= self.contiguous {
            return false;
        }
        if seq == self.contiguous + 1 {
            self.contiguous = seq;
            while self.ahead.first() == Some(&(self.contiguous + 1)) {
                self.ahead.pop_first();
                self.contiguous += 1;
            }
            true
        } else {
            self.ahead.insert(seq)
        }
    }

    /// Raises the floor to `acked` (frames a previous backend already held).
    fn advance_to(&mut self, acked: u64) {
        if acked > self.contiguous {
            self.contiguous = acked;
            self.ahead.retain(|seq| *seq > acked);
            while self.ahead.first() == Some(&(self.contiguous + 1)) {
                self.ahead.pop_first();
                self.contiguous += 1;
            }
        }
    }

    /// The highest seq with every seq below it received: the cumulative ack.
    fn contiguous(&self) -> u64 {
        self.contiguous
    }
}

/// Dedup of reliable frames on `(incarnation, seq)`.
#[derive(Debug, Default)]
pub(crate) struct Dedup {
    by_incarnation: HashMap<Arc<str>, SeqTracker>,
    duplicates: u64,
}

impl Dedup {
    /// Called on `Hello`: returns `Welcome.acked_seq` for that incarnation.
    /// `last_acked_seq` from the relayer raises the floor, so a backend that
    /// lost its memory does not wait forever for frames it acked before.
    pub(crate) fn resume(&mut self, incarnation: &Arc<str>, last_acked_seq: u64) -> u64 {
        let tracker = self.by_incarnation.entry(incarnation.clone()).or_default();
        tracker.advance_to(last_acked_seq);
        tracker.contiguous()
    }

    /// Records a reliable frame; false (and counted) when it is a duplicate.
    pub(crate) fn observe(&mut self, incarnation: &Arc<str>, seq: u64) -> bool {
        let fresh = match self.by_incarnation.get_mut(incarnation) {
            Some(tracker) => tracker.observe(seq),
            None => {
                let mut tracker = SeqTracker::default();
                tracker.observe(seq);
                self.by_incarnation.insert(incarnation.clone(), tracker);
                true
            }
        };
        if !fresh {
            self.duplicates += 1;
        }
        fresh
    }

    /// The cumulative ack for `incarnation` (0 when nothing was received).
    fn acked(&self, incarnation: &str) -> u64 {
        self.by_incarnation
            .get(incarnation)
            .map_or(0, SeqTracker::contiguous)
    }

    pub(crate) fn duplicates(&self) -> u64 {
        self.duplicates
    }
}

impl DevBackendState {
    /// The cumulative ack for a session's incarnation.
    pub(crate) fn acked(&self, session: &SessionStart) -> u64 {
        session
            .cluster
            .inner
            .lock()
            .dedup
            .acked(&session.incarnation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_seqs(seqs: &[u64], expected_fresh: &[bool], expected_contiguous: u64) {
        let mut tracker = SeqTracker::default();
        let fresh: Vec<bool> = seqs.iter().map(|s| tracker.observe(*s)).collect();
        assert_eq!(fresh, expected_fresh, "seqs {seqs:?}");
        assert_eq!(tracker.contiguous(), expected_contiguous, "seqs {seqs:?}");
    }

    #[test]
    fn contiguous_ack_with_gaps_and_duplicates() {
        check_seqs(&[1, 2, 3], &[true, true, true], 3);
        check_seqs(&[1, 3, 4], &[true, true, true], 1);
        check_seqs(&[1, 3, 4, 2], &[true, true, true, true], 4);
        check_seqs(&[2, 2, 1, 1], &[true, false, true, false], 2);
        check_seqs(&[5], &[true], 0);
        check_seqs(&[1, 2, 2, 1, 3], &[true, true, false, false, true], 3);
    }

    #[test]
    fn advance_to_drains_frames_above_the_floor() {
        let mut tracker = SeqTracker::default();
        tracker.observe(6);
        tracker.observe(8);
        tracker.advance_to(5);
        assert_eq!(tracker.contiguous(), 6);
        tracker.advance_to(3);
        assert_eq!(tracker.contiguous(), 6);
        assert!(!tracker.observe(4));
        assert!(tracker.observe(7));
        assert_eq!(tracker.contiguous(), 8);
    }

    #[test]
    fn dedup_is_per_incarnation_and_counts_duplicates() {
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("inc-a"), Arc::from("inc-b"));
        let mut dedup = Dedup::default();
        assert_eq!(dedup.resume(&a, 0), 0);
        assert!(dedup.observe(&a, 1));
        assert!(dedup.observe(&b, 1));
        assert!(!dedup.observe(&a, 1));
        assert!(dedup.observe(&a, 2));
        assert_eq!(dedup.duplicates(), 1);
        assert_eq!(dedup.acked("inc-a"), 2);
        assert_eq!(dedup.acked("inc-b"), 1);
        assert_eq!(dedup.acked("inc-c"), 0);
        // A relayer whose frames up to 10 were acked by an earlier backend.
        let c: Arc<str> = Arc::from("inc-c");
        assert_eq!(dedup.resume(&c, 10), 10);
        assert!(!dedup.observe(&c, 9));
        assert!(dedup.observe(&c, 11));
    }
}
