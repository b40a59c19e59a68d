//! PLACEHOLDER owned by the `fed-rooms` helper: their incoming PDU pipeline replaces this file
//! at merge. Only the signature below is the seam `/send` calls.

use crate::services::Services;

/// Outcome of one PDU of a transaction, as `/send` reports it.
pub struct PduResult {
    pub event_id: Option<ruma::OwnedEventId>,
    pub error: Option<String>,
}

pub async fn handle_incoming_pdu(
    _svc: &Services,
    _origin: &ruma::ServerName,
    _pdu: &serde_json::value::RawValue,
) -> PduResult {
    // placeholder: returns an error result
    PduResult {
        event_id: None,
        error: Some("Incoming PDUs are not handled yet".to_owned()),
    }
}
