//! Wall-clock time as the protocol counts it: Unix milliseconds
//! (`deadline_unix_ms`, `started_unix_ms`, event timestamps). Durations and
//! deadlines inside the process use `std::time::Instant` / tokio time instead.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in Unix milliseconds (0 if the clock is before 1970).
pub fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
