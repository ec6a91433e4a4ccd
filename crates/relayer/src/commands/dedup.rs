//! The command dedup cache: each `command_id` runs at most once per
//! incarnation. In-flight ids answer a duplicate with `CommandAccepted`
//! again; finished ids answer with the cached `CommandResult`, kept for
//! `dedup_retention` and at most `dedup_max_entries` (oldest evicted first,
//! counted), so memory stays bounded at any command rate. Only commands that
//! ran are cached: a REJECTED command may be retried under the same id.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::proto::CommandResult;

#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    /// Never seen (or expired): run it.
    New,
    /// Still running: answer `CommandAccepted` again.
    InFlight,
    /// Finished: answer this cached result again.
    Finished(CommandResult),
}

#[derive(Debug)]
enum Entry {
    InFlight,
    Finished { result: CommandResult, at: Instant },
}

#[derive(Debug)]
pub struct DedupCache {
    entries: HashMap<String, Entry>,
    /// Finished ids in finishing order, for expiry and eviction.
    finished_order: VecDeque<(Instant, String)>,
    retention: Duration,
    max_entries: usize,
    evicted: u64,
}

impl DedupCache {
    pub fn new(retention: Duration, max_entries: usize) -> Self {
        Self {
            entries: HashMap::new(),
            finished_order: VecDeque::new(),
            retention,
            max_entries: max_entries.max(1),
            evicted: 0,
        }
    }

    /// Looks `command_id` up and, if new, marks it in flight.
    pub fn check_and_begin(&mut self, command_id: &str, now: Instant) -> Seen {
        self.expire(now);
        match self.entries.get(command_id) {
            Some(Entry::InFlight) => Seen::InFlight,
            Some(Entry::Finished { result, .. }) => Seen::Finished(result.clone()),
            None => {
                self.entries.insert(command_id.to_string(), Entry::InFlight);
                Seen::New
            }
        }
    }

    /// Looks up without changing anything.
    pub fn peek(&self, command_id: &str) -> Seen {
        match self.entries.get(command_id) {
            Some(Entry::InFlight) => Seen::InFlight,
            Some(Entry::Finished { result, .. }) => Seen::Finished(result.clone()),
            None => Seen::New,
        }
    }

    /// The command ran to an end: keep its result for duplicates.
    pub fn finish(&mut self, result: CommandResult, now: Instant) {
        let id = result.command_id.clone();
        self.entries
            .insert(id.clone(), Entry::Finished { result, at: now });
        self.finished_order.push_back((now, id));
        while self.finished_order.len() > self.max_entries {
            if let Some((_, oldest)) = self.finished_order.pop_front() {
                if matches!(self.entries.get(&oldest), Some(Entry::Finished { .. })) {
                    self.entries.remove(&oldest);
                    self.evicted += 1;
                }
            }
        }
    }

    /// The command was refused before it ran: forget it so a retry may run.
    pub fn forget(&mut self, command_id: &str) {
        if matches!(self.entries.get(command_id), Some(Entry::InFlight)) {
            self.entries.remove(command_id);
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.finished_order.front() {
            if now.duration_since(*at) < self.retention {
                break;
            }
            if let Some((at, id)) = self.finished_order.pop_front() {
                // Only remove if this order entry is the current one for the id.
                if matches!(self.entries.get(&id), Some(Entry::Finished { at: current, .. }) if *current == at)
                {
                    self.entries.remove(&id);
                }
            }
        }
    }

    pub fn in_flight(&self) -> usize {
        self.entries.len() - self.finished()
    }

    pub fn finished(&self) -> usize {
        self.entries
            .values()
            .filter(|e| matches!(e, Entry::Finished { .. }))
            .count()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Finished results evicted early because of `dedup_max_entries`.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(id: &str) -> CommandResult {
        CommandResult {
            command_id: id.to_string(),
            status: 1,
            ..Default::default()
        }
    }

    #[test]
    fn new_then_in_flight_then_finished() {
        let mut cache = DedupCache::new(Duration::from_secs(600), 10);
        let t = Instant::now();
        assert_eq!(cache.check_and_begin("a", t), Seen::New);
        assert_eq!(cache.check_and_begin("a", t), Seen::InFlight);
        cache.finish(result("a"), t);
        assert_eq!(cache.check_and_begin("a", t), Seen::Finished(result("a")));
        assert_eq!(cache.in_flight(), 0);
    }

    #[test]
    fn forgotten_rejections_may_run_again() {
        let mut cache = DedupCache::new(Duration::from_secs(600), 10);
        let t = Instant::now();
        cache.check_and_begin("a", t);
        cache.forget("a");
        assert_eq!(cache.check_and_begin("a", t), Seen::New);
    }

    #[test]
    fn finished_results_expire_after_retention() {
        let mut cache = DedupCache::new(Duration::from_secs(600), 10);
        let t = Instant::now();
        cache.check_and_begin("a", t);
        cache.finish(result("a"), t);
        assert!(matches!(
            cache.check_and_begin("a", t + Duration::from_secs(599)),
            Seen::Finished(_)
        ));
        assert_eq!(
            cache.check_and_begin("a", t + Duration::from_secs(600)),
            Seen::New
        );
    }

    #[test]
    fn oldest_evicted_beyond_max_entries_and_counted() {
        let mut cache = DedupCache::new(Duration::from_secs(600), 3);
        let t = Instant::now();
        for id in ["a", "b", "c", "d", "e"] {
            cache.check_and_begin(id, t);
            cache.finish(result(id), t);
        }
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.evicted(), 2);
        assert_eq!(cache.peek("a"), Seen::New);
        assert!(matches!(cache.peek("e"), Seen::Finished(_)));
    }

    #[test]
    fn in_flight_entries_are_never_evicted() {
        let mut cache = DedupCache::new(Duration::from_secs(600), 1);
        let t = Instant::now();
        cache.check_and_begin("running", t);
        for id in ["a", "b"] {
            cache.check_and_begin(id, t);
            cache.finish(result(id), t);
        }
        assert_eq!(cache.peek("running"), Seen::InFlight);
    }
}
