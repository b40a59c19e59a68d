//! Hearth, a Matrix homeserver. See ARCHITECTURE.md for the map.

pub mod admin;
pub mod api;
pub mod at_rest;
pub mod clock;
pub mod config;
pub mod e2ee;
pub mod error;
pub mod federation;
pub mod filter;
pub mod listener;

pub use error::Error;
pub mod media;
pub mod push;
pub mod ratelimit;
pub mod rooms;
pub mod search;
pub mod services;
pub mod store;
pub mod stream;
pub mod sync;
pub mod users;
pub mod util;

use std::sync::Arc;

use base64::{Engine, engine::general_purpose::STANDARD};
use hearth_federation::SigningKey;

use crate::{config::Config, services::Services, store::Store, sync::notifier::LocalNotifier};

/// Opens storage, loads (or creates) the signing key, and assembles the services.
pub async fn build(config: Config) -> anyhow::Result<Services> {
    federation::tls::install_default_provider();
    let store = Store::connect(&config.database_url(), config.database.max_connections).await?;
    // Every stored user and room ID carries the server name: a database is bound to one.
    let stored_name = store
        .setting_or_insert("server_name", &config.server_name)
        .await?;
    if stored_name != config.server_name {
        anyhow::bail!(
            "the database belongs to server_name {stored_name:?}, but the config says {:?}; \
             a server name cannot change",
            config.server_name
        );
    }
    if !config.push.ca_files.is_empty() {
        // Read now so that a bad file stops start-up; the gateway client reads them again.
        federation::tls::client_config(true, &config.push.ca_files, "push.ca_files")?;
    }
    let at_rest_key = at_rest::load_server_key(&config)?;
    let sealed_rooms = store.load_at_rest_keys(&at_rest_key).await?;
    tracing::info!(sealed_rooms, "at-rest keys loaded");
    let signing_key = load_signing_key(&store).await?;
    tracing::info!(server_name = %config.server_name, key_id = %signing_key.key_id(), backend = ?store.backend(), "storage ready");
    let svc = Services::new(config, store, signing_key, Arc::new(LocalNotifier::default()));
    sync::engine::SyncEngine::start(&svc).await?;
    federation::init(&svc).await?;
    svc.media.init().map_err(|e| {
        anyhow::anyhow!(
            "cannot create the media directory {}: {e}",
            svc.config.media_path().display()
        )
    })?;
    search::Search::start(&svc).await?;
    tokio::spawn(push::retention::run(svc.clone()));
    Ok(svc)
}

/// The server's signing key, generated and stored on first start.
async fn load_signing_key(store: &Store) -> anyhow::Result<SigningKey> {
    let (key_id, pkcs8) = match store.signing_key().await? {
        Some(found) => found,
        None => {
            let version = util::random_string(6);
            let key = SigningKey::generate(&version)?;
            store
                .insert_signing_key(&key.key_id(), &STANDARD.encode(key.pkcs8()), util::now_ms())
                .await?
        }
    };
    let version = key_id
        .strip_prefix("ed25519:")
        .ok_or_else(|| anyhow::anyhow!("stored key {key_id} is not ed25519"))?;
    Ok(SigningKey::from_pkcs8(&STANDARD.decode(pkcs8)?, version)?)
}

/// Expires the current signing key (it stays published in `old_verify_keys`) and stores a new
/// one, which a (re)started server signs with. Returns the new key ID.
pub async fn rotate_signing_key(config: &Config) -> anyhow::Result<String> {
    let store = Store::connect(&config.database_url(), config.database.max_connections).await?;
    let key = SigningKey::generate(&util::random_string(6))?;
    store
        .rotate_signing_key(&key.key_id(), &STANDARD.encode(key.pkcs8()), util::now_ms())
        .await?;
    Ok(key.key_id())
}

