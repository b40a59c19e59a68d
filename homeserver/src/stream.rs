//! Stream tokens: `s<events>_<account data>_<receipts>_<typing>_<presence>`, a position in each
//! stream the server keeps. Trailing positions may be left out (read as 0).

use crate::{
    error::{Error, Result},
    services::Services,
};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamToken {
    pub events: i64,
    pub account_data: i64,
    pub receipts: i64,
    pub typing: i64,
    pub presence: i64,
}

impl StreamToken {
    /// The newest position of every stream. Read before the data it covers, so that data
    /// committed meanwhile lands after the token rather than being skipped.
    pub async fn current(svc: &Services) -> Result<Self> {
        Ok(Self {
            events: svc.store.max_stream_ordering().await?,
            account_data: svc.store.max_account_data_stream().await?,
            receipts: svc.store.max_receipts_stream().await?,
            typing: svc.typing.current_serial(),
            presence: svc.store.max_presence_stream().await?,
        })
    }

    pub fn parse(token: &str) -> Result<Self> {
        let invalid = || Error::invalid_param("Invalid stream token");
        let rest = token.strip_prefix('s').ok_or_else(invalid)?;
        let mut positions = [0i64; 5];
        let parts: Vec<&str> = rest.split('_').collect();
        if parts.len() > positions.len() {
            return Err(invalid());
        }
        for (slot, part) in positions.iter_mut().zip(parts) {
            *slot = part.parse().ok().filter(|n: &i64| *n >= 0).ok_or_else(invalid)?;
        }
        let [events, account_data, receipts, typing, presence] = positions;
        Ok(Self {
            events,
            account_data,
            receipts,
            typing,
            presence,
        })
    }

    /// A token pointing at an event stream position (for pagination), keeping the rest.
    pub fn at_events(self, events: i64) -> Self {
        Self { events, ..self }
    }
}

impl std::fmt::Display for StreamToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "s{}_{}_{}_{}_{}",
            self.events, self.account_data, self.receipts, self.typing, self.presence
        )
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
            receipts: 3,
            typing: 9,
            presence: 1,
        };
        assert_eq!(StreamToken::parse(&t.to_string()).unwrap(), t);
        assert_eq!(
            StreamToken::parse("s5").unwrap(),
            StreamToken {
                events: 5,
                ..Default::default()
            }
        );
    }

    #[test]
    fn garbage_tokens_are_refused() {
        for bad in ["", "x1_2", "s", "s-1_0", "s1_2_3_4_5_6", "s1_a"] {
            assert_eq!(
                StreamToken::parse(bad).unwrap_err().errcode(),
                "M_INVALID_PARAM",
                "{bad}"
            );
        }
    }
}
