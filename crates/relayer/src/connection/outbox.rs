//! The outbound side of the one stream: priority queues, sequencing and the
//! replay buffer, in one plain struct with no I/O.
//!
//! Frames wait unsequenced in three queues — control, then results and
//! events, then telemetry — and get their `seq` only when the writer takes
//! them. Sequencing at send time is what lets a result overtake telemetry that
//! arrived earlier while keeping `seq` strictly increasing on the wire, and
//! what lets the buffer drop *pending* telemetry without leaving a gap the
//! backend's cumulative ack would stall on. Sequenced frames stay in the
//! replay buffer until acked and are re-sent after every `Welcome`.
//!
//! Bounds (`replay_buffer_bytes` = capacity, pending + unacked together), with
//! `headroom` = an eighth of the capacity (at most 4 MiB):
//! telemetry is admitted only below `capacity - 2 * headroom`, so it can never
//! starve commands; new commands are admitted only below `capacity - headroom`;
//! a result or event of an admitted command is always kept — pending
//! telemetry is evicted to make room, and if that is not enough the result
//! goes over the capacity by at most its own size rather than being lost.
//!
//! Answers that are not results of an admitted command are bounded too,
//! because the backend decides how many there are:
//! - a **duplicate's cached result** goes in only below the command limit;
//! - a **refusal** (REJECTED) goes in only within the capacity, using the
//!   headroom; beyond it the answer is not queued (the caller counts it, and
//!   the backend re-sends after a reconnect);
//! - the **control queue** (`CommandAccepted`, heartbeats) holds at most
//!   [`MAX_CONTROL_FRAMES`]; beyond it a frame is not queued (a lost
//!   `CommandAccepted` only makes the backend re-send, which dedup answers).

use std::collections::VecDeque;

use prost::Message;

use prometheus_client::metrics::counter::Counter;

use crate::metrics::FrameCounters;
use crate::proto::{relayer_frame::Body, RelayerFrame};

/// Control frames queued at most: far more than one session writes between
/// two reads of a healthy stream, and 1024 small frames are a few tens of KiB.
pub const MAX_CONTROL_FRAMES: usize = 1024;

/// What became of a control frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlPush {
    Queued,
    /// No session is open: control frames belong to one session.
    NoSession,
    /// The control queue holds [`MAX_CONTROL_FRAMES`] already.
    Full,
}

/// Outbound priority classes, highest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameClass {
    Control,
    Result,
    Event,
    Telemetry,
}

impl FrameClass {
    pub fn of(body: &Body) -> FrameClass {
        match body {
            Body::Hello(_) | Body::Heartbeat(_) | Body::Accepted(_) => FrameClass::Control,
            Body::Result(_) => FrameClass::Result,
            Body::Event(_) => FrameClass::Event,
            Body::Telemetry(_) => FrameClass::Telemetry,
        }
    }

    /// This class's counter among the outbound frame counters.
    pub fn counter<'a>(&self, counters: &'a FrameCounters) -> &'a Counter {
        match self {
            FrameClass::Control => &counters.control,
            FrameClass::Result => &counters.result,
            FrameClass::Event => &counters.event,
            FrameClass::Telemetry => &counters.telemetry,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            FrameClass::Control => "control",
            FrameClass::Result => "result",
            FrameClass::Event => "event",
            FrameClass::Telemetry => "telemetry",
        }
    }
}

/// The buffer has no room for this telemetry frame: refuse it upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("replay buffer full: {needed} bytes needed, {used} of {limit} in use")]
pub struct BufferFull {
    pub needed: usize,
    pub used: usize,
    pub limit: usize,
}

#[derive(Debug)]
struct Pending {
    body: Body,
    bytes: usize,
    items: u64,
}

#[derive(Debug)]
struct Sequenced {
    frame: RelayerFrame,
    bytes: usize,
    class: FrameClass,
}

/// Counters a reader can show without locking for long.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct OutboxStats {
    pub bytes: usize,
    pub capacity: usize,
    pub pending_frames: usize,
    pub unacked_frames: usize,
    pub next_seq: u64,
    pub acked_seq: u64,
    pub telemetry_batches_dropped: u64,
    pub telemetry_items_dropped: u64,
    pub over_capacity_results: u64,
    /// Telemetry bytes pending or unacked (what `telemetry.buffer_bytes` bounds).
    pub telemetry_bytes: usize,
}

