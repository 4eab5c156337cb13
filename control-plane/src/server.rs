//! `tollgate serve`: secrets, storage, HTTP listener, graceful shutdown.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tollgate_core::fleet::{Fallback, FleetSettings};
use tollgate_core::signing::SnapshotSigningKey;

use crate::data_dir_lock::{self, DataDirLock};
use crate::error::Error;
use crate::fleet::Broker;
use crate::http::throttle::TokenThrottle;
use crate::http::{self, AppState};
use crate::listener::{self, ConnectionLimits};
use crate::metrics::Metrics;
use crate::secrets::{self, BearerToken, SecretKind, Source};
use crate::store::{
    tokens, Database, SnapshotOptions, Store, DATABASE_FILE, DEFAULT_PAGE_KEYS,
    DEFAULT_RETAIN_SECONDS,
};
use crate::tokens::{
    IssuerConfig, SigningKeys, DEFAULT_GATEWAY_AUDIENCE, DEFAULT_MANAGEMENT_AUDIENCE,
    DEFAULT_TOKEN_LIFETIME_SECONDS,
};

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "TOLLGATE_LISTEN", default_value = "127.0.0.1:7100")]
    pub listen: SocketAddr,
    /// Key hashes per snapshot page; a larger catalogue is served in pages (`next` cursors).
    #[arg(long, env = "TOLLGATE_SNAPSHOT_PAGE_KEYS", default_value_t = DEFAULT_PAGE_KEYS)]
    pub snapshot_page_keys: usize,
    /// Seconds a superseded snapshot revision stays servable: a gateway fetching pages finishes
    /// the revision it started on, and one that held it gets a delta from it.
    #[arg(long, env = "TOLLGATE_SNAPSHOT_RETAIN_SECONDS", default_value_t = DEFAULT_RETAIN_SECONDS as u64,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub snapshot_retain_seconds: u64,
    /// Seconds between background checks of the stored snapshot against the catalogue (one also
    /// runs at start); a bucket found differing is re-rendered and counted in `/metrics`.
    #[arg(long, env = "TOLLGATE_CONSISTENCY_CHECK_INTERVAL", default_value_t = 3600,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub consistency_check_interval: u64,
    /// The `iss` of the tokens `/oauth/token` issues (default: http://<listen address>).
    #[arg(long, env = "TOLLGATE_ISSUER")]
    pub issuer: Option<String>,
    /// The `aud` of client versions' tokens, which gateways accept.
    #[arg(long, env = "TOLLGATE_GATEWAY_AUDIENCE", default_value = DEFAULT_GATEWAY_AUDIENCE)]
    pub gateway_audience: String,
    /// The `aud` of service accounts' tokens, which the management API accepts.
    #[arg(long, env = "TOLLGATE_MANAGEMENT_AUDIENCE", default_value = DEFAULT_MANAGEMENT_AUDIENCE)]
    pub management_audience: String,
    /// Seconds an issued token is valid; a retired signing key stays published this long
    /// (plus 30 s of clock leeway) after its rotation.
    #[arg(long, env = "TOLLGATE_TOKEN_LIFETIME", default_value_t = DEFAULT_TOKEN_LIFETIME_SECONDS,
        value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub token_lifetime: u64,
    /// Seconds a client has to send a request's headers; an HTTP/1.1 connection idle this long
    /// between requests is closed too.
    #[arg(long, env = "TOLLGATE_HEADER_READ_TIMEOUT", default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub header_read_timeout: u64,
    /// Seconds a client has to send a request's body once its headers are in (408 after).
    /// What the server then does is not cut off, so a 408 never hides a committed write.
    #[arg(long, env = "TOLLGATE_REQUEST_TIMEOUT", default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub request_timeout: u64,
    /// Connections served at once; more wait in the listen backlog until one closes. Keep it
    /// below the process's open-file limit (`ulimit -n`), which also counts the database.
    #[arg(long, env = "TOLLGATE_MAX_CONNECTIONS", default_value_t = 512,
        value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: u64,
    /// Token requests (`POST /oauth/token`) one source address may send a minute (IPv6: per
    /// /64); more answer 429.
    #[arg(long, env = "TOLLGATE_TOKEN_REQUESTS_PER_SOURCE", default_value_t = 120,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub token_requests_per_source: u32,
    /// Failed authentications one `client_id` may have a minute; after that its token requests
    /// answer 429 until the minute ends.
    #[arg(long, env = "TOLLGATE_TOKEN_FAILURES_PER_CLIENT", default_value_t = 10,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub token_failures_per_client: u32,
    /// Keeps the catalogue in this PostgreSQL database (`postgres://USER:PASS@HOST:PORT/DB`)
    /// instead of SQLite in the data directory; several replicas may share it. Its schema is
    /// migrated at start. Every replica must then be given the same TOLLGATE_ADMIN_TOKEN,
    /// TOLLGATE_GATEWAY_TOKEN, TOLLGATE_SNAPSHOT_SIGNING_KEY and TOLLGATE_SECRETS_KEY (at least
    /// 32 random characters; it seals the token signing keys stored in the database) in its
    /// environment: it refuses to start without them.
    #[arg(long = "database", env = "TOLLGATE_DATABASE_URL", value_name = "URL")]
    pub database: Option<String>,
    /// Counts every contract's limits for the whole fleet of gateways in this Redis
    /// (`redis://HOST:PORT[/DB]`), granting gateways units at `/gateway/v1/leases`; snapshots
    /// then say so. Without it each gateway counts alone.
    #[arg(long = "redis", env = "TOLLGATE_REDIS_URL", value_name = "URL")]
    pub redis: Option<String>,
    /// With --redis: what gateways do once their grants are spent while the broker or Redis
    /// is unreachable: `share` (each admits at most ⌊limit / gateways⌋ per window), `closed`
    /// (429) or `local` (each counts alone).
    #[arg(
        long,
        env = "TOLLGATE_FLEET_FALLBACK",
        default_value = "share",
        value_name = "POLICY"
    )]
    pub fleet_fallback: Fallback,
    /// Set from the global `--data-dir` (env TOLLGATE_DATA_DIR, default ./.tollgate).
    #[arg(skip)]
    pub data_dir: PathBuf,
}

