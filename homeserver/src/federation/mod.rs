//! The stateful half of federation: this server's keys as published, other servers' keys
//! (fetched, verified, cached in the database, and relayed as a notary), X-Matrix verification
//! of incoming requests, the outbound client, and the TLS listener's configuration. The
//! protocol pieces without state are in the `hearth-federation` crate.

pub mod acl;
pub mod answers;
pub mod auth;
pub mod backfill;
pub mod client;
pub mod inbound;
#[cfg(test)]
mod inbound_tests;
pub mod keys;
pub mod lookup;
pub mod media;
pub mod membership;
pub mod outbound;
pub mod pending;
pub mod reads;
pub mod remote;
pub mod remote_membership;
pub mod resolve;
pub mod sender;
pub mod tls;
pub mod transactions;

use std::{
    collections::HashMap,
    sync::{Mutex, OnceLock, RwLock},
    time::Instant,
};

use base64::{Engine, engine::general_purpose::STANDARD};
use hearth_federation::{SigningKey, server_keys::OldKey};

pub use client::{FedError, FederationClient};

use crate::{Error, error::Result, services::Services};

/// Federation state kept in `Services`.
#[derive(Default)]
pub struct Federation {
    client: OnceLock<FederationClient>,
    /// Keys this server used before, published in `old_verify_keys`.
    old_keys: RwLock<Vec<OldKey>>,
    /// When each server's keys were last fetched (fetches of one server are spaced out).
    last_fetch: Mutex<HashMap<String, Instant>>,
    /// The outbound transaction queue.
    pub sender: sender::Sender,
    /// Rooms whose pending PDUs are being tried again.
    pub pending: pending::Retrying,
    /// Backfills in flight and remembered failures.
    pub backfill: backfill::Backfilling,
}

impl Federation {
    /// The outbound client; an error when federation is off.
    pub fn client(&self) -> Result<&FederationClient> {
        self.client
            .get()
            .ok_or_else(|| Error::forbidden("Federation is disabled on this server"))
    }

    pub fn old_keys(&self) -> Vec<OldKey> {
        self.old_keys.read().expect("old keys lock").clone()
    }
}

/// Loads the rotated-out keys and, when federation is on, builds the outbound client (an error
/// for unreadable CA files).
pub async fn init(svc: &Services) -> anyhow::Result<()> {
    let mut old = Vec::new();
    for (key_id, pkcs8, expired_ts) in svc.store.old_signing_keys().await? {
        let version = key_id.strip_prefix("ed25519:").unwrap_or(&key_id);
        let key = SigningKey::from_pkcs8(&STANDARD.decode(pkcs8)?, version)?;
        old.push(OldKey {
            key_id,
            public_key: key.public_key_base64(),
            expired_ts,
        });
    }
    *svc.federation.old_keys.write().expect("old keys lock") = old;
    if svc.config.federation.enabled {
        let origin = ruma::ServerName::parse(svc.server_name())?;
        let client = FederationClient::new(origin, &svc.config.federation)?;
        let _ = svc.federation.client.set(client);
        sender::start(svc).await?;
        pending::start(svc);
    }
    Ok(())
}
