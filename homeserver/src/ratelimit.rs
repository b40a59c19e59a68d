//! Token-bucket rate limits per (action, user or client address).

use std::{collections::HashMap, sync::Mutex, time::Instant};

use crate::{config::RateLimitConfig, error::Error};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Message,
    /// Login requests, per client address.
    Login,
    /// Failed logins, per (user, client address): see [`RateLimiter::check_failures`].
    LoginFailure,
    Register,
    RoomCreation,
    Invite,
    Join,
    Profile,
    Typing,
    Receipt,
    Presence,
    MediaUpload,
    Pusher,
    /// Wrong passwords in user-interactive auth, per user.
    UiaFailure,
}

pub struct RateLimiter {
    config: RateLimitConfig,
    buckets: Mutex<HashMap<(Action, String), (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(config: RateLimitConfig) -> Self {
        Self {
            config,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn rate(&self, action: Action) -> (f64, f64) {
        let c = &self.config;
        match action {
            Action::Message => (c.messages_per_second, c.messages_burst),
            Action::Login => (c.login_per_second, c.login_burst),
            Action::LoginFailure => (c.login_failures_per_second, c.login_failures_burst),
            Action::Register => (c.register_per_second, c.register_burst),
            Action::RoomCreation => (c.room_creation_per_second, c.room_creation_burst),
            Action::Invite => (c.invites_per_second, c.invites_burst),
            Action::Join => (c.joins_per_second, c.joins_burst),
            Action::Profile => (c.profile_per_second, c.profile_burst),
            Action::Typing => (c.typing_per_second, c.typing_burst),
            Action::Receipt => (c.receipts_per_second, c.receipts_burst),
            Action::Presence => (c.presence_per_second, c.presence_burst),
            Action::MediaUpload => (c.media_uploads_per_second, c.media_uploads_burst),
            Action::Pusher => (c.pushers_per_second, c.pushers_burst),
            Action::UiaFailure => (c.uia_failures_per_second, c.uia_failures_burst),
        }
    }

    /// Takes one token for `key`, or says how long to wait.
    pub fn check(&self, action: Action, key: &str) -> Result<(), Error> {
        self.with_bucket(action, key, |tokens| {
            if *tokens >= 1.0 {
                *tokens -= 1.0;
                true
            } else {
                false
            }
        })
    }

    /// For limits that count failures only: refuses while `key` has no token left, without
    /// taking one. A failure is then charged with [`RateLimiter::record_failure`], so
    /// successful attempts cost nothing.
    pub fn check_failures(&self, action: Action, key: &str) -> Result<(), Error> {
        self.with_bucket(action, key, |tokens| *tokens >= 1.0)
    }

    /// Charges one failure to `key` (see [`RateLimiter::check_failures`]).
    pub fn record_failure(&self, action: Action, key: &str) {
        let _ = self.with_bucket(action, key, |tokens| {
            *tokens = (*tokens - 1.0).max(0.0);
            true
        });
    }

    /// Refills `key`'s bucket and lets `take` decide (and spend); `Err` with the wait when it
    /// refuses.
    fn with_bucket(
        &self,
        action: Action,
        key: &str,
        take: impl FnOnce(&mut f64) -> bool,
    ) -> Result<(), Error> {
        if !self.config.enabled {
            return Ok(());
        }
        let (rate, burst) = self.rate(action);
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > 100_000 {
            // Forget full buckets so memory stays bounded under many distinct keys.
            buckets.retain(|(action, _), (tokens, at)| {
                let (rate, burst) = self.rate(*action);
                *tokens + at.elapsed().as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = buckets.entry((action, key.to_owned())).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(burst);
        *at = now;
        if take(tokens) {
            Ok(())
        } else {
            let wait_ms = ((1.0 - *tokens) / rate.max(f64::MIN_POSITIVE) * 1000.0).ceil();
            Err(Error::limit_exceeded(
                (wait_ms.min(u64::MAX as f64) as u64).max(1),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_allowed_then_limited() {
        let limiter = RateLimiter::new(RateLimitConfig {
            login_per_second: 0.001,
            login_burst: 3.0,
            ..Default::default()
        });
        for _ in 0..3 {
            limiter.check(Action::Login, "ip").unwrap();
        }
        let err = limiter.check(Action::Login, "ip").unwrap_err();
        assert_eq!(err.errcode(), "M_LIMIT_EXCEEDED");
        assert!(matches!(err, Error::LimitExceeded { retry_after_ms } if retry_after_ms > 0));
        limiter.check(Action::Login, "other ip").unwrap();
    }

    #[test]
    fn only_failures_spend_a_failure_bucket() {
        let limiter = RateLimiter::new(RateLimitConfig {
            login_failures_per_second: 0.001,
            login_failures_burst: 2.0,
            ..Default::default()
        });
        for _ in 0..10 {
            limiter.check_failures(Action::LoginFailure, "u a").unwrap();
        }
        limiter.record_failure(Action::LoginFailure, "u a");
        limiter.check_failures(Action::LoginFailure, "u a").unwrap();
        limiter.record_failure(Action::LoginFailure, "u a");
        let err = limiter.check_failures(Action::LoginFailure, "u a").unwrap_err();
        assert_eq!(err.errcode(), "M_LIMIT_EXCEEDED");
        limiter.check_failures(Action::LoginFailure, "u b").unwrap();
    }

    #[test]
    fn disabled_limits_refuse_nothing() {
        let limiter = RateLimiter::new(RateLimitConfig {
            enabled: false,
            joins_burst: 0.0,
            ..Default::default()
        });
        limiter.check(Action::Join, "u").unwrap();
    }
}
