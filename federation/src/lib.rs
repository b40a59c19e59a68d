//! Server-to-server protocol pieces for Hearth.
//!
//! Today this holds what locally created events already need so that they can later be sent to
//! other servers unchanged: the server's ed25519 signing key ([`keys`]) and the PDU pipeline that
//! hashes, signs and identifies events per room version ([`pdu`]). Canonical JSON, hashing,
//! signing, redaction and the authorization rules come from ruma; this crate only wires them to
//! Hearth's types.

pub mod keys;
pub mod pdu;
pub mod room_version;

pub use keys::SigningKey;
pub use pdu::{Pdu, PduError};
pub use room_version::{DEFAULT_ROOM_VERSION, SUPPORTED_ROOM_VERSIONS, rules_for};