#[derive(Debug)]
pub struct Outbox {
    control: VecDeque<RelayerFrame>,
    results: VecDeque<Pending>,
    telemetry: VecDeque<Pending>,
    unacked: VecDeque<Sequenced>,
    /// Next seq to write from `unacked` in this session; `None` before `Welcome`.
    cursor: Option<u64>,
    next_seq: u64,
    acked_seq: u64,
    bytes: usize,
    telemetry_bytes: usize,
    capacity: usize,
    headroom: usize,
    session_open: bool,
    telemetry_batches_dropped: u64,
    telemetry_items_dropped: u64,
    over_capacity_results: u64,
}

impl Outbox {
    /// `capacity` is `replay_buffer_bytes`; an eighth of it (at most 4 MiB)
    /// is headroom kept for results of admitted commands and for rejections.
    pub fn new(capacity: usize) -> Self {
        let headroom = (capacity / 8).min(4 << 20);
        Self {
            control: VecDeque::new(),
            results: VecDeque::new(),
            telemetry: VecDeque::new(),
            unacked: VecDeque::new(),
            cursor: None,
            next_seq: 1,
            acked_seq: 0,
            bytes: 0,
            telemetry_bytes: 0,
            capacity,
            headroom,
            session_open: false,
            telemetry_batches_dropped: 0,
            telemetry_items_dropped: 0,
            over_capacity_results: 0,
        }
    }

    fn command_limit(&self) -> usize {
        self.capacity - self.headroom
    }

    fn telemetry_limit(&self) -> usize {
        self.capacity - 2 * self.headroom
    }

    /// Whether a new command may be admitted: its result must find room.
    pub fn has_room_for_result(&self) -> bool {
        self.bytes < self.command_limit()
    }

    /// Queues a per-session control frame; dropped when no session is open
    /// (a lost `CommandAccepted` makes the backend re-send the command, which
    /// the dedup cache answers).
    pub fn push_control(&mut self, body: Body) -> ControlPush {
        if !self.session_open {
            return ControlPush::NoSession;
        }
        if self.control.len() >= MAX_CONTROL_FRAMES {
            return ControlPush::Full;
        }
        self.control.push_back(RelayerFrame {
            seq: 0,
            body: Some(body),
        });
        ControlPush::Queued
    }

    pub fn control_frames(&self) -> usize {
        self.control.len()
    }

    /// Queues a duplicate's cached result if it fits below the command
    /// limit, like the result of a newly admitted command would; `false`
    /// (nothing queued) otherwise.
    pub fn push_cached_result(&mut self, body: Body) -> bool {
        let bytes = body_len(&body);
        if self.bytes + bytes > self.command_limit() {
            return false;
        }
        self.push_result(body);
        true
    }

    /// Queues a refusal if it fits within the capacity (the headroom is kept
    /// for it); `false` (nothing queued) otherwise.
    pub fn push_refusal(&mut self, body: Body) -> bool {
        let bytes = body_len(&body);
        if self.bytes + bytes > self.capacity {
            return false;
        }
        self.push_result(body);
        true
    }

    /// Queues a result or event. Never refuses: see the module docs.
    pub fn push_result(&mut self, body: Body) {
        let bytes = body_len(&body);
        while self.bytes + bytes > self.capacity {
            if !self.evict_oldest_telemetry() {
                break;
            }
        }
        if self.bytes + bytes > self.capacity {
            self.over_capacity_results += 1;
        }
        self.bytes += bytes;
        self.results.push_back(Pending {
            body,
            bytes,
            items: 0,
        });
    }

    /// Queues a telemetry batch of `items` items if it fits below the
    /// telemetry limit.
    pub fn push_telemetry(&mut self, body: Body, items: u64) -> Result<(), BufferFull> {
        let bytes = body_len(&body);
        if self.bytes + bytes > self.telemetry_limit() {
            return Err(BufferFull {
                needed: bytes,
                used: self.bytes,
                limit: self.telemetry_limit(),
            });
        }
        self.bytes += bytes;
        self.telemetry_bytes += bytes;
        self.telemetry.push_back(Pending { body, bytes, items });
        Ok(())
    }

    fn evict_oldest_telemetry(&mut self) -> bool {
        match self.telemetry.pop_front() {
            Some(dropped) => {
                self.bytes -= dropped.bytes;
                self.telemetry_bytes -= dropped.bytes;
                self.telemetry_batches_dropped += 1;
                self.telemetry_items_dropped += dropped.items;
                true
            }
            None => false,
        }
    }