pub async fn serve(args: ServeArgs) -> Result<(), Error> {
    secrets::ensure_data_dir(&args.data_dir)?;
    // Before anything in the directory is read or written; held until the process ends.
    let _lock = DataDirLock::acquire(&args.data_dir)?;
    tracing::info!(
        lock = %args.data_dir.join(data_dir_lock::LOCK_FILE).display(),
        "data directory locked for this process"
    );
    let database = match &args.database {
        Some(url) => Database::Postgres(Box::new(crate::store::parse_postgres_url(url)?)),
        None => Database::Sqlite(args.data_dir.join(DATABASE_FILE)),
    };
    let (values, signing_keys) = match database {
        // Replicas share their secrets and token signing keys: the environment and the database.
        Database::Postgres(_) => {
            let shared = secrets::shared_from_env()?;
            for kind in SecretKind::ALL {
                tracing::info!(secret = kind.file_name(), "from {}", kind.env_var());
            }
            tracing::info!(
                "token signing keys: in the database, sealed with {}",
                secrets::SECRETS_KEY_ENV
            );
            (
                shared.values.to_vec(),
                SigningKeys::sealed(shared.secrets_key),
            )
        }
        Database::Sqlite(_) => (
            data_dir_secrets(&args.data_dir)?,
            SigningKeys::load(&args.data_dir)?,
        ),
    };
    let signing_keys = Arc::new(signing_keys);
    let [admin_token, gateway_token, signing_seed] =
        <[String; 3]>::try_from(values).map_err(|_| Error::Internal("secrets".into()))?;
    if admin_token == gateway_token {
        return Err(Error::Internal(
            "the admin token and the gateway token must differ".into(),
        ));
    }
    let signing_key = SnapshotSigningKey::from_base64(&signing_seed).map_err(|e| {
        Error::Internal(format!(
            "the snapshot signing key ({} or {}) must be 32 random bytes as unpadded base64url: {e}",
            SecretKind::SnapshotSigningKey.env_var(),
            SecretKind::SnapshotSigningKey.path(&args.data_dir).display()
        ))
    })?;
    let (retired_env, retired_file) = secrets::RETIRED_SNAPSHOT_SECRET;
    if std::env::var_os(retired_env).is_some() || args.data_dir.join(retired_file).exists() {
        tracing::warn!(
            "{retired_env} / {retired_file} (HMAC snapshot signing) is no longer used: snapshots are \
             signed with the Ed25519 key {}; regenerate gateway configurations with `tollgate \
             envoy-config` and delete the old secret",
            SecretKind::SnapshotSigningKey.file_name()
        );
    }
    tracing::info!(public_key = %signing_key.public_key(), "snapshot signing key ready");

    if args.gateway_audience == args.management_audience {
        return Err(Error::Internal(
            "the gateway and management audiences must differ".into(),
        ));
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| Error::Internal(format!("listening on {}: {e}", args.listen)))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::Internal(format!("listener address: {e}")))?;
    let issuer = Arc::new(IssuerConfig {
        issuer: args
            .issuer
            .clone()
            .unwrap_or_else(|| format!("http://{local}")),
        gateway_audience: args.gateway_audience.clone(),
        management_audience: args.management_audience.clone(),
        token_lifetime_seconds: args.token_lifetime,
    });

    // Connects lazily: a Redis that is down at start only makes grants answer 503.
    let fleet = args.redis.as_deref().map(Broker::connect).transpose()?;
    let fleet_settings = fleet.as_ref().map(|_| FleetSettings {
        fallback: args.fleet_fallback,
    });

    let store = {
        let (config, keys) = (Arc::clone(&issuer), Arc::clone(&signing_keys));
        let options = SnapshotOptions {
            page_keys: args.snapshot_page_keys,
            retain_seconds: args.snapshot_retain_seconds as i64,
        };
        let database = database.clone();
        // The PostgreSQL client blocks: opening runs beside the async workers.
        tokio::task::spawn_blocking(move || {
            Store::open(&database, signing_key, options, move |tx| {
                tokens::ensure_own_issuer(tx, &config, &keys)?;
                if crate::store::fleet::set(tx, fleet_settings)? {
                    tracing::info!(
                        ?fleet_settings,
                        "fleet setting changed: a new revision tells gateways"
                    );
                }
                Ok(())
            })
        })
        .await
        .map_err(|e| Error::Internal(format!("opening the catalogue: {e}")))??
    };
    tracing::info!(
        database = %database.describe(),
        revision = store.snapshot().revision,
        "catalogue opened"
    );

    match fleet_settings {
        Some(settings) => tracing::info!(
            fallback = settings.fallback.as_str(),
            "fleet-wide counting through Redis; gateways ask for leases"
        ),
        None => tracing::info!("counts per gateway (no --redis)"),
    }
    tracing::info!(issuer = %issuer.issuer, "token issuer ready");
    tokio::spawn(drop_expired_token_keys(Arc::clone(&store)));
    tokio::spawn(check_consistency(
        Arc::clone(&store),
        Duration::from_secs(args.consistency_check_interval),
    ));

    let (stop, shutdown) = watch::channel(false);
    let state = AppState {
        store: Arc::clone(&store),
        admin_token: BearerToken::new(&admin_token),
        gateway_token: BearerToken::new(&gateway_token),
        issuer,
        signing_keys,
        metrics: Arc::new(Metrics::new()),
        fleet: fleet.map(Arc::new),
        token_throttle: Arc::new(TokenThrottle::new(
            args.token_requests_per_source,
            args.token_failures_per_client,
        )),
        request_timeout: Duration::from_secs(args.request_timeout),
        shutdown,
    };
    println!("tollgate control plane listening on http://{local}");
    tracing::info!(%local, "listening");
    let limits = ConnectionLimits {
        max_connections: args.max_connections as usize,
        header_read_timeout: Duration::from_secs(args.header_read_timeout),
    };
    tracing::info!(
        max_connections = limits.max_connections,
        header_read_timeout_s = args.header_read_timeout,
        request_timeout_s = args.request_timeout,
        "connection limits"
    );
    listener::serve(listener, http::router(state), limits, async move {
        stop_signal().await;
        tracing::info!("stopping");
        let _ = stop.send(true);
    })
    .await;
    Ok(())
}

