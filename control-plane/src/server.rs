//! `tollgate serve`: secrets, storage, HTTP listener, graceful shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

use crate::error::Error;
use crate::http::{self, AppState};
use crate::metrics::Metrics;
use crate::secrets::{self, BearerToken, SecretKind, Source};
use crate::store::{Store, DATABASE_FILE, DEFAULT_PAGE_KEYS};

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "TOLLGATE_LISTEN", default_value = "127.0.0.1:7100")]
    pub listen: SocketAddr,
    /// Key hashes per snapshot page; a larger catalogue is served in pages (`next` cursors).
    #[arg(long, env = "TOLLGATE_SNAPSHOT_PAGE_KEYS", default_value_t = DEFAULT_PAGE_KEYS)]
    pub snapshot_page_keys: usize,
    /// Set from the global `--data-dir` (env TOLLGATE_DATA_DIR, default ./.tollgate).
    #[arg(skip)]
    pub data_dir: PathBuf,
}

pub async fn serve(args: ServeArgs) -> Result<(), Error> {
    secrets::ensure_data_dir(&args.data_dir)?;
    let mut values = Vec::new();
    for kind in SecretKind::ALL {
        let (value, source) = secrets::load_or_generate(kind, &args.data_dir)?;
        match source {
            Source::Env => tracing::info!(secret = kind.file_name(), "from {}", kind.env_var()),
            Source::File(path) => {
                tracing::info!(secret = kind.file_name(), "from {}", path.display())
            }
            Source::Generated(path) => {
                // Printed on stdout as well: the operator needs to know where to look.
                println!("generated {} in {}", kind.file_name(), path.display());
                tracing::info!(
                    secret = kind.file_name(),
                    "generated into {}",
                    path.display()
                );
            }
        }
        values.push(value);
    }
    let [admin_token, gateway_token, snapshot_secret] =
        <[String; 3]>::try_from(values).map_err(|_| Error::Internal("secrets".into()))?;
    if admin_token == gateway_token {
        return Err(Error::Internal(
            "the admin token and the gateway token must differ".into(),
        ));
    }

    let db_path = args.data_dir.join(DATABASE_FILE);
    let store = Store::open(
        &db_path,
        snapshot_secret.into_bytes(),
        args.snapshot_page_keys,
    )?;
    tracing::info!(
        database = %db_path.display(),
        revision = store.snapshot().revision,
        "catalogue opened"
    );

    let (stop, shutdown) = watch::channel(false);
    let state = AppState {
        store: Arc::clone(&store),
        admin_token: BearerToken::new(&admin_token),
        gateway_token: BearerToken::new(&gateway_token),
        metrics: Arc::new(Metrics::new()),
        shutdown,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| Error::Internal(format!("listening on {}: {e}", args.listen)))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::Internal(format!("listener address: {e}")))?;
    println!("tollgate control plane listening on http://{local}");
    tracing::info!(%local, "listening");
    axum::serve(listener, http::router(state))
        .with_graceful_shutdown(async move {
            stop_signal().await;
            tracing::info!("stopping");
            let _ = stop.send(true);
        })
        .await
        .map_err(|e| Error::Internal(format!("server: {e}")))
}

async fn stop_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
