//! Stream tokens: `s<events>_<account data>_<receipts>_<typing>_<presence>_<to-device>_<device
//! lists>`, a position in each stream the server keeps. Trailing positions may be left out (read as 0).

use crate::{
    error::{Error, Result},
    services::Services,
};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct StreamToken {
    pub events: i64,
    pub account_data: i64,
    pub receipts: i64,
    pub typing: i64,
    pub presence: i64,
    /// The newest to-device message the holder has seen (acknowledged by syncing with it).
    pub to_device: i64,
    pub device_lists: i64,
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
            to_device: svc.store.max_to_device_stream().await?,
            device_lists: svc.store.max_device_lists_stream().await?,
        })
    }

    pub fn parse(token: &str) -> Result<Self> {
        let invalid = || Error::invalid_param("Invalid stream token");
        let rest = token.strip_prefix('s').ok_or_else(invalid)?;
        let mut positions = [0i64; 7];
        let parts: Vec<&str> = rest.split('_').collect();
        if parts.len() > positions.len() {
            return Err(invalid());
        }
        // Only the events position may be negative: backfilled events sit below 0.
        for (i, (slot, part)) in positions.iter_mut().zip(parts).enumerate() {
            *slot = part
                .parse()
                .ok()
                .filter(|n: &i64| *n >= 0 || (i == 0 && *n >= crate::rooms::access::FLOOR))
                .ok_or_else(invalid)?;
        }
        let [
            events,
            account_data,
            receipts,
            typing,
            presence,
            to_device,
            device_lists,
        ] = positions;
        Ok(Self {
            events,
            account_data,
            receipts,
            typing,
            presence,
            to_device,
            device_lists,
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
            "s{}_{}_{}_{}_{}_{}_{}",
            self.events,
            self.account_data,
            self.receipts,
            self.typing,
            self.presence,
            self.to_device,
            self.device_lists
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
            to_device: 11,
            device_lists: 12,
        };
        assert_eq!(StreamToken::parse(&t.to_string()).unwrap(), t);
        assert_eq!(
            StreamToken::parse("s5").unwrap(),
            StreamToken {
                events: 5,
                ..Default::default()
            }
        );
        // Tokens from before the to-device and device list streams still parse.
        assert_eq!(StreamToken::parse("s1_2_3_4_5").unwrap().to_device, 0);
    }

    #[test]
    fn garbage_tokens_are_refused() {
        for bad in ["", "x1_2", "s", "s0_-1", "s1_2_3_4_5_6_7_8", "s1_a"] {
            assert_eq!(
                StreamToken::parse(bad).unwrap_err().errcode(),
                "M_INVALID_PARAM",
                "{bad}"
            );
        }
    }
}
