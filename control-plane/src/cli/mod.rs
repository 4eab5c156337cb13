//! The `tollgate` command line: `serve` runs the service; every other command is a client of
//! its HTTP API, addressing things by their public names (`acme/gold/1`).

mod client;
mod output;
mod tokens;

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use serde_json::{json, Value};
use tollgate_core::signing::SnapshotSigningKey;
use tollgate_core::snapshot::{AuthMode, Routing};

use self::client::{ApiClient, ClientError};
use self::tokens::{IssuerCommand, ServiceAccountCommand, SubjectCommand, TokenKeyCommand};
use crate::catalogue::{ApplyReport, Catalogue};
use crate::domain::{parse_pair, period_from_str, VersionRef};
use crate::http::MAX_APPLY_BODY_BYTES;
use crate::model::{ApiVersion, CreateApiVersion, CreateContract, OfferedPlan, PlanChoice};
use crate::secrets::{read_secret, SecretKind};
use crate::server::{self, ServeArgs};

#[derive(Debug, Parser)]
#[command(
    name = "tollgate",
    version,
    about = "API management inside Envoy: control plane and CLI"
)]
pub struct Cli {
    /// The control plane the client commands talk to, http://host:port; also what
    /// `envoy-config` points the gateway at when no --control-plane is given.
    // Not global, so `serve --help` does not offer it: the client commands take it after their
    // name too (`ClientArgs`).
    #[arg(
        long,
        env = "TOLLGATE_SERVER",
        default_value = DEFAULT_SERVER,
        value_name = "URL"
    )]
    server: String,
    /// Client commands print the API's JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// Data directory: where `serve` keeps its database, secrets and lock, and where the other
    /// commands find the admin token and snapshot signing key when their variables are unset.
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_DATA_DIR",
        default_value = "./.tollgate",
        value_name = "DIR"
    )]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
    /// `--server` was on the command line before the subcommand (not from the environment).
    #[arg(skip)]
    server_given: bool,
}

impl Cli {
    /// Parses the process's arguments, exiting with clap's message on a mistake.
    pub fn from_command_line() -> Self {
        let matches = Cli::command().get_matches();
        let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        cli.server_given = matches.value_source("server") == Some(ValueSource::CommandLine);
        cli
    }
}

const DEFAULT_SERVER: &str = "http://127.0.0.1:7100";

/// `--server` and `--json` where they are given after a client command's name. Unset, the
/// values before it apply (`tollgate --json org list` and `tollgate org list --json` agree).
#[derive(Debug, Clone, Args)]
struct ClientArgs {
    /// The control plane to talk to, http://host:port (default: --server before the command's
    /// name, else TOLLGATE_SERVER, else http://127.0.0.1:7100).
    #[arg(long, global = true, value_name = "URL")]
    server: Option<String>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
}

