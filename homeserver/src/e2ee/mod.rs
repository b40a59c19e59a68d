//! End-to-end encryption, the server's side: what clients store here without the server being
//! able to read it.

pub mod backup;
