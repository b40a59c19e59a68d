//! The `hearth` command.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use hearth::config::Config;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "hearth", version, about = "Hearth, a Matrix homeserver")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the homeserver.
    Serve {
        /// TOML configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Development defaults: localhost:8008, SQLite in ./hearth-data, open registration.
        #[arg(long, conflicts_with = "config")]
        dev: bool,
    },
    /// Print a commented configuration file for a new server.
    GenerateConfig {
        #[arg(long)]
        server_name: String,
    },
    /// Manage the server's signing keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Manage the search index.
    Search {
        #[command(subcommand)]
        command: SearchCommand,
    },
    /// Manage server admins.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Write a self-signed TLS certificate and key for the federation listener (local use).
    GenerateDevCert {
        #[arg(long)]
        server_name: String,
        /// Where the PEM certificate goes.
        #[arg(long, default_value = "federation.crt")]
        cert: PathBuf,
        /// Where the PEM private key goes (mode 0600).
        #[arg(long, default_value = "federation.key")]
        key: PathBuf,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Start signing with a new key; the current one stays published in `old_verify_keys`.
    /// Restart a running server afterwards.
    Rotate {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Re-wrap every search-enabled room's data key under a new at-rest server key (events are
    /// not rewritten). Stop the server first; start it again with the new key.
    RotateAtRest {
        #[arg(long, short)]
        config: PathBuf,
        /// The new key (base64 of 32 bytes). Without it, a new key is generated and replaces
        /// the configured key file, the old one kept as `<file>.previous`.
        #[arg(long)]
        new_key_file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Make a local user a server admin (spec/admin.md).
    Grant {
        #[arg(long, short)]
        config: PathBuf,
        user_id: String,
    },
}

#[derive(Subcommand)]
enum SearchCommand {
    /// Delete the search index and rebuild it from the event log. The server must be stopped.
    Reindex {
        #[arg(long, short)]
        config: PathBuf,
    },
}

/// mimalloc: glibc's malloc took a fifth to a quarter of the server's CPU under load (its
/// fragmented heap searched and consolidated on allocations of a kilobyte or more: one message
/// to 19,000 streams, a thousand messages a second to 100 receivers). The price: an idle server
/// holds ~43 MiB instead of ~27 (arenas committed up front), a held long-poll ~34 KiB of RSS
/// instead of ~30.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc returns a freed page to the system a second after it was freed (batched, so that a
/// busy server does not pay a system call per page), but only from inside a later allocation.
/// After a burst (thousands of connections' initial syncs, then nothing but held waits) the
/// workers go quiet, and the burst's garbage stayed resident until the next keepalive 30 s
/// later: 6 KiB per held connection, of 23, with 19,000 held streams. Once a second, this
/// thread lets that purge run.
fn start_purging_freed_memory() {
    let started = std::thread::Builder::new().name("hearth-purge".into()).spawn(|| {
        loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
            // SAFETY: takes no pointers; collects this thread's (empty) heap and purges the
            // process's freed pages whose delay has passed.
            unsafe { libmimalloc_sys::mi_collect(false) };
        }
    });
    if let Err(e) = started {
        tracing::warn!(error = %e, "cannot start the thread returning freed memory");
    }
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,ruma_state_res=warn")),
        )
        .init();
    match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime.block_on(run()),
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::GenerateConfig { server_name } => {
            if let Err(e) = ruma::ServerName::parse(&server_name) {
                tracing::error!("invalid server name {server_name:?}: {e}");
                return std::process::ExitCode::from(2);
            }
            use std::io::Write;
            let _ = std::io::stdout().write_all(Config::generate(&server_name).as_bytes());
            Ok(())
        }
        Command::Keys {
            command: KeysCommand::Rotate { config },
        } => match Config::load(Some(&config), false) {
            Ok(config) => hearth::rotate_signing_key(&config).await.map(|key_id| {
                tracing::info!(%key_id, "new signing key stored; restart the server to use it");
            }),
            Err(e) => {
                tracing::error!("{e}");
                return std::process::ExitCode::from(2);
            }
        },
        Command::Search {
            command: SearchCommand::Reindex { config },
        } => match Config::load(Some(&config), false) {
            Ok(config) => hearth::search::reindex(config).await.map(|position| {
                tracing::info!(position, "search index rebuilt from the event log");
            }),
            Err(e) => {
                tracing::error!("{e}");
                return std::process::ExitCode::from(2);
            }
        },
        Command::Keys {
            command: KeysCommand::RotateAtRest { config, new_key_file },
        } => match Config::load(Some(&config), false) {
            Ok(config) => hearth::rotate_at_rest_key(&config, new_key_file.as_deref())
                .await
                .map(|count| tracing::info!(count, "at-rest room keys re-wrapped under the new key")),
            Err(e) => {
                tracing::error!("{e}");
                return std::process::ExitCode::from(2);
            }
        },
        Command::Admin {
            command: AdminCommand::Grant { config, user_id },
        } => match Config::load(Some(&config), false) {
            Ok(config) => hearth::admin::grant(&config, &user_id)
                .await
                .map(|()| tracing::info!(%user_id, "server admin granted")),
            Err(e) => {
                tracing::error!("{e}");
                return std::process::ExitCode::from(2);
            }
        },
        Command::GenerateDevCert {
            server_name,
            cert,
            key,
        } => hearth::federation::tls::generate_dev_cert(&server_name, &cert, &key).map(|()| {
            tracing::info!(cert = %cert.display(), key = %key.display(), "self-signed certificate written");
        }),
        Command::Serve { config, dev } => match Config::load(config.as_deref(), dev) {
            Ok(config) => {
                start_purging_freed_memory();
                hearth::serve(config).await
            }
            Err(e) => {
                tracing::error!("{e}");
                return std::process::ExitCode::from(2);
            }
        },
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
