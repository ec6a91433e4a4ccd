//! `OutboxHandle`: the [`Outbox`] behind a lock, shared by everyone who
//! produces frames (CommandRouter, TelemetryIngest) and the session writer
//! that consumes them. It is owned by the relayer, not by any actor, so a
//! restarted ConnectionActor or CommandRouter finds every unacked frame and
//! the sequence counter where they were.
//!
//! Sessions take an epoch when they begin; a writer from an older session
//! that is still being torn down gets nothing, so it can never move the
//! replay cursor of the session that replaced it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::outbox::{BufferFull, ControlPush, FrameClass, Outbox, OutboxStats};
use crate::metrics::Metrics;
use crate::proto::{relayer_frame::Body, RelayerFrame};

/// The answers to one batch of commands, by how each is bounded.
#[derive(Debug, Default)]
pub struct Answers {
    /// `CommandAccepted` frames (control).
    pub accepted: Vec<Body>,
    /// Results of commands that ran: always kept.
    pub results: Vec<Body>,
    /// Each duplicate's cached result, and the busy refusal sent instead
    /// when the cached result does not fit.
    pub cached: Vec<(Body, Body)>,
    /// Refusals (REJECTED): kept within the capacity.
    pub refusals: Vec<Body>,
}

impl Answers {
    /// Room for `commands` accepted frames and results, so a batch's
    /// answers are not copied as the vectors grow.
    pub fn with_capacity(commands: usize) -> Self {
        Self {
            accepted: Vec::with_capacity(commands),
            results: Vec::with_capacity(commands),
            ..Self::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.accepted.is_empty()
            && self.results.is_empty()
            && self.cached.is_empty()
            && self.refusals.is_empty()
    }
}

#[derive(Debug)]
struct Inner {
    outbox: Outbox,
    epoch: u64,
}

#[derive(Debug, Clone)]
pub struct OutboxHandle {
    inner: Arc<Mutex<Inner>>,
    ready: Arc<Notify>,
    metrics: Arc<Metrics>,
    /// `Outbox::has_room_for_result` as of the last change to the bytes it
    /// counts (every such change goes through [`Self::publish`]). The router
    /// reads it for every command it admits; through the lock, that read
    /// contended with the session's writer and put the router's thread to
    /// sleep on the futex (3 % of the command path's CPU).
    result_room: Arc<AtomicBool>,
}

impl OutboxHandle {
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> Self {
        metrics.replay_buffer_capacity.set(capacity as i64);
        let outbox = Outbox::new(capacity);
        let result_room = Arc::new(AtomicBool::new(outbox.has_room_for_result()));
        Self {
            inner: Arc::new(Mutex::new(Inner { outbox, epoch: 0 })),
            ready: Arc::new(Notify::new()),
            metrics,
            result_room,
        }
    }

    /// After every change to the outbox's contents, under its lock.
    fn publish(&self, outbox: &Outbox) {
        self.result_room
            .store(outbox.has_room_for_result(), Ordering::Release);
        let stats = outbox.stats();
        self.metrics.replay_buffer_bytes.set(stats.bytes as i64);
        self.metrics
            .replay_buffer_frames
            .set((stats.pending_frames + stats.unacked_frames) as i64);
        self.metrics
            .control_queue_frames
            .set(outbox.control_frames() as i64);
    }

    fn control(&self, outbox: &mut Outbox, body: Body) {
        if outbox.push_control(body) == ControlPush::Full {
            self.metrics.control_frames_dropped.inc();
        }
    }

    /// Queues a control frame (`CommandAccepted`, a heartbeat); with the
    /// control queue full it is dropped and counted.
    pub fn push_control(&self, body: Body) {
        {
            let mut inner = self.inner.lock();
            self.control(&mut inner.outbox, body);
            self.publish(&inner.outbox);
        }
        self.ready.notify_one();
    }

