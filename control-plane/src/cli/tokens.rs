//! CLI verbs of the token issuer: client credentials and external subjects of a client
//! version, external issuers, the own issuer's signing keys, service accounts.

use std::path::PathBuf;

use clap::Subcommand;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::{json, Value};

use super::client::{ApiClient, ClientError};
use super::{output, pretty, version_ref, Output};

#[derive(Debug, Subcommand)]
pub enum SubjectCommand {
    /// Map an identity at an external issuer to `org/client/version`.
    Add {
        /// `org/client/version` the identity acts as.
        #[arg(value_name = "ORG/CLIENT/VERSION")]
        name: String,
        /// The external issuer's `iss` URL, as `issuer create` registered it.
        #[arg(long, value_name = "URL")]
        issuer: String,
        /// The value of the issuer's client claim (e.g. its `sub`).
        #[arg(long)]
        value: String,
    },
    /// List the identities that act as `org/client/version`.
    List {
        /// `org/client/version`.
        #[arg(value_name = "ORG/CLIENT/VERSION")]
        name: String,
    },
    /// Remove one identity: its tokens stop acting as the client version.
    Delete {
        /// `org/client/version`.
        #[arg(value_name = "ORG/CLIENT/VERSION")]
        name: String,
        /// The issuer's `iss` URL.
        #[arg(long, value_name = "URL")]
        issuer: String,
        /// The value of its client claim, as `subject add` was given it.
        #[arg(long)]
        value: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum IssuerCommand {
    /// Trust an external issuer's tokens at the gateways.
    Create {
        /// Its `iss` URL.
        #[arg(value_name = "URL")]
        issuer: String,
        /// Accepted `aud`; repeatable.
        #[arg(long = "audience", required = true)]
        audiences: Vec<String>,
        /// Its JWKS document (the file its jwks_uri serves); `-` reads standard input.
        #[arg(long, value_name = "FILE")]
        jwks_file: PathBuf,
        /// The claim naming the client.
        #[arg(long, default_value = "sub")]
        client_claim: String,
        /// Refuse its tokens valid for longer than this (seconds; default one day).
        #[arg(long, value_name = "SECONDS")]
        max_token_lifetime: Option<u64>,
    },
    /// Replace its audiences, keys, client claim and token lifetime cap (all of them, as on
    /// create).
    Update {
        /// Its `iss` URL.
        #[arg(value_name = "URL")]
        issuer: String,
        /// Accepted `aud`; repeatable; replaces the list.
        #[arg(long = "audience", required = true)]
        audiences: Vec<String>,
        /// Its JWKS document; `-` reads standard input; replaces the keys.
        #[arg(long, value_name = "FILE")]
        jwks_file: PathBuf,
        /// The claim naming the client.
        #[arg(long, default_value = "sub")]
        client_claim: String,
        /// Refuse its tokens valid for longer than this (seconds; default one day).
        #[arg(long, value_name = "SECONDS")]
        max_token_lifetime: Option<u64>,
    },
    /// List the external issuers gateways trust (tollgate's own is always trusted).
    List,
    /// Show one issuer.
    Get {
        /// Its `iss` URL.
        #[arg(value_name = "URL")]
        issuer: String,
    },
    /// Stop trusting an issuer (refused while subjects name it).
    Delete {
        /// Its `iss` URL.
        #[arg(value_name = "URL")]
        issuer: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenKeyCommand {
    /// The own issuer's signing keys (public information).
    List,
    /// A new signing key; the previous one stays published until its tokens expire.
    Rotate,
}

#[derive(Debug, Subcommand)]
pub enum ServiceAccountCommand {
    /// Create an account for automation; prints its client credentials once.
    Create {
        /// Its id: lowercase letters, digits and `-`.
        #[arg(value_name = "ID")]
        id: String,
        /// tollgate:admin or tollgate:read; repeatable.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
    },
    /// List the service accounts and their scopes.
    List,
    /// Show one service account.
    Get {
        /// Its id.
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Delete a service account: its credentials and tokens are refused at once.
    Delete {
        /// Its id.
        #[arg(value_name = "ID")]
        id: String,
    },
}

fn version_path(name: &str) -> Result<(String, String), ClientError> {
    let r = version_ref("name", name)?;
    Ok((
        r.to_string(),
        format!(
            "/v1/orgs/{}/clients/{}/versions/{}",
            r.org, r.name, r.version
        ),
    ))
}

fn encode(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

pub fn credentials(
    api: &ApiClient,
    out: &Output,
    name: &str,
    grace_seconds: u64,
) -> Result<String, ClientError> {
    let (r, path) = version_path(name)?;
    let issued: Value = api.post(
        &format!("{path}/credentials"),
        &json!({"grace_seconds": grace_seconds}),
    )?;
    if out.json {
        return Ok(pretty(&issued));
    }
    let field = |f: &str| {
        issued
            .get(f)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let mut text = format!(
        "client credentials for {r} (the secret is shown once, store it now):\n\
         client_id:     {}\nclient_secret: {}",
        field("client_id"),
        field("client_secret")
    );
    if let Some(until) = issued.get("previous_expires_at").and_then(Value::as_i64) {
        text.push_str(&format!(
            "\nearlier credentials keep working until {}",
            output::time(until)
        ));
    }
    Ok(text)
}

pub fn revoke_credentials(api: &ApiClient, name: &str) -> Result<String, ClientError> {
    let (r, path) = version_path(name)?;
    api.delete(&format!("{path}/credentials"))?;
    Ok(format!("revoked the client credentials of {r}"))
}

pub fn subject(
    api: &ApiClient,
    out: &Output,
    command: SubjectCommand,
) -> Result<String, ClientError> {
    match command {
        SubjectCommand::Add {
            name,
            issuer,
            value,
        } => {
            let (r, path) = version_path(&name)?;
            let added: Value = api.post(
                &format!("{path}/subjects"),
                &json!({"issuer": issuer, "value": value}),
            )?;
            Ok(if out.json {
                pretty(&added)
            } else {
                format!("tokens of {issuer} with client claim {value:?} now act as {r}")
            })
        }
        SubjectCommand::List { name } => {
            let (_, path) = version_path(&name)?;
            let items: Vec<Value> = api.get(&format!("{path}/subjects"))?;
            Ok(out.list(&items, &["issuer", "value", "created_at"]))
        }
        SubjectCommand::Delete {
            name,
            issuer,
            value,
        } => {
            let (r, path) = version_path(&name)?;
            api.delete(&format!(
                "{path}/subjects?issuer={}&value={}",
                encode(&issuer),
                encode(&value)
            ))?;
            Ok(format!("removed subject {value:?} of {issuer} from {r}"))
        }
    }
}

fn read_jwks(file: &PathBuf) -> Result<Value, ClientError> {
    let text = if file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .map_err(|e| ClientError::Other(format!("reading standard input: {e}")))?;
        text
    } else {
        std::fs::read_to_string(file)
            .map_err(|e| ClientError::Other(format!("reading {}: {e}", file.display())))?
    };
    serde_json::from_str(&text)
        .map_err(|e| ClientError::Other(format!("{} is not JSON: {e}", file.display())))
}

pub fn issuer(
    api: &ApiClient,
    out: &Output,
    command: IssuerCommand,
) -> Result<String, ClientError> {
    let columns = ["issuer", "audiences", "client_claim", "updated_at"];
    match command {
        IssuerCommand::Create {
            issuer,
            audiences,
            jwks_file,
            client_claim,
            max_token_lifetime,
        } => {
            let body = json!({"issuer": issuer, "audiences": audiences,
                              "jwks": read_jwks(&jwks_file)?, "client_claim": client_claim,
                              "max_token_lifetime_seconds": max_token_lifetime});
            let created: Value = api.post("/v1/issuers", &body)?;
            Ok(if out.json {
                pretty(&created)
            } else {
                format!("gateways now trust tokens of {issuer}")
            })
        }
        IssuerCommand::Update {
            issuer,
            audiences,
            jwks_file,
            client_claim,
            max_token_lifetime,
        } => {
            let body = json!({"audiences": audiences, "jwks": read_jwks(&jwks_file)?,
                              "client_claim": client_claim,
                              "max_token_lifetime_seconds": max_token_lifetime});
            let updated: Value = api.put(&format!("/v1/issuers/{}", encode(&issuer)), &body)?;
            Ok(if out.json {
                pretty(&updated)
            } else {
                format!("updated issuer {issuer}")
            })
        }
        IssuerCommand::List => Ok(out.list(&api.get::<Vec<Value>>("/v1/issuers")?, &columns)),
        IssuerCommand::Get { issuer } => {
            Ok(out.item(&api.get(&format!("/v1/issuers/{}", encode(&issuer)))?))
        }
        IssuerCommand::Delete { issuer } => {
            api.delete(&format!("/v1/issuers/{}", encode(&issuer)))?;
            Ok(format!("gateways no longer trust tokens of {issuer}"))
        }
    }
}

pub fn token_key(
    api: &ApiClient,
    out: &Output,
    command: TokenKeyCommand,
) -> Result<String, ClientError> {
    let columns = ["kid", "created_at", "retired_at", "published_until"];
    match command {
        TokenKeyCommand::List => Ok(out.list(&api.get::<Vec<Value>>("/v1/token-keys")?, &columns)),
        TokenKeyCommand::Rotate => {
            let rotated: Value = api.post_empty("/v1/token-keys/rotate")?;
            if out.json {
                return Ok(pretty(&rotated));
            }
            let keys = rotated
                .get("keys")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            Ok(format!(
                "new signing key {}\n{}",
                rotated.get("kid").and_then(Value::as_str).unwrap_or(""),
                output::list(&keys, &columns)
            ))
        }
    }
}

pub fn service_account(
    api: &ApiClient,
    out: &Output,
    command: ServiceAccountCommand,
) -> Result<String, ClientError> {
    match command {
        ServiceAccountCommand::Create { id, scopes } => {
            let created: Value =
                api.post("/v1/service-accounts", &json!({"id": id, "scopes": scopes}))?;
            if out.json {
                return Ok(pretty(&created));
            }
            let field = |f: &str| {
                created
                    .get(f)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned()
            };
            Ok(format!(
                "created service account {id} (the secret is shown once, store it now):\n\
                 client_id:     {}\nclient_secret: {}",
                field("client_id"),
                field("client_secret")
            ))
        }
        ServiceAccountCommand::List => Ok(out.list(
            &api.get::<Vec<Value>>("/v1/service-accounts")?,
            &["id", "scopes", "created_at"],
        )),
        ServiceAccountCommand::Get { id } => {
            Ok(out.item(&api.get(&format!("/v1/service-accounts/{}", encode(&id)))?))
        }
        ServiceAccountCommand::Delete { id } => {
            api.delete(&format!("/v1/service-accounts/{}", encode(&id)))?;
            Ok(format!("deleted service account {id}"))
        }
    }
}