/// Re-wraps every search-enabled room's data key under a new server key (events are not
/// rewritten). The new key comes from `new_key_file`; without one, a new key is generated and
/// replaces the configured key file (the old one kept as `<file>.previous`), which only works
/// when the key is read from a file. Returns how many room keys were re-wrapped.
pub async fn rotate_at_rest_key(
    config: &Config,
    new_key_file: Option<&std::path::Path>,
) -> anyhow::Result<usize> {
    let old = at_rest::load_server_key(config)?;
    let store = Store::connect(&config.database_url(), config.database.max_connections).await?;
    if let Some(path) = new_key_file {
        let new = at_rest::Key::read_file(path)?;
        let count = store.rewrap_at_rest_keys(&old, &new).await?;
        tracing::info!(
            count,
            new_key = %path.display(),
            "room keys re-wrapped; configure the new key (privacy.at_rest_key_file) before the next start"
        );
        return Ok(count);
    }
    if config.privacy.at_rest_key.is_some() {
        anyhow::bail!("the at-rest key comes from the environment or config: pass --new-key-file");
    }
    let path = config
        .privacy
        .at_rest_key_file
        .clone()
        .unwrap_or_else(|| config.data_dir.join("at_rest.key"));
    // The new key is on disk before the database uses it: a crash in between leaves it in
    // `<file>.new`, which the error on the next start points to.
    let pending = path.with_extension("new");
    let new = at_rest::Key::generate();
    new.write_file(&pending)?;
    let count = store.rewrap_at_rest_keys(&old, &new).await?;
    old.write_file(&path.with_extension("previous"))?;
    std::fs::rename(&pending, &path).map_err(|e| {
        anyhow::anyhow!(
            "the database now uses {}; move it to {}: {e}",
            pending.display(),
            path.display()
        )
    })?;
    Ok(count)
}

/// Starts the federation listener (HTTPS, TLS 1.3 only) when federation is enabled. The port is
/// bound before this returns, so a taken port stops start-up.
fn serve_federation(svc: &Services) -> anyhow::Result<()> {
    let fed = &svc.config.federation;
    if !fed.enabled {
        return Ok(());
    }
    let (Some(cert), Some(key)) = (&fed.tls_certificate, &fed.tls_private_key) else {
        anyhow::bail!("federation.enabled needs federation.tls_certificate and federation.tls_private_key");
    };
    let tls = federation::tls::server_config(cert, key)?;
    let listener = std::net::TcpListener::bind(fed.listen)
        .map_err(|e| anyhow::anyhow!("cannot listen on federation.listen {}: {e}", fed.listen))?;
    listener.set_nonblocking(true)?;
    tracing::info!(address = %listener.local_addr()?, "federation listening (TLS 1.3)");
    let server = axum_server::from_tcp_rustls(
        listener,
        axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(tls)),
    )?;
    let app = api::federation::router(svc.clone());
    tokio::spawn(async move {
        if let Err(error) = server
            .serve(app.into_make_service_with_connect_info::<std::net::SocketAddr>())
            .await
        {
            tracing::error!(%error, "federation listener stopped");
        }
    });
    Ok(())
}

/// Serves the Client-Server API (and the federation listener) until the process is stopped.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let listen = config.listen;
    let svc = build(config).await?;
    serve_federation(&svc)?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    // A target of its own, so that any log filter can keep this line (the conformance harness
    // waits for it).
    tracing::info!(target: "hearth::listening", address = %listener.local_addr()?, "listening");
    listener::serve(listener, api::router(svc), shutdown_signal()).await;
    Ok(())
}

/// Ctrl-C or SIGTERM (what service managers send): stop accepting, finish requests in flight.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
    tracing::info!("shutting down");
    // Long-polling syncs would hold the shutdown for their whole timeout; give requests in
    // flight a few seconds, then go (everything written is already committed).
    tokio::spawn(async {
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        tracing::info!("requests still open after 5 s; exiting");
        std::process::exit(0);
    });
}
