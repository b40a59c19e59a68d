//! Hearth's end-to-end encryption crate.
//!
//! Free of any database and of any HTTP server: the homeserver uses the checks in [`verify`]
//! (signatures on device and cross-signing keys, the shape of Megolm ciphertext); tests, tools and
//! `hearth-bench` use the client-side device built on vodozemac.

pub mod verify;
