//! One request through the gateway, over a small trait for the host's request headers so the
//! whole flow (routing, key extraction, stripping, identity headers, verdict) runs natively in
//! tests; the filter implements the trait with proxy-wasm host calls.

use crate::config::{FailureMode, LoadedConfig, Unmatched};
use crate::decision::{
    decide, deny, not_configured, rate_limit_headers, Credential, Denial, Reason, Verdict,
};
use crate::lease::LeaseBook;
use crate::path::{is_normal, split_query, take_query_param, without_parameters};
use crate::problem::Problem;
use crate::shared::{SharedStore, StoreError};
use crate::snapshot::AuthMode;

pub const CLIENT_HEADER: &str = "x-tollgate-client";
pub const PLAN_HEADER: &str = "x-tollgate-plan";
/// The verified `sub` of a bearer token.
pub const SUBJECT_HEADER: &str = "x-tollgate-subject";
pub const AUTHORIZATION_HEADER: &str = "authorization";

/// The token of an `Authorization: Bearer <token>` value (scheme case-insensitive).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The request headers of the request being decided.
pub trait RequestHeaders {
    fn get(&mut self, name: &str) -> Result<Option<String>, StoreError>;
    /// Sets `name` to `value`, replacing every existing value.
    fn set(&mut self, name: &str, value: &str) -> Result<(), StoreError>;
    fn remove(&mut self, name: &str) -> Result<(), StoreError>;
}

/// Request headers as a list, the way Envoy keeps them (lowercase names, repeats allowed, `get`
/// answers the first value): the in-memory [`RequestHeaders`] of native tests and fuzzing.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HeaderList(pub Vec<(String, String)>);

impl HeaderList {
    pub fn value(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl RequestHeaders for HeaderList {
    fn get(&mut self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(self.value(name).map(str::to_owned))
    }
    fn set(&mut self, name: &str, value: &str) -> Result<(), StoreError> {
        self.0.retain(|(k, _)| k != name);
        self.0.push((name.to_owned(), value.to_owned()));
        Ok(())
    }
    fn remove(&mut self, name: &str) -> Result<(), StoreError> {
        self.0.retain(|(k, _)| k != name);
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Forward upstream, adding these headers to the response.
    Forward {
        response_headers: Vec<(&'static str, String)>,
    },
    /// Answer locally.
    Respond(Denial),
}

/// What happened to a request, for the response and for the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handled {
    pub reason: Reason,
    pub outcome: Outcome,
    pub cas_retries: u32,
}

impl Handled {
    fn forward(reason: Reason, response_headers: Vec<(&'static str, String)>) -> Self {
        Handled {
            reason,
            outcome: Outcome::Forward { response_headers },
            cas_retries: 0,
        }
    }

    fn respond(denial: Denial) -> Self {
        Handled {
            reason: denial.reason,
            outcome: Outcome::Respond(denial),
            cas_retries: 0,
        }
    }
}

pub fn handle_request<H, S>(
    config: &LoadedConfig,
    headers: &mut H,
    store: &mut S,
    leases: &mut LeaseBook,
    now_ms: u64,
) -> Result<Handled, StoreError>
where
    H: RequestHeaders + ?Sized,
    S: SharedStore + ?Sized,
{
    let settings = &config.settings;
    let Some(routes) = &config.routes else {
        return Ok(match settings.failure_mode {
            FailureMode::Open => Handled::forward(Reason::NotConfigured, Vec::new()),
            FailureMode::Closed => Handled::respond(not_configured()),
        });
    };

    let raw_path = headers.get(":path")?.unwrap_or_default();
    let (path, query) = split_query(&raw_path);
    // Checked and routed as parameter-honouring upstreams will read it.
    let effective = without_parameters(path);
    if !is_normal(&effective) {
        return Ok(Handled::respond(deny(
            Reason::BadPath,
            Problem::new(
                "bad-path",
                "Bad Request",
                400,
                "the request path is not in normal form (empty, '.' or '..' segments, or encoded '/', '\\' or '.')",
            ),
        )));
    }
    // Only read the host when some API version routes by host: one host call fewer.
    let authority = if routes.routes_by_host() {
        headers.get(":authority")?.unwrap_or_default()
    } else {
        String::new()
    };
    let Some(api) = routes.route(&authority, &effective) else {
        return Ok(match settings.unmatched {
            Unmatched::Pass => Handled::forward(Reason::Unmatched, Vec::new()),
            Unmatched::Deny => Handled::respond(deny(
                Reason::NoRoute,
                Problem::new(
                    "no-route",
                    "Not Found",
                    404,
                    "no API is published at this path",
                ),
            )),
        });
    };

    // Keys are read (and stripped) on every matched API, whatever its auth mode.
    let header_key = headers.get(&settings.key_header)?;
    let (query_key, rest_of_query) = match query {
        Some(q) => take_query_param(q, &settings.key_query_param),
        None => (None, None),
    };
    let key = header_key.as_deref().or(query_key.as_deref());
    let auth = routes.api(api).auth;
    let authorization = if auth.accepts_jwt() && !routes.api(api).public {
        headers.get(AUTHORIZATION_HEADER)?
    } else {
        None
    };
    let token = authorization.as_deref().and_then(bearer_token);
    let credential = match (auth, token, key) {
        (AuthMode::ApiKey, _, key) => Credential::ApiKey(key),
        (AuthMode::Jwt, token, _) => Credential::Bearer(token),
        (AuthMode::ApiKeyOrJwt, Some(token), _) => Credential::Bearer(Some(token)),
        (AuthMode::ApiKeyOrJwt, None, Some(key)) => Credential::ApiKey(Some(key)),
        (AuthMode::ApiKeyOrJwt, None, None) => Credential::Nothing,
    };

    let verdict = decide(
        routes,
        api,
        credential,
        now_ms,
        store,
        leases,
        &config.challenges,
    );
    let (reason, identity, response_headers, cas_retries) = match verdict {
        Verdict::Deny(denial) => return Ok(Handled::respond(denial)),
        Verdict::Public => (Reason::Public, None, Vec::new(), 0),
        Verdict::Allow {
            client,
            plan,
            subject,
            rate,
            cas_retries,
        } => (
            Reason::Allow,
            Some((client, plan, subject)),
            Vec::from(rate_limit_headers(&rate)),
            cas_retries,
        ),
    };

    // Forwarding: the upstream learns who called from us only. The subject header is managed
    // once the gateway trusts any token issuer (before that it sets none, and claims none).
    let manage_subject = !routes.issuers().is_empty();
    match identity {
        Some((client, plan, subject)) => {
            headers.set(CLIENT_HEADER, &client)?;
            headers.set(PLAN_HEADER, &plan)?;
            match subject {
                Some(subject) => headers.set(SUBJECT_HEADER, &subject)?,
                None if manage_subject => headers.remove(SUBJECT_HEADER)?,
                None => {}
            }
        }
        None => {
            headers.remove(CLIENT_HEADER)?;
            headers.remove(PLAN_HEADER)?;
            if manage_subject {
                headers.remove(SUBJECT_HEADER)?;
            }
        }
    }
    if !routes.api(api).forward_api_key {
        if header_key.is_some() {
            headers.remove(&settings.key_header)?;
        }
        if query_key.is_some() {
            let stripped = match rest_of_query {
                Some(rest) => format!("{path}?{rest}"),
                None => path.to_owned(),
            };
            headers.set(":path", &stripped)?;
        }
    }
    Ok(Handled {
        reason,
        outcome: Outcome::Forward { response_headers },
        cas_retries,
    })
}

#[cfg(test)]
mod tests;
