//! The server's clock for rules that depend on elapsed time (the edit and delete windows,
//! spec/message-policy.md). It is the system clock, unless `testing.adjustable_clock` is on:
//! then `POST /_hearth/testing/v1/clock/advance` moves it forward, so a test can stand just
//! inside and just outside a 15-minute window without waiting 15 minutes.

use std::sync::atomic::{AtomicI64, Ordering};

use crate::{
    error::{Error, Result},
    util::now_ms,
};

/// How far one call may move the clock: a week.
const MAX_ADVANCE_MS: i64 = 7 * 24 * 3600 * 1000;

#[derive(Debug, Default)]
pub struct Clock {
    adjustable: bool,
    offset_ms: AtomicI64,
}

impl Clock {
    pub fn new(adjustable: bool) -> Self {
        Self {
            adjustable,
            offset_ms: AtomicI64::new(0),
        }
    }

    /// Milliseconds since the Unix epoch, as the server's rules see them.
    pub fn now_ms(&self) -> i64 {
        now_ms() + self.offset_ms.load(Ordering::Relaxed)
    }

    /// Moves the clock forward by `ms` (never back: what was refused stays refused). Absent
    /// unless the configuration asks for it, as if the endpoint did not exist.
    pub fn advance(&self, ms: i64) -> Result<i64> {
        if !self.adjustable {
            return Err(Error::Unrecognized {
                method_not_allowed: false,
            });
        }
        if !(0..=MAX_ADVANCE_MS).contains(&ms) {
            return Err(Error::invalid_param(format!(
                "ms must be between 0 and {MAX_ADVANCE_MS}"
            )));
        }
        self.offset_ms.fetch_add(ms, Ordering::Relaxed);
        Ok(self.now_ms())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_adjustable_clock_moves_and_only_forward() {
        let fixed = Clock::new(false);
        assert!(fixed.advance(1000).is_err());
        let clock = Clock::new(true);
        let before = clock.now_ms();
        assert!(clock.advance(-1).is_err());
        assert!(clock.advance(MAX_ADVANCE_MS + 1).is_err());
        assert!(clock.advance(60_000).unwrap() >= before + 60_000);
    }
}