/// A command run against a control plane through its API: its `--server`/`--json` and its verb.
#[derive(Debug, Args)]
struct Remote<C: Subcommand> {
    #[command(flatten)]
    args: ClientArgs,
    #[command(subcommand)]
    command: C,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the control plane.
    Serve(ServeArgs),
    /// Organizations.
    Org(Remote<OrgCommand>),
    /// Plans and plan versions.
    Plan(Remote<PlanCommand>),
    /// APIs and API versions.
    Api(Remote<ApiCommand>),
    /// Clients, client versions and their API keys.
    Client(Remote<ClientCommand>),
    /// Contracts between client versions and API versions.
    Contract(Remote<ContractCommand>),
    /// External token issuers gateways trust (Keycloak, Entra ID, Auth0…).
    Issuer(Remote<IssuerCommand>),
    /// The own token issuer's signing keys.
    TokenKey(Remote<TokenKeyCommand>),
    /// Service accounts: client credentials for management tokens.
    ServiceAccount(Remote<ServiceAccountCommand>),
    /// Converge the catalogue towards a YAML document (idempotent; never deletes).
    Apply {
        /// The catalogue file (YAML); `-` reads standard input.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print the whole catalogue as YAML that `apply` accepts.
    Export {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print a complete Envoy bootstrap for a live-mode gateway in front of one upstream.
    EnvoyConfig(EnvoyConfigArgs),
    /// Print the public key of the snapshot signing key (env TOLLGATE_SNAPSHOT_SIGNING_KEY or
    /// the data directory): what gateways trust.
    SnapshotPublicKey,
}

#[derive(Debug, Args)]
struct EnvoyConfigArgs {
    /// The built filter (`target/tollgate.wasm`).
    #[arg(long)]
    wasm: PathBuf,
    /// Address Envoy listens on, host:port.
    #[arg(long)]
    listen: String,
    /// The service behind the gateway, host:port.
    #[arg(long)]
    upstream: String,
    /// The control plane the gateway polls, http://host:port (default: the CLI's --server,
    /// TOLLGATE_SERVER, else http://127.0.0.1:7100). Repeat it for each replica of a control
    /// plane on PostgreSQL: all go into one Envoy cluster, health-checked on /healthz, and the
    /// gateway's calls go to the live ones.
    #[arg(long = "control-plane", value_name = "URL", action = clap::ArgAction::Append)]
    control_planes: Vec<String>,
    /// The control plane as the client commands name it; used only when no --control-plane is
    /// given, and refused beside one (the gateway's control planes are --control-plane).
    #[arg(long, value_name = "URL", conflicts_with = "control_planes")]
    server: Option<String>,
    /// Envoy worker threads; Envoy takes this on its command line, so it is printed there.
    #[arg(long, default_value_t = 2)]
    concurrency: u32,
    /// Envoy's admin interface: a unix socket of mode 0600 (`unix:PATH` or an absolute path; a
    /// relative one is in the directory Envoy starts in), or host:port for TCP, which every
    /// local user can reach (it serves /config_dump and can stop Envoy).
    #[arg(long, default_value = "unix:envoy-admin.sock")]
    admin: String,
    /// A snapshot public key the gateway trusts (repeat it while rotating the signing key).
    /// Default: the public key of the signing key in TOLLGATE_SNAPSHOT_SIGNING_KEY or the data
    /// directory.
    #[arg(long = "snapshot-public-key")]
    snapshot_public_keys: Vec<String>,
    /// Requests that match no API: deny (404) or pass (forwarded without tollgate's key and
    /// x-tollgate-* headers). Deny by default: a gateway in front of an API should not forward
    /// what no published API names unless asked to.
    #[arg(long, default_value = "deny")]
    unmatched: String,
    /// Before the first snapshot: closed (503) or open (pass through).
    #[arg(long, default_value = "closed")]
    failure_mode: String,
}

#[derive(Debug, Subcommand)]
enum OrgCommand {
    /// Create an organization.
    Create {
        /// Its id: lowercase letters, digits and `-`, at most 64 (e.g. `acme`).
        #[arg(value_name = "ID")]
        id: String,
        /// Display name (default: the id).
        #[arg(long)]
        name: Option<String>,
    },
    /// List every organization.
    List,
    /// Show one organization.
    Get {
        /// Its id.
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Change an organization's display name (its id stays).
    Rename {
        /// Its id.
        #[arg(value_name = "ID")]
        id: String,
        /// The new display name.
        #[arg(value_name = "NAME")]
        name: String,
    },
}

/// Shared verbs of plans, APIs and clients, addressed as `org/id`.
#[derive(Debug, Subcommand)]
enum OwnedCommand {
    /// Create `org/id`.
    Create {
        /// `org/id`; the id is lowercase letters, digits and `-`, at most 64.
        #[arg(value_name = "ORG/ID")]
        name: String,
        /// Display name (default: the id).
        #[arg(long = "name")]
        display_name: Option<String>,
    },
    /// List an org's.
    List {
        /// The organization's id.
        #[arg(value_name = "ORG")]
        org: String,
    },
    /// Show `org/id`.
    Get {
        /// `org/id`.
        #[arg(value_name = "ORG/ID")]
        name: String,
    },
    /// Change the display name of `org/id` (its id stays).
    Rename {
        /// `org/id`.
        #[arg(value_name = "ORG/ID")]
        name: String,
        /// The new display name.
        #[arg(value_name = "NAME")]
        display_name: String,
    },
}

#[derive(Debug, Subcommand)]
enum PlanCommand {
    #[command(flatten)]
    Owned(OwnedCommand),
    /// Plan versions (draft → locked).
    #[command(subcommand)]
    Version(PlanVersionCommand),
}

#[derive(Debug, Subcommand)]
enum PlanVersionCommand {
    /// Create a draft `org/plan/version`.
    Create {
        /// `org/plan/version`; the version is letters, digits, `.`, `_` and `-` (e.g. `2`).
        #[arg(value_name = "ORG/PLAN/VERSION")]
        name: String,
        /// A limit such as `10000/day` (periods: second, minute, hour, day, month); repeatable.
        #[arg(long = "limit")]
        limits: Vec<String>,
        /// Start from the limits of this existing version of the plan (its version name).
        #[arg(long, value_name = "VERSION")]
        copy_from: Option<String>,
    },
    /// Replace a draft's limits.
    Update {
        /// `org/plan/version`, a draft.
        #[arg(value_name = "ORG/PLAN/VERSION")]
        name: String,
        /// A limit such as `10000/day`; repeatable; the draft keeps only these.
        #[arg(long = "limit")]
        limits: Vec<String>,
    },
    /// Lock a draft forever: only locked versions can be offered.
    Lock {
        /// `org/plan/version`, a draft with at least one limit.
        #[arg(value_name = "ORG/PLAN/VERSION")]
        name: String,
    },
    /// List versions of `org/plan`.
    List {
        /// `org/plan`.
        #[arg(value_name = "ORG/PLAN")]
        plan: String,
    },
    /// Show a plan version: its status and limits.
    Get {
        /// `org/plan/version`.
        #[arg(value_name = "ORG/PLAN/VERSION")]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum ApiCommand {
    #[command(flatten)]
    Owned(OwnedCommand),
    /// API versions (draft → published → retired).
    #[command(subcommand)]
    Version(ApiVersionCommand),
}

#[derive(Debug, Clone, Args)]
struct ApiVersionSettings {
    /// Path prefix routed to this version, e.g. /orders/v1.
    #[arg(long)]
    path_prefix: String,
    /// Host to match; repeatable; none matches any host.
    #[arg(long = "host")]
    hosts: Vec<String>,
    /// Anyone may call it, no key needed.
    #[arg(long)]
    public: bool,
    /// Offered locked plan version `org/plan/version`; repeatable.
    #[arg(long = "plan")]
    plans: Vec<String>,
    /// Send the API key on to the upstream (default: stripped).
    #[arg(long)]
    forward_api_key: bool,
    /// How callers of a private version identify themselves: api_key, jwt, api_key_or_jwt.
    #[arg(long, default_value = "api_key", value_parser = ["api_key", "jwt", "api_key_or_jwt"])]
    auth: String,
}

#[derive(Debug, Subcommand)]
enum ApiVersionCommand {
    /// Create a draft `org/api/version`.
    Create {
        /// `org/api/version`; the version is letters, digits, `.`, `_` and `-` (e.g. `1`).
        #[arg(value_name = "ORG/API/VERSION")]
        name: String,
        #[command(flatten)]
        settings: ApiVersionSettings,
    },
    /// Replace a draft's settings (a flag left out takes its default, as on create).
    Update {
        /// `org/api/version`, a draft.
        #[arg(value_name = "ORG/API/VERSION")]
        name: String,
        #[command(flatten)]
        settings: ApiVersionSettings,
    },
    /// Publish a draft: gateways route its path prefix from the next snapshot.
    Publish {
        /// `org/api/version`, a draft.
        #[arg(value_name = "ORG/API/VERSION")]
        name: String,
    },
    /// Retire a published version: gateways answer 410 on its route until another takes it.
    Retire {
        /// `org/api/version`, a published one.
        #[arg(value_name = "ORG/API/VERSION")]
        name: String,
    },
    /// List versions of `org/api`.
    List {
        /// `org/api`.
        #[arg(value_name = "ORG/API")]
        api: String,
    },
    /// Show an API version: its status, routing and offered plans.
    Get {
        /// `org/api/version`.
        #[arg(value_name = "ORG/API/VERSION")]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum ClientCommand {
    #[command(flatten)]
    Owned(OwnedCommand),
    /// Client versions and their keys.
    #[command(subcommand)]
    Version(ClientVersionCommand),
}

#[derive(Debug, Subcommand)]
enum ClientVersionCommand {
    /// Create `org/client/version`; prints its API key once.
    Create {
        /// `org/client/version`; the version is letters, digits, `.`, `_` and `-`.
        #[arg(value_name = "ORG/CLIENT/VERSION")]
        name: String,
    },
    /// Issue a new key; the old one works for the grace period.
    RotateKey {
        /// `org/client/version`.
        #[arg(value_name = "ORG/CLIENT/VERSION")]
        name: String,
        /// Seconds every earlier key keeps working (0 ends them now; at most 30 days).
        #[arg(long, value_name = "SECONDS")]
        grace_seconds: u64,
    },
    /// Revoke one key now (its id from `client version get`): gateways refuse it with the
    /// next revision, whatever grace it had.
    RevokeKey {
        /// `org/client/version`.
        #[arg(value_name = "ORG/CLIENT/VERSION")]
        name: String,
        /// The key's id, as `client version get` lists it.
        #[arg(long, value_name = "ID")]
        key_id: i64,
    },
    /// Issue OAuth client credentials (for POST /oauth/token); prints the secret once.
    Credentials {
        /// `org/client/version`.
        #[arg(value_name = "ORG/CLIENT/VERSION")]
        name: String,
        /// Seconds earlier credentials keep working (default 0: they stop now; at most 30
        /// days).
        #[arg(long, default_value_t = 0, value_name = "SECONDS")]
        grace_seconds: u64,
    },
    /// Revoke every credential: its tokens stop working at the gateways.
    RevokeCredentials {
        /// `org/client/version`.
        #[arg(value_name = "ORG/CLIENT/VERSION")]
        name: String,
    },
    /// Identities at external issuers that act as this client version.
    #[command(subcommand)]
    Subject(SubjectCommand),
    /// List versions of `org/client`.
    List {
        /// `org/client`.
        #[arg(value_name = "ORG/CLIENT")]
        client: String,
    },
    /// Show a client version: its keys (ids and expiry, never the keys themselves).
    Get {
        /// `org/client/version`.
        #[arg(value_name = "ORG/CLIENT/VERSION")]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum ContractCommand {
    /// Contract `org/client/version` with an API version through one of its plans.
    Create {
        /// `org/client/version`: the caller.
        #[arg(value_name = "ORG/CLIENT/VERSION")]
        client_version: String,
        /// `org/api/version`: what it may call.
        #[arg(long, value_name = "ORG/API/VERSION")]
        api: String,
        /// `org/plan/version`, one the API version offers (a draft or missing version is
        /// refused); or `org/plan` for the version of that plan it offers.
        #[arg(long, value_name = "ORG/PLAN[/VERSION]")]
        plan: String,
    },
    /// List a client version's contracts.
    List {
        /// `org/client/version`.
        #[arg(value_name = "ORG/CLIENT/VERSION")]
        client_version: String,
    },
    /// Show one contract.
    Get {
        /// `org/client/version`.
        #[arg(value_name = "ORG/CLIENT/VERSION")]
        client_version: String,
        /// The contract's id, as `contract list` shows it.
        #[arg(value_name = "ID")]
        id: u64,
    },
    /// Revoke a contract: gateways answer 403 to its calls from the next revision.
    Delete {
        /// `org/client/version`.
        #[arg(value_name = "ORG/CLIENT/VERSION")]
        client_version: String,
        /// The contract's id, as `contract list` shows it.
        #[arg(value_name = "ID")]
        id: u64,
    },
}

pub fn main(cli: Cli) -> ExitCode {
    let command = match cli.command {
        Command::Serve(args) => return serve(args, cli.data_dir),
        Command::SnapshotPublicKey => {
            return match snapshot_public_key(&cli.data_dir) {
                Ok(key) => {
                    println!("{key}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::EnvoyConfig(args) => {
            return match envoy_config(&args, &cli.server, cli.server_given, &cli.data_dir) {
                Ok(config) => {
                    print!("{config}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        other => other,
    };
    match run(&cli.server, cli.json, &cli.data_dir, command) {
        Ok(output) => {
            if !output.is_empty() {
                println!("{output}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(mut args: ServeArgs, data_dir: PathBuf) -> ExitCode {
    args.data_dir = data_dir;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(server::serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The public key of the control plane's snapshot signing key (env or data directory).
fn snapshot_public_key(data_dir: &std::path::Path) -> Result<String, String> {
    let kind = SecretKind::SnapshotSigningKey;
    let seed = read_secret(kind, data_dir)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!(
                "no {}: set {}, point --data-dir at a directory where `tollgate serve` has run \
                 (looked in {}), or pass --snapshot-public-key",
                kind.file_name(),
                kind.env_var(),
                data_dir.display()
            )
        })?;
    SnapshotSigningKey::from_base64(&seed)
        .map(|k| k.public_key())
        .map_err(|e| format!("{}: {e}", kind.file_name()))
}

/// The bootstrap as YAML, with the command line to run it. It holds no secret: the gateway
/// trusts the control plane's public key and reads the gateway token from its environment.
/// `server` is the CLI's (`--server` before the subcommand, TOLLGATE_SERVER or the default).
fn envoy_config(
    args: &EnvoyConfigArgs,
    server: &str,
    server_given: bool,
    data_dir: &std::path::Path,
) -> Result<String, String> {
    // The gateway's control planes are --control-plane; without one, the control plane this
    // CLI talks to, so `tollgate envoy-config` agrees with `tollgate org list` about where the
    // control plane is. Both on the command line is refused rather than one silently losing.
    if server_given && !args.control_planes.is_empty() {
        return Err(
            "--server and --control-plane: the gateway's control planes are \
                    --control-plane; --server is used only without one, so give one of them"
                .to_owned(),
        );
    }
    let (control_planes, from_server) = if args.control_planes.is_empty() {
        let server = args.server.as_deref().unwrap_or(server);
        (vec![server.to_owned()], true)
    } else {
        (args.control_planes.clone(), false)
    };
    let keys = if args.snapshot_public_keys.is_empty() {
        vec![snapshot_public_key(data_dir)?]
    } else {
        args.snapshot_public_keys.clone()
    };
    let wasm = std::path::absolute(&args.wasm)
        .map_err(|e| format!("--wasm {}: {e}", args.wasm.display()))?;
    let bootstrap = crate::envoy_config::bootstrap(&crate::envoy_config::GatewayOptions {
        wasm: &wasm,
        listen: &args.listen,
        upstream: &args.upstream,
        control_planes: &control_planes,
        admin: &args.admin,
        snapshot_public_keys: &keys,
        unmatched: &args.unmatched,
        failure_mode: &args.failure_mode,
    })
    .map_err(|e| {
        if from_server {
            format!("{e} (no --control-plane was given, so the CLI's --server / TOLLGATE_SERVER was used)")
        } else {
            e.to_string()
        }
    })?;
    let yaml = yaml_serde::to_string(&bootstrap).map_err(|e| e.to_string())?;
    let admin = match bootstrap["admin"]["address"]["pipe"]["path"].as_str() {
        Some(path) => format!(
            "unix socket {path}, mode 0600 (curl --unix-socket {path} http://localhost/ready)"
        ),
        None => format!("TCP {} (any local user can reach it)", args.admin),
    };
    Ok(format!(
        "# tollgate gateway for {upstream}, generated by `tollgate envoy-config`.\n\
         # No secret in here. Envoy passes the gateway token to the module from its own\n\
         # environment ({token_env}, the control plane's gateway-token file or env):\n\
         # Run: {token_env}=<gateway token> envoy --config-path <this file> --concurrency {concurrency}\n\
         # Admin interface: {admin}\n{yaml}",
        upstream = args.upstream,
        concurrency = args.concurrency,
        token_env = tollgate_core::config::DEFAULT_GATEWAY_TOKEN_ENV,
    ))
}

fn run(
    server: &str,
    json: bool,
    data_dir: &std::path::Path,
    command: Command,
) -> Result<String, ClientError> {
    // The flags after the command's name, else those before it.
    let client = match &command {
        Command::Org(c) => &c.args,
        Command::Plan(c) => &c.args,
        Command::Api(c) => &c.args,
        Command::Client(c) => &c.args,
        Command::Contract(c) => &c.args,
        Command::Issuer(c) => &c.args,
        Command::TokenKey(c) => &c.args,
        Command::ServiceAccount(c) => &c.args,
        Command::Apply { client, .. } | Command::Export { client } => client,
        Command::Serve(_) | Command::EnvoyConfig(_) | Command::SnapshotPublicKey => {
            return Ok(String::new())
        }
    };
    let server = client.server.as_deref().unwrap_or(server);
    let out = Output {
        json: json || client.json,
    };
    let token = read_secret(SecretKind::AdminToken, data_dir)
        .map_err(|e| ClientError::Other(e.to_string()))?
        .ok_or_else(|| {
            ClientError::Other(format!(
                "no admin token: set TOLLGATE_ADMIN_TOKEN or pass --data-dir to where the \
                 server wrote admin-token (looked in {})",
                data_dir.display()
            ))
        })?;
    let api = ApiClient::new(server, &token);
    match command {
        Command::Serve(_) | Command::EnvoyConfig(_) | Command::SnapshotPublicKey => {
            Ok(String::new())
        }
        Command::Org(c) => org(&api, &out, c.command),
        Command::Plan(c) => match c.command {
            PlanCommand::Owned(c) => owned(&api, &out, "plans", c),
            PlanCommand::Version(c) => plan_version(&api, &out, c),
        },
        Command::Api(c) => match c.command {
            ApiCommand::Owned(c) => owned(&api, &out, "apis", c),
            ApiCommand::Version(c) => api_version(&api, &out, c),
        },
        Command::Client(c) => match c.command {
            ClientCommand::Owned(c) => owned(&api, &out, "clients", c),
            ClientCommand::Version(c) => client_version(&api, &out, c),
        },
        Command::Contract(c) => contract(&api, &out, c.command),
        Command::Issuer(c) => tokens::issuer(&api, &out, c.command),
        Command::TokenKey(c) => tokens::token_key(&api, &out, c.command),
        Command::ServiceAccount(c) => tokens::service_account(&api, &out, c.command),
        Command::Apply { file, .. } => apply(&api, &out, &file),
        Command::Export { .. } => export(&api, &out),
    }
}

struct Output {
    json: bool,
}

impl Output {
    fn item(&self, value: &Value) -> String {
        if self.json {
            pretty(value)
        } else {
            output::item(value)
        }
    }

    fn list(&self, items: &[Value], columns: &[&str]) -> String {
        if self.json {
            pretty(&Value::Array(items.to_vec()))
        } else {
            output::list(items, columns)
        }
    }
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

fn bad(e: crate::error::Error) -> ClientError {
    ClientError::Other(e.to_string())
}

fn version_ref(field: &str, value: &str) -> Result<VersionRef, ClientError> {
    VersionRef::parse(field, value).map_err(bad)
}

fn pair(field: &str, value: &str) -> Result<(String, String), ClientError> {
    parse_pair(field, value).map_err(bad)
}

fn org(api: &ApiClient, out: &Output, command: OrgCommand) -> Result<String, ClientError> {
    match command {
        OrgCommand::Create { id, name } => {
            let created: Value = api.post("/v1/orgs", &json!({"id": id, "name": name}))?;
            Ok(out.item(&created))
        }
        OrgCommand::List => Ok(out.list(&api.get_all("/v1/orgs")?, &["id", "name", "created_at"])),
        OrgCommand::Get { id } => Ok(out.item(&api.get(&format!("/v1/orgs/{id}"))?)),
        OrgCommand::Rename { id, name } => {
            let renamed: Value = api.put(&format!("/v1/orgs/{id}"), &json!({"name": name}))?;
            Ok(out.item(&renamed))
        }
    }
}

fn owned(
    api: &ApiClient,
    out: &Output,
    collection: &str,
    command: OwnedCommand,
) -> Result<String, ClientError> {
    match command {
        OwnedCommand::Create { name, display_name } => {
            let (org, id) = pair("name", &name)?;
            let created: Value = api.post(
                &format!("/v1/orgs/{org}/{collection}"),
                &json!({"id": id, "name": display_name}),
            )?;
            Ok(out.item(&created))
        }
        OwnedCommand::List { org } => Ok(out.list(
            &api.get_all(&format!("/v1/orgs/{org}/{collection}"))?,
            &["org", "id", "name", "created_at"],
        )),
        OwnedCommand::Get { name } => {
            let (org, id) = pair("name", &name)?;
            Ok(out.item(&api.get(&format!("/v1/orgs/{org}/{collection}/{id}"))?))
        }
        OwnedCommand::Rename { name, display_name } => {
            let (org, id) = pair("name", &name)?;
            let renamed: Value = api.put(
                &format!("/v1/orgs/{org}/{collection}/{id}"),
                &json!({"name": display_name}),
            )?;
            Ok(out.item(&renamed))
        }
    }
}

/// `10000/day` → `{"requests": 10000, "per": "day"}`.
fn parse_limits(limits: &[String]) -> Result<Vec<Value>, ClientError> {
    limits
        .iter()
        .map(|limit| {
            let parsed = limit.split_once('/').and_then(|(n, per)| {
                Some((n.trim().parse::<u64>().ok()?, period_from_str(per.trim())?))
            });
            match parsed {
                Some((requests, per)) => Ok(json!({"requests": requests, "per": per.as_str()})),
                None => Err(ClientError::Other(format!(
                    "--limit {limit:?}: expected REQUESTS/PERIOD such as 10000/day \
                     (second, minute, hour, day, month)"
                ))),
            }
        })
        .collect()
}

fn plan_version(
    api: &ApiClient,
    out: &Output,
    command: PlanVersionCommand,
) -> Result<String, ClientError> {
    const COLUMNS: &[&str] = &["version", "status", "limits", "created_at", "locked_at"];
    match command {
        PlanVersionCommand::Create {
            name,
            limits,
            copy_from,
        } => {
            let r = version_ref("name", &name)?;
            let limits = if limits.is_empty() && copy_from.is_some() {
                Value::Null
            } else {
                Value::Array(parse_limits(&limits)?)
            };
            let created: Value = api.post(
                &format!("/v1/orgs/{}/plans/{}/versions", r.org, r.name),
                &json!({"version": r.version, "limits": limits, "copy_from": copy_from}),
            )?;
            Ok(out.item(&created))
        }
        PlanVersionCommand::Update { name, limits } => {
            let r = version_ref("name", &name)?;
            let updated: Value = api.put(
                &format!("/v1/orgs/{}/plans/{}/versions/{}", r.org, r.name, r.version),
                &json!({"limits": parse_limits(&limits)?}),
            )?;
            Ok(out.item(&updated))
        }
        PlanVersionCommand::Lock { name } => {
            let r = version_ref("name", &name)?;
            let locked: Value = api.post_empty(&format!(
                "/v1/orgs/{}/plans/{}/versions/{}/lock",
                r.org, r.name, r.version
            ))?;
            Ok(out.item(&locked))
        }
        PlanVersionCommand::List { plan } => {
            let (org, plan) = pair("plan", &plan)?;
            Ok(out.list(
                &api.get_all(&format!("/v1/orgs/{org}/plans/{plan}/versions"))?,
                COLUMNS,
            ))
        }
        PlanVersionCommand::Get { name } => {
            let r = version_ref("name", &name)?;
            Ok(out.item(&api.get(&format!(
                "/v1/orgs/{}/plans/{}/versions/{}",
                r.org, r.name, r.version
            ))?))
        }
    }
}

impl ApiVersionSettings {
    fn routing(&self) -> Routing {
        Routing {
            path_prefix: self.path_prefix.clone(),
            hosts: self.hosts.clone(),
        }
    }

    fn plans(&self) -> Result<Vec<VersionRef>, ClientError> {
        self.plans
            .iter()
            .map(|p| version_ref("--plan", p))
            .collect()
    }

    fn auth(&self) -> Result<AuthMode, ClientError> {
        serde_json::from_value(json!(self.auth))
            .map_err(|e| ClientError::Other(format!("--auth: {e}")))
    }

    /// The body of `POST …/versions`.
    fn create(&self, version: String) -> Result<CreateApiVersion, ClientError> {
        Ok(CreateApiVersion {
            version,
            public: self.public,
            routing: self.routing(),
            plans: self
                .plans()?
                .into_iter()
                .map(|r| PlanChoice {
                    org: Some(r.org),
                    plan: r.name,
                    version: r.version,
                })
                .collect(),
            forward_api_key: self.forward_api_key,
            auth: self.auth()?,
        })
    }

    /// Replaces every setting of `current` (a flag left out takes its default, as on create),
    /// keeping what `PUT` takes as read-only.
    fn replace(&self, current: &mut ApiVersion) -> Result<(), ClientError> {
        current.public = self.public;
        current.routing = self.routing();
        current.plans = self
            .plans()?
            .into_iter()
            .map(|r| OfferedPlan {
                org: r.org,
                plan: r.name,
                version: r.version,
            })
            .collect();
        current.forward_api_key = self.forward_api_key;
        current.auth = self.auth()?;
        Ok(())
    }
}

fn api_version(
    api: &ApiClient,
    out: &Output,
    command: ApiVersionCommand,
) -> Result<String, ClientError> {
    const COLUMNS: &[&str] = &[
        "version",
        "status",
        "public",
        "routing",
        "plans",
        "published_at",
    ];
    let path =
        |r: &VersionRef| format!("/v1/orgs/{}/apis/{}/versions/{}", r.org, r.name, r.version);
    match command {
        ApiVersionCommand::Create { name, settings } => {
            let r = version_ref("name", &name)?;
            let body = settings.create(r.version.clone())?;
            let created: Value = api.post(
                &format!("/v1/orgs/{}/apis/{}/versions", r.org, r.name),
                &body,
            )?;
            Ok(out.item(&created))
        }
        ApiVersionCommand::Update { name, settings } => {
            let r = version_ref("name", &name)?;
            // PUT takes the version as GET returns it.
            let mut version: ApiVersion = api.get(&path(&r))?;
            settings.replace(&mut version)?;
            let updated: Value = api.put(&path(&r), &version)?;
            Ok(out.item(&updated))
        }
        ApiVersionCommand::Publish { name } => {
            let r = version_ref("name", &name)?;
            Ok(out.item(&api.post_empty(&format!("{}/publish", path(&r)))?))
        }
        ApiVersionCommand::Retire { name } => {
            let r = version_ref("name", &name)?;
            Ok(out.item(&api.post_empty(&format!("{}/retire", path(&r)))?))
        }
        ApiVersionCommand::List { api: name } => {
            let (org, id) = pair("api", &name)?;
            Ok(out.list(
                &api.get_all(&format!("/v1/orgs/{org}/apis/{id}/versions"))?,
                COLUMNS,
            ))
        }
        ApiVersionCommand::Get { name } => {
            let r = version_ref("name", &name)?;
            Ok(out.item(&api.get(&path(&r))?))
        }
    }
}

fn client_version(
    api: &ApiClient,
    out: &Output,
    command: ClientVersionCommand,
) -> Result<String, ClientError> {
    let path = |r: &VersionRef| {
        format!(
            "/v1/orgs/{}/clients/{}/versions/{}",
            r.org, r.name, r.version
        )
    };
    match command {
        ClientVersionCommand::Create { name } => {
            let r = version_ref("name", &name)?;
            let created: Value = api.post(
                &format!("/v1/orgs/{}/clients/{}/versions", r.org, r.name),
                &json!({"version": r.version}),
            )?;
            if out.json {
                return Ok(pretty(&created));
            }
            let key = created.get("api_key").and_then(Value::as_str).unwrap_or("");
            Ok(format!(
                "created client version {r}\nAPI key (shown once, store it now): {key}"
            ))
        }
        ClientVersionCommand::RotateKey {
            name,
            grace_seconds,
        } => {
            let r = version_ref("name", &name)?;
            let rotated: Value = api.post(
                &format!("{}/keys/rotate", path(&r)),
                &json!({"grace_seconds": grace_seconds}),
            )?;
            if out.json {
                return Ok(pretty(&rotated));
            }
            let key = rotated.get("api_key").and_then(Value::as_str).unwrap_or("");
            let until = rotated
                .get("previous_key_expires_at")
                .and_then(Value::as_i64)
                .map(output::time)
                .unwrap_or_default();
            Ok(format!(
                "new API key for {r} (shown once, store it now): {key}\n\
                 every earlier key keeps working at most until {until}"
            ))
        }
        ClientVersionCommand::RevokeKey { name, key_id } => {
            let r = version_ref("name", &name)?;
            let revoked: Value = api.post_empty(&format!("{}/keys/{key_id}/revoke", path(&r)))?;
            if out.json {
                return Ok(pretty(&revoked));
            }
            Ok(format!("revoked key {key_id} of {r}"))
        }
        ClientVersionCommand::Credentials {
            name,
            grace_seconds,
        } => tokens::credentials(api, out, &name, grace_seconds),
        ClientVersionCommand::RevokeCredentials { name } => tokens::revoke_credentials(api, &name),
        ClientVersionCommand::Subject(c) => tokens::subject(api, out, c),
        ClientVersionCommand::List { client } => {
            let (org, id) = pair("client", &client)?;
            Ok(out.list(
                &api.get_all(&format!("/v1/orgs/{org}/clients/{id}/versions"))?,
                &["version", "keys", "created_at"],
            ))
        }
        ClientVersionCommand::Get { name } => {
            let r = version_ref("name", &name)?;
            Ok(out.item(&api.get(&path(&r))?))
        }
    }
}

fn contract(
    api: &ApiClient,
    out: &Output,
    command: ContractCommand,
) -> Result<String, ClientError> {
    let contracts_path = |r: &VersionRef| {
        format!(
            "/v1/orgs/{}/clients/{}/versions/{}/contracts",
            r.org, r.name, r.version
        )
    };
    match command {
        ContractCommand::Create {
            client_version,
            api: api_name,
            plan,
        } => {
            let client = version_ref("client_version", &client_version)?;
            let target = version_ref("--api", &api_name)?;
            // The version, when named, goes to the API as typed: it decides whether the API
            // version offers it, so a draft or missing one is refused rather than replaced.
            let (plan_org, plan, plan_version) = match plan.split('/').count() {
                3 => {
                    let r = version_ref("--plan", &plan)?;
                    (r.org, r.name, Some(r.version))
                }
                _ => {
                    let (org, name) = pair("--plan", &plan)?;
                    (org, name, None)
                }
            };
            let created: Value = api.post(
                &contracts_path(&client),
                &CreateContract {
                    api_org: Some(target.org),
                    api: target.name,
                    api_version: target.version,
                    plan_org: Some(plan_org),
                    plan,
                    plan_version,
                },
            )?;
            Ok(out.item(&created))
        }
        ContractCommand::List { client_version } => {
            let client = version_ref("client_version", &client_version)?;
            let items = api.get_all(&contracts_path(&client))?;
            let rows: Vec<Value> = items
                .iter()
                .map(|c| {
                    let name = |a: &str, b: &str, v: &str| {
                        format!(
                            "{}/{}/{}",
                            c[a].as_str().unwrap_or(""),
                            c[b].as_str().unwrap_or(""),
                            c[v].as_str().unwrap_or("")
                        )
                    };
                    json!({
                        "id": c["id"],
                        "api": name("api_org", "api", "api_version"),
                        "plan": name("plan_org", "plan", "plan_version"),
                        "created_at": c["created_at"],
                    })
                })
                .collect();
            if out.json {
                return Ok(pretty(&Value::Array(items)));
            }
            Ok(output::list(&rows, &["id", "api", "plan", "created_at"]))
        }
        ContractCommand::Get { client_version, id } => {
            let client = version_ref("client_version", &client_version)?;
            Ok(out.item(&api.get(&format!("{}/{id}", contracts_path(&client)))?))
        }
        ContractCommand::Delete { client_version, id } => {
            let client = version_ref("client_version", &client_version)?;
            api.delete(&format!("{}/{id}", contracts_path(&client)))?;
            Ok(if out.json {
                String::new()
            } else {
                format!("revoked contract {id} of {client}")
            })
        }
    }
}

fn apply(api: &ApiClient, out: &Output, file: &PathBuf) -> Result<String, ClientError> {
    let text = if file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| ClientError::Other(format!("reading standard input: {e}")))?;
        text
    } else {
        std::fs::read_to_string(file)
            .map_err(|e| ClientError::Other(format!("reading {}: {e}", file.display())))?
    };
    // Parsed here first so YAML mistakes are reported with their line and column.
    let document: Catalogue = yaml_serde::from_str(&text)
        .map_err(|e| ClientError::Other(format!("{}: {e}", file.display())))?;
    // Checked here: a server refusing an oversized upload may close the connection before the
    // client could read its 413.
    let size = serde_json::to_vec(&document).map_or(0, |body| body.len());
    if size > MAX_APPLY_BODY_BYTES {
        return Err(ClientError::Other(format!(
            "{}: the catalogue is {} MiB as JSON; /v1/apply accepts at most {} MiB, so apply it \
             in several files",
            file.display(),
            size / (1024 * 1024),
            MAX_APPLY_BODY_BYTES / (1024 * 1024)
        )));
    }
    let report: ApplyReport = api.post("/v1/apply", &document)?;
    if out.json {
        return Ok(serde_json::to_string_pretty(&report).unwrap_or_default());
    }
    if report.changes.is_empty() {
        return Ok(format!("no changes (revision {})", report.revision));
    }
    let mut lines = report.changes.clone();
    for key in &report.issued_keys {
        lines.push(format!(
            "API key for {} (shown once, store it now): {}",
            key.client_version, key.api_key
        ));
    }
    for account in &report.issued_credentials {
        lines.push(format!(
            "client credentials for service account {} (the secret is shown once, store it \
             now):\nclient_id:     {}\nclient_secret: {}",
            account.id, account.client_id, account.client_secret
        ));
    }
    lines.push(format!(
        "{} change(s) applied; revision {}",
        report.changes.len(),
        report.revision
    ));
    Ok(lines.join("\n"))
}

fn export(api: &ApiClient, out: &Output) -> Result<String, ClientError> {
    let document: Catalogue = api.get("/v1/export")?;
    if out.json {
        return Ok(serde_json::to_string_pretty(&document).unwrap_or_default());
    }
    yaml_serde::to_string(&document)
        .map(|yaml| yaml.trim_end().to_owned())
        .map_err(|e| ClientError::Other(format!("encoding YAML: {e}")))
}
