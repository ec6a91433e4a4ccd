//! The command dedup cache: each `command_id` runs at most once per
//! incarnation. In-flight ids answer a duplicate with `CommandAccepted`
//! again; finished ids answer with the cached `CommandResult`, kept for
//! `dedup_retention`, at most `dedup_max_entries` of them holding at most
//! `dedup_max_bytes` (oldest evicted first beyond either bound, counted), so
//! memory stays bounded at any command rate and any result size. Only
//! commands that ran are cached: a REJECTED command may be retried under the
//! same id.
//!
//! **Results are stored compactly**: as the encoded protobuf frame (without
//! its `command_id`, which is the key) in one boxed slice, the id in one
//! `Arc<str>` shared by the map and the age queue. A cached ping costs about
//! 200 bytes instead of the kilobyte a tree of owned structs took.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;

use crate::proto::CommandResult;

/// What one finished entry costs beyond its id and frame bytes: the map
/// slot, the age-queue slot and the two allocations' headers. Counted in
/// `dedup_max_bytes` so the bound is about memory, not payload.
pub const ENTRY_OVERHEAD_BYTES: usize = 128;

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
    Finished {
        /// The result encoded, `command_id` left empty.
        frame: Box<[u8]>,
        at: Instant,
    },
}

#[derive(Debug)]
pub struct DedupCache {
    entries: HashMap<Arc<str>, Entry>,
    /// Finished ids in finishing order, for expiry and eviction.
    finished_order: VecDeque<(Instant, Arc<str>)>,
    retention: Duration,
    max_entries: usize,
    max_bytes: usize,
    /// Bytes the finished entries hold (ids, frames and overhead).
    bytes: usize,
    finished: usize,
    evicted: u64,
}

impl DedupCache {
    pub fn new(retention: Duration, max_entries: usize, max_bytes: usize) -> Self {
        Self {
            entries: HashMap::new(),
            finished_order: VecDeque::new(),
            retention,
            max_entries: max_entries.max(1),
            max_bytes,
            bytes: 0,
            finished: 0,
            evicted: 0,
        }
    }

    /// Looks `command_id` up and, if new, marks it in flight.
    pub fn check_and_begin(&mut self, command_id: &str, now: Instant) -> Seen {
        self.expire(now);
        match self.entries.get(command_id) {
            Some(Entry::InFlight) => Seen::InFlight,
            Some(Entry::Finished { frame, .. }) => Seen::Finished(decode(command_id, frame)),
            None => {
                self.entries.insert(Arc::from(command_id), Entry::InFlight);
                Seen::New
            }
        }
    }

    /// Whether `command_id` is running now.
    pub fn is_in_flight(&self, command_id: &str) -> bool {
        matches!(self.entries.get(command_id), Some(Entry::InFlight))
    }

    /// The command ran to an end: keep its result for duplicates, within
    /// the bounds (a result larger than `dedup_max_bytes` on its own is not
    /// kept, and counts as evicted).
    pub fn finish(&mut self, result: &CommandResult, now: Instant) {
        let id: Arc<str> = Arc::from(result.command_id.as_str());
        let frame = encode(result);
        let cost = entry_cost(&id, &frame);
        if let Some(Entry::Finished { frame, .. }) = self.entries.remove(&id) {
            // Finished twice (never by design): replace, keeping the counts true.
            self.bytes -= entry_cost(&id, &frame);
            self.finished -= 1;
        }
        if cost > self.max_bytes {
            self.evicted += 1;
            return;
        }
        self.entries
            .insert(id.clone(), Entry::Finished { frame, at: now });
        self.finished_order.push_back((now, id));
        self.bytes += cost;
        self.finished += 1;
        while self.finished > self.max_entries || self.bytes > self.max_bytes {
            let Some((at, oldest)) = self.finished_order.pop_front() else {
                break;
            };
            if self.remove_finished(&oldest, at) {
                self.evicted += 1;
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
                self.remove_finished(&id, at);
            }
        }
    }

    /// Removes `id`'s finished entry if it is the one finished at `at` (an
    /// older age-queue slot of a re-finished id is stale and removes nothing).
    fn remove_finished(&mut self, id: &str, at: Instant) -> bool {
        if !matches!(self.entries.get(id), Some(Entry::Finished { at: current, .. }) if *current == at)
        {
            return false;
        }
        if let Some((key, Entry::Finished { frame, .. })) = self.entries.remove_entry(id) {
            self.bytes -= entry_cost(&key, &frame);
            self.finished -= 1;
        }
        true
    }

    pub fn in_flight(&self) -> usize {
        self.entries.len() - self.finished
    }

