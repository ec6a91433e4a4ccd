//! `MailboxGauge`: how many messages a sender has queued or in handling at
//! one actor. actix does not expose its mailbox length, so the sender counts
//! (the session counts its deliveries to the CommandRouter); `/debug/actors`
//! shows it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Messages waiting for (or being handled by) one actor, and its mailbox capacity.
#[derive(Debug, Clone)]
pub struct MailboxGauge {
    len: Arc<AtomicUsize>,
    capacity: usize,
}

impl MailboxGauge {
    pub fn new(capacity: usize) -> Self {
        Self {
            len: Arc::new(AtomicUsize::new(0)),
            capacity,
        }
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Counts one message until the returned guard drops.
    pub fn enter(&self) -> MailboxSlot {
        self.len.fetch_add(1, Ordering::Relaxed);
        MailboxSlot(self.len.clone())
    }
}

/// One counted message; decrements the gauge when dropped.
#[derive(Debug)]
pub struct MailboxSlot(Arc<AtomicUsize>);

impl Drop for MailboxSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
