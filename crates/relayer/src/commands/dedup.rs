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
//!
//! **Each id is hashed once per call** (a cache full at 100,000 entries
//! evicts one entry per command, so at ping rates this is the relayer's
//! hottest map): the keyed hash is computed once and reused for the
//! in-flight set, the index and the slot (which keeps it for its eviction),
//! and the maps keyed by it take it as it is instead of hashing it again.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
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
    /// The id's keyed hash, so evicting the slot does not hash it again.
    hash: u64,
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

/// A map key that is already a keyed hash: used as it is.
#[derive(Debug, Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are ever hashed; fold anything else in anyway.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type ByHash<V> = HashMap<u64, V, BuildHasherDefault<Prehashed>>;

/// The ids running now, found by their keyed hash. Two ids with the same
/// hash (never seen in practice, but possible) are told apart: the second
/// goes to `collided`, which is searched by the id itself.
#[derive(Debug, Default)]
struct InFlight {
    by_hash: ByHash<Box<str>>,
    collided: HashSet<Box<str>>,
}

impl InFlight {
    fn contains(&self, id: &str, hash: u64) -> bool {
        self.by_hash.get(&hash).is_some_and(|held| **held == *id)
            || (!self.collided.is_empty() && self.collided.contains(id))
    }

    /// Marks `id` (not in the set) as running.
    fn insert(&mut self, id: &str, hash: u64) {
        match self.by_hash.entry(hash) {
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(Box::from(id));
            }
            std::collections::hash_map::Entry::Occupied(_) => {
                self.collided.insert(Box::from(id));
            }
        }
    }

    fn remove(&mut self, id: &str, hash: u64) {
        if self.by_hash.get(&hash).is_some_and(|held| **held == *id) {
            self.by_hash.remove(&hash);
        } else if !self.collided.is_empty() {
            self.collided.remove(id);
        }
    }

    fn len(&self) -> usize {
        self.by_hash.len() + self.collided.len()
    }
}

#[derive(Debug)]
pub struct DedupCache {
    /// Ids running now (bounded by `max_in_flight` plus manifests waiting
    /// for validation).
    in_flight: InFlight,
    /// Finished commands, oldest first; slot `i` has sequence number
    /// `first_seq + i`.
    slots: VecDeque<Slot>,
    first_seq: u64,
    /// Hash of a finished id → its slot's sequence number.
    index: ByHash<u64>,
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
            in_flight: InFlight::default(),
            slots: VecDeque::new(),
            first_seq: 0,
            index: ByHash::default(),
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

    /// The live slot holding `command_id` (whose hash is `hash`), if any.
    fn slot_of(&self, command_id: &str, hash: u64) -> Option<&Slot> {
        let seq = *self.index.get(&hash)?;
        let slot = self
            .slots
            .get(usize::try_from(seq - self.first_seq).ok()?)?;
        (slot.live && slot.id() == command_id.as_bytes()).then_some(slot)
    }

    /// Looks `command_id` up and, if new, marks it in flight.
    pub fn check_and_begin(&mut self, command_id: &str, now: Instant) -> Seen {
        self.expire(now);
        let hash = self.hash(command_id);
        if self.in_flight.contains(command_id, hash) {
            return Seen::InFlight;
        }
        if let Some(slot) = self.slot_of(command_id, hash) {
            return Seen::Finished(decode(command_id, slot.frame()));
        }
        self.in_flight.insert(command_id, hash);
        Seen::New
    }

    /// Whether `command_id` is running now.
    pub fn is_in_flight(&self, command_id: &str) -> bool {
        self.in_flight.contains(command_id, self.hash(command_id))
    }

    /// The command ran to an end: keep its result for duplicates, within
    /// the bounds (a result larger than `dedup_max_bytes` on its own is not
    /// kept, and counts as evicted).
    pub fn finish(&mut self, result: &CommandResult, now: Instant) {
        let id = result.command_id.as_str();
        let hash = self.hash(id);
        self.in_flight.remove(id, hash);
        let Ok(id_len) = u8::try_from(id.len()) else {
            self.evicted += 1;
            return;
        };
        let slot = Slot {
            data: id_and_frame(result).into_boxed_slice(),
            id_len,
            live: true,
            at: now,
            hash,
        };
        if slot.cost() > self.max_bytes {
            self.evicted += 1;
            return;
        }
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
        self.in_flight.remove(command_id, self.hash(command_id));
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
        if let std::collections::hash_map::Entry::Occupied(entry) = self.index.entry(slot.hash) {
            if *entry.get() == seq {
                entry.remove();
            }
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

/// A slot's bytes: the id, then the result encoded without its id.
///
/// prost writes fields in tag order, so an encoded result starts with its
/// `command_id` (field 1) as tag, length, bytes: encoding the whole result
/// and cutting the tag and length out leaves exactly the id followed by the
/// rest, with no copy of the result to blank its id first.
fn id_and_frame(result: &CommandResult) -> Vec<u8> {
    let mut data = Vec::with_capacity(result.encoded_len());
    // A Vec grows as needed: encoding into it cannot fail.
    let _ = result.encode(&mut data);
    let id = result.command_id.len();
    if id > 0 {
        let head = 1 + prost::encoding::encoded_len_varint(id as u64);
        debug_assert_eq!(data[0], 0x0a, "command_id is field 1, a string");
        debug_assert_eq!(&data[head..head + id], result.command_id.as_bytes());
        data.drain(..head);
    }
    data
}

#[cfg(test)]
fn encode_without_id(result: &CommandResult, out: &mut Vec<u8>) {
    let data = id_and_frame(result);
    out.extend_from_slice(&data[result.command_id.len()..]);
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
    fn results_come_back_intact_whatever_the_id_length() {
        // 127 and 128 bytes: the id's length takes one, then two varint bytes.
        for len in [1, 36, 127, 128] {
            let id = "x".repeat(len);
            let mut cache = cache(10, MIB);
            let t = Instant::now();
            assert_eq!(cache.check_and_begin(&id, t), Seen::New);
            cache.finish(&result(&id), t);
            assert_eq!(cache.check_and_begin(&id, t), Seen::Finished(result(&id)));
        }
    }

    #[test]
    fn ids_with_the_same_hash_stay_apart_in_flight() {
        let mut running = InFlight::default();
        running.insert("a", 7);
        running.insert("b", 7);
        assert!(running.contains("a", 7) && running.contains("b", 7));
        assert!(!running.contains("c", 7));
        running.remove("a", 7);
        assert!(!running.contains("a", 7) && running.contains("b", 7));
        running.insert("c", 7);
        assert!(running.contains("c", 7));
        running.remove("b", 7);
        running.remove("c", 7);
        assert_eq!(running.len(), 0);
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
