//! `FrameLimit`: the largest frame either side takes now —
//! `connection.max_frame_bytes`, lowered to `Welcome.max_frame_bytes` when
//! the backend announces less. One shared value: the ConnectionActor sets it
//! on every `Welcome`; the telemetry sink and the executor read it to size
//! batches and command output.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The protocol's frame limit when `Welcome.max_frame_bytes` is 0.
pub const PROTOCOL_DEFAULT_FRAME_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct FrameLimit {
    configured: usize,
    current: Arc<AtomicUsize>,
}

impl FrameLimit {
    /// Starts at `connection.max_frame_bytes`.
    pub fn new(configured: usize) -> Self {
        Self {
            configured,
            current: Arc::new(AtomicUsize::new(configured)),
        }
    }

    /// The limit in force now.
    pub fn get(&self) -> usize {
        self.current.load(Ordering::Relaxed)
    }

    /// Applies a `Welcome.max_frame_bytes` (0 = the protocol's 4 MiB): the
    /// smaller of it and the configured limit wins. Returns the limit.
    pub fn apply_announced(&self, announced: u32) -> usize {
        let announced = if announced == 0 {
            PROTOCOL_DEFAULT_FRAME_BYTES
        } else {
            announced as usize
        };
        let limit = self.configured.min(announced);
        self.current.store(limit, Ordering::Relaxed);
        limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_smaller_of_configured_and_announced_wins() {
        for (configured, announced, expected) in [
            (4 << 20, 0, 4 << 20),
            (8 << 20, 0, 4 << 20),
            (4 << 20, 65_536, 65_536),
            (65_536, 4 << 20, 65_536),
        ] {
            let limit = FrameLimit::new(configured);
            assert_eq!(limit.apply_announced(announced), expected);
            assert_eq!(limit.clone().get(), expected, "shared between clones");
        }
    }
}
