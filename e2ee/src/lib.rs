//! Hearth's end-to-end encryption crate.
//!
//! Free of any database and of any HTTP server: the homeserver uses the checks in [`verify`]
//! (signatures on device and cross-signing keys, the shape of Megolm ciphertext); tests, tools and
//! `hearth-bench` use the client-side [`Device`] built on vodozemac (sans-IO: it produces request
//! bodies and consumes responses) and the transport-generic [`E2eeClient`] driver. The crate
//! builds for `wasm32-unknown-unknown` (`scripts/e2ee-wasm-check.sh`); the `http` feature
//! (a reqwest [`Transport`]) is for native targets.

pub mod client;
pub mod device;
#[cfg(feature = "http")]
pub mod http;
pub mod verify;

pub use client::{ClientError, E2eeClient, Transport};
pub use device::{
    DecryptedEvent, DecryptedToDevice, Device, DeviceKeys, Error, MEGOLM_ALGORITHM, OLM_ALGORITHM,
    SyncChanges,
};
