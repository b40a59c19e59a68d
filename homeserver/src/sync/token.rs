//! Stream tokens: `s<events>_<account data>`, positions in each stream the server keeps.

use crate::error::{ApiError, ApiResult};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamToken {
    pub events: i64,
    pub account_data: i64,
}

impl StreamToken {
    pub fn parse(token: &str) -> ApiResult<Self> {
        let invalid = || ApiError::invalid_param("Invalid stream token");
        let rest = token.strip_prefix('s').ok_or_else(invalid)?;
        let mut parts = rest.split('_');
        let events = parts
            .next()
            .and_then(|p| p.parse().ok())
            .filter(|n: &i64| *n >= 0)
            .ok_or_else(invalid)?;
        let account_data = match parts.next() {
            Some(p) => p.parse().ok().filter(|n: &i64| *n >= 0).ok_or_else(invalid)?,
            None => 0,
        };
        if parts.next().is_some() {
            return Err(invalid());
        }
        Ok(Self { events, account_data })
    }

    /// A token pointing at an event stream position (for pagination), keeping the rest.
    pub fn at_events(self, events: i64) -> Self {
        Self { events, ..self }
    }
}

impl std::fmt::Display for StreamToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s{}_{}", self.events, self.account_data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        let t = StreamToken {
            events: 42,
            account_data: 7,
        };
        assert_eq!(StreamToken::parse(&t.to_string()).unwrap(), t);
        assert_eq!(
            StreamToken::parse("s5").unwrap(),
            StreamToken {
                events: 5,
                account_data: 0
            }
        );
    }

    #[test]
    fn garbage_tokens_are_refused() {
        for bad in ["", "x1_2", "s", "s-1_0", "s1_2_3", "s1_a"] {
            assert_eq!(
                StreamToken::parse(bad).unwrap_err().errcode,
                "M_INVALID_PARAM",
                "{bad}"
            );
        }
    }
}
