//! The command dedup cache: each `command_id` runs at most once per
//! incarnation. In-flight ids answer a duplicate with `CommandAccepted`
//! again; finished ids answer with the cached `CommandResult`, kept for
//! `dedup_retention`, at most `dedup_max_entries` of them holding at most
//! `dedup_max_bytes` (oldest evicted first beyond either bound, counted), so
//! memory stays bounded at any command rate and any result size. Only
//! commands that ran are cached: a REJECTED command may be retried under the
//! same id.
//!
//! **Results are stored compactly**: each finished command is one slot in a
//! queue in finishing order — one allocation holding the id and the encoded
//! result frame (without its `command_id`), and the time it finished —
//! found through an index from the id's hash to the slot's sequence number.
//! A cached ping takes about 200 bytes of memory; a map of owned result structs took
//! a kilobyte. The index is keyed by a keyed hash (SipHash, random per
//! process), and a lookup compares the stored id, so a collision can only
//! make a duplicate run again (every action is idempotent), never answer
//! with another command's result.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::time::{Duration, Instant};

use prost::Message;

use crate::proto::CommandResult;

/// What one finished entry costs beyond its id and frame bytes: its queue
/// slot, its index entry (with the table's spare room) and the
/// allocation's header. Counted in `dedup_max_bytes`, so the bound is about
/// memory, not payload.
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

/// One finished command: `data` is the id's bytes, then the encoded result.
#[derive(Debug)]
struct Slot {
    data: Box<[u8]>,
    /// Ids are at most 128 bytes (admission refuses longer ones); an id
    /// longer than 255 is never cached.
    id_len: u8,
    /// Empty once the slot was replaced by a later finish of the same id.
    live: bool,
    at: Instant,
}

impl Slot {
    fn id(&self) -> &[u8] {
        &self.data[..usize::from(self.id_len)]
    }

    fn frame(&self) -> &[u8] {
        &self.data[usize::from(self.id_len)..]
    }

    fn cost(&self) -> usize {
        self.data.len() + ENTRY_OVERHEAD_BYTES
    }
}

#[derive(Debug)]
pub struct DedupCache {
    /// Ids running now (bounded by `max_in_flight` plus manifests waiting
    /// for validation).
    in_flight: HashSet<Box<str>>,
    /// Finished commands, oldest first; slot `i` has sequence number
    /// `first_seq + i`.
    slots: VecDeque<Slot>,
    first_seq: u64,
    /// Hash of a finished id → its slot's sequence number.
    index: HashMap<u64, u64>,
    hasher: RandomState,
    retention: Duration,
    max_entries: usize,
    max_bytes: usize,
    /// Bytes the live slots hold, as `dedup_max_bytes` counts them.
    bytes: usize,
    finished: usize,
    evicted: u64,
}

impl DedupCache {
    pub fn new(retention: Duration, max_entries: usize, max_bytes: usize) -> Self {
        Self {
            in_flight: HashSet::new(),
            slots: VecDeque::new(),
            first_seq: 0,
            index: HashMap::new(),
            hasher: RandomState::new(),
            retention,
            max_entries: max_entries.max(1),
            max_bytes,
            bytes: 0,
            finished: 0,
            evicted: 0,
        }
    }

    fn hash(&self, command_id: &str) -> u64 {
        self.hasher.hash_one(command_id)
    }

    /// The live slot holding `command_id`, if any.
    fn slot_of(&self, command_id: &str) -> Option<&Slot> {
        let seq = *self.index.get(&self.hash(command_id))?;
        let slot = self
            .slots
            .get(usize::try_from(seq - self.first_seq).ok()?)?;
        (slot.live && slot.id() == command_id.as_bytes()).then_some(slot)
    }

    /// Looks `command_id` up and, if new, marks it in flight.
    pub fn check_and_begin(&mut self, command_id: &str, now: Instant) -> Seen {
        self.expire(now);
        if self.in_flight.contains(command_id) {
            return Seen::InFlight;
        }
        if let Some(slot) = self.slot_of(command_id) {
            return Seen::Finished(decode(command_id, slot.frame()));
        }
        self.in_flight.insert(Box::from(command_id));
        Seen::New
    }

    /// Whether `command_id` is running now.
    pub fn is_in_flight(&self, command_id: &str) -> bool {
        self.in_flight.contains(command_id)
    }