/// The secrets of a control plane on SQLite: each from its environment variable, else its file
/// in the data directory, else generated into that file.
fn data_dir_secrets(data_dir: &Path) -> Result<Vec<String>, Error> {
    let mut values = Vec::new();
    for kind in SecretKind::ALL {
        let (value, source) = secrets::load_or_generate(kind, data_dir)?;
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
    Ok(values)
}

/// Unpublishes retired signing keys once every token they signed has expired, and deletes
/// credentials at the end of their grace (their tokens stop at the gateways): checks once a
/// second and writes (moving the revision) only when something is due. The check is also what
/// keeps `/healthz` current: it is a read each second, and while the latest write failed on
/// storage an empty write follows it, so `/healthz` turns 200 again once writes work.
async fn drop_expired_token_keys(store: Arc<Store>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        if store.writes_failing() {
            match store.probe_write().await {
                Ok(()) => tracing::info!("storage accepts writes again"),
                Err(e) => tracing::warn!(error = %e, "storage still refuses writes"),
            }
        }
        let now = crate::store::unix_now();
        let due = store
            .read(|conn| {
                Ok((
                    tokens::next_key_drop(conn)?,
                    tokens::next_credentials_expiry(conn)?,
                ))
            })
            .await;
        let (keys_due, credentials_due) = match due {
            Ok((keys, credentials)) => (
                keys.is_some_and(|at| at <= now),
                credentials.is_some_and(|at| at <= now),
            ),
            Err(e) => {
                tracing::warn!(error = %e, "checking retired token keys and credentials");
                (false, false)
            }
        };
        if keys_due {
            match store.write(tokens::drop_expired_keys).await {
                Ok(n) => tracing::info!(keys = n, "retired token keys unpublished"),
                Err(e) => tracing::warn!(error = %e, "unpublishing retired token keys"),
            }
        }
        if credentials_due {
            match store.write(tokens::drop_expired_credentials).await {
                Ok(n) => tracing::info!(credentials = n, "credentials past their grace deleted"),
                Err(e) => tracing::warn!(error = %e, "deleting credentials past their grace"),
            }
        }
    }
}

/// Compares the stored snapshot buckets with the catalogue at start and then every `interval`,
/// in the background (the control plane serves meanwhile), repairing and counting any drift.
async fn check_consistency(store: Arc<Store>, interval: Duration) {
    loop {
        let checking = Arc::clone(&store);
        let started = std::time::Instant::now();
        match tokio::task::spawn_blocking(move || checking.check()).await {
            Ok(Ok(outcome)) => tracing::info!(
                revision = outcome.revision,
                drifted = outcome.drifted.len(),
                refused = outcome.refused.len(),
                ms = started.elapsed().as_millis() as u64,
                "stored snapshot checked against the catalogue"
            ),
            Ok(Err(e)) => tracing::warn!(error = %e, "checking the stored snapshot"),
            Err(e) => tracing::warn!(error = %e, "checking the stored snapshot"),
        }
        tokio::time::sleep(interval).await;
    }
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
