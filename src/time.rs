//! Wall-clock time as the rest of the program uses it: milliseconds since
//! the Unix epoch, the unit of Easemob's timestamps and of the event
//! contract.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the epoch of `t` (0 for a time before it).
pub fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    unix_ms(SystemTime::now())
}