    /// Queues the answers of one batch of commands in one lock: each
    /// `CommandAccepted`, each result of a command that ran (always kept),
    /// each duplicate's cached result and each refusal (kept only within
    /// their bounds; see `outbox`). A cached result that does not fit is
    /// answered with `busy` instead, if that fits; whatever is left unsent is
    /// counted in `answers_dropped`.
    pub fn push_answers(&self, answers: Answers) {
        let mut dropped = (0u64, 0u64);
        {
            let mut inner = self.inner.lock();
            for body in answers.accepted {
                self.control(&mut inner.outbox, body);
            }
            for body in answers.results {
                inner.outbox.push_result(body);
            }
            for (cached, busy) in answers.cached {
                if !inner.outbox.push_cached_result(cached) {
                    dropped.0 += 1;
                    if !inner.outbox.push_refusal(busy) {
                        dropped.1 += 1;
                    }
                }
            }
            for body in answers.refusals {
                if !inner.outbox.push_refusal(body) {
                    dropped.1 += 1;
                }
            }
            self.publish(&inner.outbox);
        }
        self.metrics
            .count_answers_dropped("cached_result", dropped.0);
        self.metrics.count_answers_dropped("refusal", dropped.1);
        self.ready.notify_one();
    }

    /// Queues the result of a command that ran, or an event: always kept.
    pub fn push_result(&self, body: Body) {
        {
            let mut inner = self.inner.lock();
            inner.outbox.push_result(body);
            self.publish(&inner.outbox);
        }
        self.ready.notify_one();
    }

    /// Queues one refusal within its bound; `false` (counted) when it did
    /// not fit.
    pub fn push_refusal(&self, body: Body) -> bool {
        let queued = {
            let mut inner = self.inner.lock();
            let queued = inner.outbox.push_refusal(body);
            self.publish(&inner.outbox);
            queued
        };
        if queued {
            self.ready.notify_one();
        } else {
            self.metrics.count_answers_dropped("refusal", 1);
        }
        queued
    }

    pub fn push_telemetry(&self, body: Body, items: u64) -> Result<(), BufferFull> {
        {
            let mut inner = self.inner.lock();
            inner.outbox.push_telemetry(body, items)?;
            self.publish(&inner.outbox);
        }
        self.ready.notify_one();
        Ok(())
    }

    /// Whether a new command's result would find room (without the lock:
    /// the value as of the outbox's last change).
    pub fn has_room_for_result(&self) -> bool {
        self.result_room.load(Ordering::Acquire)
    }

    /// Starts a session; returns its epoch.
    pub fn begin_session(&self) -> u64 {
        let mut inner = self.inner.lock();
        inner.epoch += 1;
        inner.outbox.begin_session();
        inner.epoch
    }

    pub fn on_welcome(&self, epoch: u64, acked_seq: u64) {
        {
            let mut inner = self.inner.lock();
            if inner.epoch != epoch {
                return;
            }
            inner.outbox.on_welcome(acked_seq);
            self.publish(&inner.outbox);
        }
        self.ready.notify_one();
    }

    pub fn end_session(&self, epoch: u64) {
        let mut inner = self.inner.lock();
        if inner.epoch == epoch {
            inner.outbox.end_session();
        }
        drop(inner);
        // Wake a writer blocked on an empty outbox so it sees its session is over.
        self.ready.notify_waiters();
    }

    pub fn ack(&self, acked_seq: u64) {
        let mut inner = self.inner.lock();
        if inner.outbox.ack(acked_seq) > 0 {
            self.publish(&inner.outbox);
        }
    }

    /// Moves up to `max` ready frames of session `epoch` into `out`; `false`
    /// when that session is no longer current.
    pub fn take_ready(
        &self,
        epoch: u64,
        out: &mut VecDeque<(RelayerFrame, FrameClass)>,
        max: usize,
    ) -> bool {
        let mut inner = self.inner.lock();
        if inner.epoch != epoch {
            return false;
        }
        out.reserve(inner.outbox.ready_frames().min(max));
        for _ in 0..max {
            match inner.outbox.next_frame() {
                Some(frame) => out.push_back(frame),
                None => break,
            }
        }
        true
    }

    /// Resolves when frames may be ready (or the session ended).
    pub async fn wait_ready(&self) {
        self.ready.notified().await;
    }

    /// Wakes writers to re-check (e.g. their session was cancelled).
    pub fn wake(&self) {
        self.ready.notify_waiters();
    }

    pub fn has_unsent_reliable(&self) -> bool {
        self.inner.lock().outbox.has_unsent_reliable()
    }

    pub fn acked_seq(&self) -> u64 {
        self.inner.lock().outbox.acked_seq()
    }

    pub fn stats(&self) -> OutboxStats {
        self.inner.lock().outbox.stats()
    }
}