    /// A stream is being opened: control frames of an earlier session are void,
    /// and nothing reliable goes out before `Welcome` says what the backend holds.
    pub fn begin_session(&mut self) {
        self.control.clear();
        self.session_open = true;
        self.cursor = None;
    }

    /// `Welcome.acked_seq` arrived: trim what the backend holds and replay the rest.
    pub fn on_welcome(&mut self, acked_seq: u64) {
        self.ack(acked_seq);
        self.cursor = Some(self.unacked.front().map_or(self.next_seq, |f| f.frame.seq));
    }

    pub fn end_session(&mut self) {
        self.session_open = false;
        self.cursor = None;
        self.control.clear();
    }

    /// Cumulative ack: frees every frame with `seq <= acked_seq`. Returns how
    /// many frames it freed. An ack beyond what was sent is clamped.
    pub fn ack(&mut self, acked_seq: u64) -> usize {
        let acked_seq = acked_seq.min(self.next_seq - 1);
        if acked_seq <= self.acked_seq {
            return 0;
        }
        self.acked_seq = acked_seq;
        let mut freed = 0;
        while let Some(front) = self.unacked.front() {
            if front.frame.seq > acked_seq {
                break;
            }
            self.bytes -= front.bytes;
            if front.class == FrameClass::Telemetry {
                self.telemetry_bytes -= front.bytes;
            }
            self.unacked.pop_front();
            freed += 1;
        }
        if let Some(cursor) = self.cursor {
            self.cursor = Some(cursor.max(acked_seq + 1));
        }
        freed
    }

    /// The next frame the writer should put on the wire, in priority order;
    /// `None` when nothing is ready or no session may write.
    pub fn next_frame(&mut self) -> Option<(RelayerFrame, FrameClass)> {
        if !self.session_open {
            return None;
        }
        if let Some(frame) = self.control.pop_front() {
            return Some((frame, FrameClass::Control));
        }
        let cursor = self.cursor?;
        if let Some(front_seq) = self.unacked.front().map(|f| f.frame.seq) {
            let index = (cursor.saturating_sub(front_seq)) as usize;
            if let Some(replay) = self.unacked.get(index) {
                self.cursor = Some(cursor + 1);
                return Some((replay.frame.clone(), replay.class));
            }
        }
        let pending = self
            .results
            .pop_front()
            .or_else(|| self.telemetry.pop_front())?;
        let class = FrameClass::of(&pending.body);
        let seq = self.next_seq;
        self.next_seq += 1;
        let frame = RelayerFrame {
            seq,
            body: Some(pending.body),
        };
        self.unacked.push_back(Sequenced {
            frame: frame.clone(),
            bytes: pending.bytes,
            class,
        });
        self.cursor = Some(seq + 1);
        Some((frame, class))
    }

    /// About how many frames [`next_frame`](Self::next_frame) has ready
    /// (queued ones; replayed ones are not counted): room to reserve.
    pub fn ready_frames(&self) -> usize {
        self.control.len() + self.results.len() + self.telemetry.len()
    }

    /// Whether any sequenced frame is still unsent or any result is pending
    /// (used to let a draining session flush before it closes).
    pub fn has_unsent_reliable(&self) -> bool {
        let replay_left = match (self.cursor, self.unacked.back()) {
            (Some(cursor), Some(last)) => cursor <= last.frame.seq,
            (None, Some(_)) => true,
            _ => false,
        };
        replay_left || !self.results.is_empty()
    }

    pub fn acked_seq(&self) -> u64 {
        self.acked_seq
    }

    pub fn stats(&self) -> OutboxStats {
        OutboxStats {
            bytes: self.bytes,
            capacity: self.capacity,
            pending_frames: self.results.len() + self.telemetry.len(),
            unacked_frames: self.unacked.len(),
            next_seq: self.next_seq,
            acked_seq: self.acked_seq,
            telemetry_batches_dropped: self.telemetry_batches_dropped,
            telemetry_items_dropped: self.telemetry_items_dropped,
            over_capacity_results: self.over_capacity_results,
            telemetry_bytes: self.telemetry_bytes,
        }
    }
}

