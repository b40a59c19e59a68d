//! Token-bucket rate limits per (action, user or IP).

use std::{collections::HashMap, sync::Mutex, time::Instant};

use crate::{config::RateLimitConfig, error::ApiError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Message,
    Login,
    Register,
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

    /// Takes one token for `key`, or says how long to wait.
    pub fn check(&self, action: Action, key: &str) -> Result<(), ApiError> {
        if !self.config.enabled {
            return Ok(());
        }
        let (rate, burst) = match action {
            Action::Message => (self.config.messages_per_second, self.config.messages_burst),
            Action::Login => (self.config.login_per_second, self.config.login_burst),
            Action::Register => (self.config.register_per_second, self.config.register_burst),
        };
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > 100_000 {
            // Forget full buckets so memory stays bounded under many distinct keys.
            buckets.retain(|_, (tokens, at)| *tokens + at.elapsed().as_secs_f64() * rate < burst);
        }
        let (tokens, at) = buckets.entry((action, key.to_owned())).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            let wait_ms = ((1.0 - *tokens) / rate.max(f64::MIN_POSITIVE) * 1000.0).ceil() as u64;
            Err(ApiError::limit_exceeded(wait_ms.max(1)))
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
        assert_eq!(err.errcode, "M_LIMIT_EXCEEDED");
        assert!(err.extra["retry_after_ms"].as_u64().unwrap() > 0);
        limiter.check(Action::Login, "other ip").unwrap();
    }
}