    /// The command ran to an end: keep its result for duplicates, within
    /// the bounds (a result larger than `dedup_max_bytes` on its own is not
    /// kept, and counts as evicted).
    pub fn finish(&mut self, result: &CommandResult, now: Instant) {
        let id = result.command_id.as_str();
        self.in_flight.remove(id);
        let Ok(id_len) = u8::try_from(id.len()) else {
            self.evicted += 1;
            return;
        };
        let mut data = Vec::with_capacity(id.len() + result.encoded_len());
        data.extend_from_slice(id.as_bytes());
        encode_without_id(result, &mut data);
        let slot = Slot {
            data: data.into_boxed_slice(),
            id_len,
            live: true,
            at: now,
        };
        if slot.cost() > self.max_bytes {
            self.evicted += 1;
            return;
        }
        let hash = self.hash(id);
        if let Some(old) = self.index.get(&hash).copied() {
            // Finished twice, or a hash collision: the older slot goes.
            let index = (old - self.first_seq) as usize;
            if let Some(old) = self.slots.get_mut(index).filter(|s| s.live) {
                old.live = false;
                self.bytes -= old.cost();
                self.finished -= 1;
            }
        }
        self.bytes += slot.cost();
        self.finished += 1;
        self.index
            .insert(hash, self.first_seq + self.slots.len() as u64);
        self.slots.push_back(slot);
        while self.finished > self.max_entries || self.bytes > self.max_bytes {
            if self.pop_oldest() {
                self.evicted += 1;
            }
        }
    }

    /// The command was refused before it ran: forget it so a retry may run.
    pub fn forget(&mut self, command_id: &str) {
        self.in_flight.remove(command_id);
    }

    fn expire(&mut self, now: Instant) {
        while let Some(oldest) = self.slots.front() {
            if now.duration_since(oldest.at) < self.retention {
                break;
            }
            self.pop_oldest();
        }
    }

    /// Drops the oldest slot; true if it was live.
    fn pop_oldest(&mut self) -> bool {
        let Some(slot) = self.slots.pop_front() else {
            return false;
        };
        let seq = self.first_seq;
        self.first_seq += 1;
        if !slot.live {
            return false;
        }
        self.bytes -= slot.cost();
        self.finished -= 1;
        let hash = self
            .hasher
            .hash_one(std::str::from_utf8(slot.id()).unwrap_or_default());
        if self.index.get(&hash) == Some(&seq) {
            self.index.remove(&hash);
        }
        if self.slots.is_empty() {
            // Give back the queue's and the index's room after a burst.
            self.slots.shrink_to(1024);
            self.index.shrink_to(1024);
        }
        true
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    pub fn finished(&self) -> usize {
        self.finished
    }

    pub fn len(&self) -> usize {
        self.in_flight.len() + self.finished
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

fn encode_without_id(result: &CommandResult, out: &mut Vec<u8>) {
    let without_id = CommandResult {
        command_id: String::new(),
        ..result.clone()
    };
    // A Vec grows as needed: encoding into it cannot fail.
    let _ = without_id.encode(out);
}

fn decode(command_id: &str, frame: &[u8]) -> CommandResult {
    // The frame was encoded by `encode_without_id` in this process: it always decodes.
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
        let one = cost_of("a");
        /// (max_entries, max_bytes, ids finished, ids left, evicted)
        type Row = (
            usize,
            usize,
            &'static [&'static str],
            &'static [&'static str],
            u64,
        );
        let table: &[Row] = &[
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

    fn cost_of(id: &str) -> usize {
        let mut cache = cache(10, MIB);
        cache.finish(&result(id), Instant::now());
        cache.bytes()
    }

    #[test]
    fn a_cached_ping_is_compact() {
        let uuid = "6f1c2a7e-2b7a-4b1e-9a55-3f0e8a6d9c41";
        let mut frame = Vec::new();
        encode_without_id(&result(uuid), &mut frame);
        assert!(
            !frame.windows(uuid.len()).any(|w| w == uuid.as_bytes()),
            "the id is not stored twice"
        );
        assert!(cost_of(uuid) < 256, "{}", cost_of(uuid));
    }

    #[test]
    fn finishing_twice_keeps_one_entry_and_true_counts() {
        let mut cache = cache(10, MIB);
        let t = Instant::now();
        cache.finish(&result("a"), t);
        cache.finish(&result("a"), t);
        assert_eq!(cache.finished(), 1);
        assert_eq!(cache.bytes(), cost_of("a"));
        assert!(matches!(cache.check_and_begin("a", t), Seen::Finished(_)));
        // Expiry of the replaced slot leaves the live one alone.
        let later = t + Duration::from_secs(700);
        assert_eq!(cache.check_and_begin("a", later), Seen::New);
        assert_eq!(cache.bytes(), 0);
    }
}
