//! Server-to-server protocol pieces for Hearth, without a database.
//!
//! The server's ed25519 signing key ([`keys`]) and the PDU pipeline that hashes, signs and
//! identifies events per room version ([`pdu`]); server key responses ([`server_keys`]),
//! X-Matrix request authentication ([`request_auth`]) and server discovery ([`discovery`], with
//! its network lookups behind a trait). Canonical JSON, hashing, signing, redaction, the
//! authorization rules and the X-Matrix header come from ruma; this crate wires them to
//! Hearth's types.

pub mod discovery;
pub mod keys;
pub mod pdu;
pub mod pdu_checks;
pub mod request_auth;
pub mod room_version;
pub mod server_keys;

pub use keys::SigningKey;
pub use pdu::{Pdu, PduError};
pub use room_version::{DEFAULT_ROOM_VERSION, SUPPORTED_ROOM_VERSIONS, rules_for};