/// What a frame costs the buffer: its encoded size (which is also about
/// what its strings and bytes take on the heap) plus the slot it takes in a
/// queue. Counting the slot makes `replay_buffer_bytes` a bound on memory:
/// a 60-byte ping result takes several hundred bytes once queued, so
/// counting only the wire size let a buffer of small frames take five times
/// its configured size.
fn body_len(body: &Body) -> usize {
    // seq (up to 10 bytes + tag) plus the oneof field itself.
    let frame = RelayerFrame {
        seq: u64::MAX,
        body: None,
    };
    frame.encoded_len() + body.encoded_len() + std::mem::size_of::<Sequenced>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{command_result, CommandAccepted, CommandResult, TelemetryBatch};

    fn result(id: &str) -> Body {
        Body::Result(CommandResult {
            command_id: id.to_string(),
            status: command_result::Status::Succeeded as i32,
            ..Default::default()
        })
    }

    fn telemetry(size: usize) -> Body {
        Body::Telemetry(TelemetryBatch {
            otlp: vec![0u8; size].into(),
            item_count: 1,
            ..Default::default()
        })
    }

    fn drain(outbox: &mut Outbox) -> Vec<(u64, FrameClass)> {
        std::iter::from_fn(|| outbox.next_frame())
            .map(|(f, c)| (f.seq, c))
            .collect()
    }

    fn open(outbox: &mut Outbox, acked: u64) {
        outbox.begin_session();
        outbox.on_welcome(acked);
    }

    #[test]
    fn nothing_reliable_before_welcome_and_control_first() {
        let mut outbox = Outbox::new(1 << 20);
        outbox.push_result(result("a"));
        assert!(outbox.next_frame().is_none(), "no session yet");
        outbox.begin_session();
        outbox.push_control(Body::Accepted(CommandAccepted {
            command_id: "a".into(),
        }));
        assert_eq!(drain(&mut outbox), vec![(0, FrameClass::Control)]);
        outbox.on_welcome(0);
        assert_eq!(drain(&mut outbox), vec![(1, FrameClass::Result)]);
    }

    #[test]
    fn results_overtake_pending_telemetry_and_seq_stays_increasing() {
        let mut outbox = Outbox::new(1 << 20);
        outbox.push_telemetry(telemetry(10), 1).unwrap();
        outbox.push_result(result("a"));
        open(&mut outbox, 0);
        assert_eq!(
            drain(&mut outbox),
            vec![(1, FrameClass::Result), (2, FrameClass::Telemetry)]
        );
    }

    #[test]
    fn replays_unacked_in_order_after_welcome_and_trims_on_ack() {
        let mut outbox = Outbox::new(1 << 20);
        open(&mut outbox, 0);
        for id in ["a", "b", "c", "d"] {
            outbox.push_result(result(id));
        }
        assert_eq!(drain(&mut outbox).len(), 4);
        outbox.ack(1);
        outbox.end_session();
        // The backend held up to 2 when the next session starts.
        open(&mut outbox, 2);
        outbox.push_result(result("e"));
        let seqs: Vec<u64> = drain(&mut outbox).into_iter().map(|(s, _)| s).collect();
        assert_eq!(seqs, vec![3, 4, 5]);
        outbox.ack(5);
        assert_eq!(outbox.stats().unacked_frames, 0);
        assert_eq!(outbox.stats().telemetry_bytes, 0);
        assert_eq!(outbox.stats().bytes, 0);
    }

    #[test]
    fn telemetry_bytes_count_until_acked() {
        let mut outbox = Outbox::new(1 << 20);
        outbox.push_telemetry(telemetry(100), 1).unwrap();
        let pending = outbox.stats().telemetry_bytes;
        assert!(pending > 100);
        open(&mut outbox, 0);
        drain(&mut outbox);
        assert_eq!(
            outbox.stats().telemetry_bytes,
            pending,
            "sent but unacked still counts"
        );
        outbox.ack(1);
        assert_eq!(outbox.stats().telemetry_bytes, 0);
    }

    #[test]
    fn ack_beyond_sent_is_clamped() {
        let mut outbox = Outbox::new(1 << 20);
        open(&mut outbox, 0);
        outbox.push_result(result("a"));
        drain(&mut outbox);
        outbox.ack(99);
        assert_eq!(outbox.acked_seq(), 1);
        outbox.push_result(result("b"));
        assert_eq!(drain(&mut outbox), vec![(2, FrameClass::Result)]);
    }

    #[test]
    fn telemetry_refused_at_soft_limit_and_evicted_for_results() {
        let capacity = 32 * 1024;
        let mut outbox = Outbox::new(capacity);
        let mut accepted = 0;
        while outbox.push_telemetry(telemetry(500), 3).is_ok() {
            accepted += 1;
        }
        assert!(accepted > 5);
        assert!(
            outbox.has_room_for_result(),
            "telemetry never starves commands"
        );
        // Results still get in: first into headroom, then by evicting telemetry.
        for i in 0..40 {
            outbox.push_result(Body::Result(CommandResult {
                command_id: format!("cmd-{i}"),
                output_json: vec![b'x'; 100].into(),
                ..Default::default()
            }));
        }
        assert!(
            !outbox.has_room_for_result(),
            "results filled it: stop taking commands"
        );
        let stats = outbox.stats();
        assert!(stats.telemetry_batches_dropped > 0);
        assert_eq!(
            stats.telemetry_items_dropped,
            stats.telemetry_batches_dropped * 3
        );
        // Over by at most one result (its wire size and its queue slot).
        assert!(stats.bytes <= capacity + 200 + std::mem::size_of::<Sequenced>());
        assert!(
            stats.telemetry_bytes < stats.bytes,
            "evictions leave the telemetry count"
        );
        open(&mut outbox, 0);
        let results = drain(&mut outbox)
            .into_iter()
            .filter(|(_, c)| *c == FrameClass::Result)
            .count();
        assert_eq!(results, 40, "no result is ever dropped");
    }

    #[test]
    fn control_frames_dropped_without_session() {
        let mut outbox = Outbox::new(1 << 20);
        assert_eq!(
            outbox.push_control(Body::Accepted(CommandAccepted {
                command_id: "x".into()
            })),
            ControlPush::NoSession
        );
        outbox.begin_session();
        outbox.push_control(Body::Accepted(CommandAccepted {
            command_id: "x".into(),
        }));
        outbox.end_session();
        open(&mut outbox, 0);
        assert!(drain(&mut outbox).is_empty());
    }

    #[test]
    fn the_control_queue_is_bounded() {
        let mut outbox = Outbox::new(1 << 20);
        outbox.begin_session();
        let accepted = || {
            Body::Accepted(CommandAccepted {
                command_id: "x".into(),
            })
        };
        for _ in 0..MAX_CONTROL_FRAMES {
            assert_eq!(outbox.push_control(accepted()), ControlPush::Queued);
        }
        assert_eq!(outbox.push_control(accepted()), ControlPush::Full);
        assert_eq!(outbox.control_frames(), MAX_CONTROL_FRAMES);
        outbox.next_frame();
        assert_eq!(outbox.push_control(accepted()), ControlPush::Queued);
    }

    #[test]
    fn duplicates_and_refusals_never_push_past_their_bounds() {
        // 1 MiB: headroom 128 KiB; the command limit is 896 KiB.
        let capacity = 1 << 20;
        let mut outbox = Outbox::new(capacity);
        let big = |id: &str| {
            Body::Result(CommandResult {
                command_id: id.into(),
                output_json: vec![b'x'; 100 * 1024].into(),
                ..Default::default()
            })
        };
        let mut cached = 0;
        while outbox.push_cached_result(big("dup")) {
            cached += 1;
            assert!(cached < 100, "unbounded");
        }
        assert!(outbox.bytes <= outbox.command_limit(), "{}", outbox.bytes);
        assert_eq!(
            cached, 8,
            "900 KiB of cached results fit below 896 KiB + slack"
        );
        let mut refusals = 0;
        while outbox.push_refusal(result("r")) {
            refusals += 1;
            assert!(refusals < 100_000, "unbounded");
        }
        assert!(
            outbox.bytes <= capacity,
            "refusals stay within the capacity"
        );
        assert!(
            refusals > 100,
            "the headroom takes many refusals: {refusals}"
        );
        assert!(!outbox.push_cached_result(result("dup")));
        // A result of an admitted command is still always kept.
        outbox.push_result(result("ran"));
        assert_eq!(outbox.stats().pending_frames, cached + refusals + 1);
    }

    #[test]
    fn unsent_reliable_tracks_replay_and_pending() {
        let mut outbox = Outbox::new(1 << 20);
        assert!(!outbox.has_unsent_reliable());
        outbox.push_result(result("a"));
        assert!(outbox.has_unsent_reliable());
        open(&mut outbox, 0);
        drain(&mut outbox);
        assert!(!outbox.has_unsent_reliable());
        outbox.end_session();
        outbox.begin_session();
        assert!(outbox.has_unsent_reliable(), "awaiting replay");
    }
}