    pub fn finished(&self) -> usize {
        self.finished
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes the finished results hold, as `dedup_max_bytes` counts them.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Finished results evicted early because of `dedup_max_entries` or
    /// `dedup_max_bytes`.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }
}

fn entry_cost(id: &str, frame: &[u8]) -> usize {
    id.len() + frame.len() + ENTRY_OVERHEAD_BYTES
}

fn encode(result: &CommandResult) -> Box<[u8]> {
    let without_id = CommandResult {
        command_id: String::new(),
        ..result.clone()
    };
    without_id.encode_to_vec().into_boxed_slice()
}

fn decode(command_id: &str, frame: &[u8]) -> CommandResult {
    // The frame was encoded by `encode` in this process: it always decodes.
    let mut result = CommandResult::decode(frame).unwrap_or_default();
    result.command_id = command_id.to_string();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    fn result(id: &str) -> CommandResult {
        CommandResult {
            command_id: id.to_string(),
            status: 1,
            output_json: bytes::Bytes::from_static(br#"{"payload_len":3}"#),
            started_at_unix_ms: 1_700_000_000_000,
            finished_at_unix_ms: 1_700_000_000_001,
            ..Default::default()
        }
    }

    fn cache(max_entries: usize, max_bytes: usize) -> DedupCache {
        DedupCache::new(Duration::from_secs(600), max_entries, max_bytes)
    }

    #[test]
    fn new_then_in_flight_then_finished_with_the_result_intact() {
        let mut cache = cache(10, MIB);
        let t = Instant::now();
        assert_eq!(cache.check_and_begin("a", t), Seen::New);
        assert_eq!(cache.check_and_begin("a", t), Seen::InFlight);
        assert!(cache.is_in_flight("a"));
        cache.finish(&result("a"), t);
        assert_eq!(cache.check_and_begin("a", t), Seen::Finished(result("a")));
        assert_eq!(cache.in_flight(), 0);
        assert_eq!(cache.finished(), 1);
    }

    #[test]
    fn forgotten_rejections_may_run_again() {
        let mut cache = cache(10, MIB);
        let t = Instant::now();
        cache.check_and_begin("a", t);
        cache.forget("a");
        assert_eq!(cache.check_and_begin("a", t), Seen::New);
    }

    #[test]
    fn finished_results_expire_after_retention() {
        let mut cache = cache(10, MIB);
        let t = Instant::now();
        cache.check_and_begin("a", t);
        cache.finish(&result("a"), t);
        assert!(matches!(
            cache.check_and_begin("a", t + Duration::from_secs(599)),
            Seen::Finished(_)
        ));
        assert_eq!(
            cache.check_and_begin("a", t + Duration::from_secs(600)),
            Seen::New
        );
        assert_eq!(cache.bytes(), 0);
    }

    #[test]
    fn oldest_evicted_beyond_either_bound_and_counted() {
        // (max_entries, max_bytes, ids finished, ids left, evicted)
        let one = entry_cost("a", &encode(&result("a")));
        let table: &[(usize, usize, &[&str], &[&str], u64)] = &[
            (3, MIB, &["a", "b", "c", "d", "e"], &["c", "d", "e"], 2),
            (100, 2 * one, &["a", "b", "c", "d"], &["c", "d"], 2),
            (2, 3 * one, &["a", "b", "c"], &["b", "c"], 1),
            (100, one - 1, &["a", "b"], &[], 2),
        ];
        for &(max_entries, max_bytes, finished, left, evicted) in table {
            let mut cache = cache(max_entries, max_bytes);
            let t = Instant::now();
            for id in finished {
                cache.check_and_begin(id, t);
                cache.finish(&result(id), t);
            }
            let kept: Vec<_> = finished
                .iter()
                .filter(|id| matches!(cache.check_and_begin(id, t), Seen::Finished(_)))
                .copied()
                .collect();
            assert_eq!(kept, left, "{max_entries} entries / {max_bytes} bytes");
            assert_eq!(cache.evicted(), evicted);
            assert!(cache.bytes() <= max_bytes);
            assert_eq!(cache.bytes(), left.len() * one);
        }
    }

    #[test]
    fn in_flight_entries_are_never_evicted() {
        let mut cache = cache(1, MIB);
        let t = Instant::now();
        cache.check_and_begin("running", t);
        for id in ["a", "b"] {
            cache.check_and_begin(id, t);
            cache.finish(&result(id), t);
        }
        assert!(cache.is_in_flight("running"));
    }

    #[test]
    fn a_cached_ping_is_compact() {
        let uuid = "6f1c2a7e-2b7a-4b1e-9a55-3f0e8a6d9c41";
        let frame = encode(&result(uuid));
        assert!(!frame.windows(uuid.len()).any(|w| w == uuid.as_bytes()), "the id is not stored twice");
        assert!(entry_cost(uuid, &frame) < 256, "{}", entry_cost(uuid, &frame));
    }
}
