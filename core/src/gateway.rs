//! One request through the gateway, over a small trait for the host's request headers so the
//! whole flow (routing, key extraction, stripping, identity headers, verdict) runs natively in
//! tests; the filter implements the trait with proxy-wasm host calls.

use std::borrow::Cow;
use std::sync::Arc;

use crate::config::{FailureMode, FilterConfig, LoadedConfig, Unmatched};
use crate::decision::{
    decide, deny, not_configured, rate_limit_headers, Credential, Denial, Reason, Verdict,
};
use crate::fleet::GrantWanted;
use crate::header_map::HeaderBlock;
use crate::lease::LeaseBook;
use crate::path::{is_normal, keep_first_param, split_query, take_query_param, without_parameters};
use crate::problem::Problem;
use crate::shared::{SharedStore, StoreError};
use crate::snapshot::AuthMode;

pub const CLIENT_HEADER: &str = "x-tollgate-client";
pub const PLAN_HEADER: &str = "x-tollgate-plan";
/// The verified `sub` of a bearer token.
pub const SUBJECT_HEADER: &str = "x-tollgate-subject";
pub const AUTHORIZATION_HEADER: &str = "authorization";
/// Every request header with this prefix is tollgate's to set: whatever a caller sent under it
/// is removed from every forwarded request.
pub const OWN_HEADER_PREFIX: &str = "x-tollgate-";

/// The token of an `Authorization: Bearer <token>` value (scheme case-insensitive).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The request headers of the request being decided.
pub trait RequestHeaders {
    /// Every header, in one read (one host call in the filter).
    fn all(&mut self) -> Result<HeaderBlock, StoreError>;
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
    fn all(&mut self) -> Result<HeaderBlock, StoreError> {
        HeaderBlock::decode(HeaderBlock::encode(&self.0))
            .map_err(|_| StoreError("the header list did not encode".into()))
    }
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
    /// Hold the request until the broker has granted this, then handle it again (nothing was
    /// counted and no header changed).
    Wait(GrantWanted),
}

/// What happened to a request, for the response and for the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handled {
    pub reason: Reason,
    pub outcome: Outcome,
    pub cas_retries: u32,
    /// The API version that served the path (`None`: none did, or no catalogue yet).
    pub api: Option<Arc<str>>,
    /// The contract the request was counted against (allowed or rate limited).
    pub contract: Option<u64>,
}

impl Handled {
    fn forward(reason: Reason, response_headers: Vec<(&'static str, String)>) -> Self {
        Handled {
            reason,
            outcome: Outcome::Forward { response_headers },
            cas_retries: 0,
            api: None,
            contract: None,
        }
    }

    fn respond(denial: Denial) -> Self {
        Handled {
            reason: denial.reason,
            contract: denial.contract,
            outcome: Outcome::Respond(denial),
            cas_retries: 0,
            api: None,
        }
    }

    /// The same, for API version `api`.
    fn on(mut self, api: &Arc<str>) -> Self {
        self.api = Some(api.clone());
        self
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
    // One read of every header: the path, host, key and token come from it, and so do the
    // names of the `x-tollgate-*` headers the caller sent, which are removed on every path.
    let block = headers.all()?;
    let Some(routes) = &config.routes else {
        return Ok(match settings.failure_mode {
            FailureMode::Open => {
                // Unchecked, but never with a forged identity, and the key goes no further than
                // it would by default (no API is known, so none forwards it).
                strip_unchecked(&block, settings, headers)?;
                Handled::forward(Reason::NotConfigured, Vec::new())
            }
            FailureMode::Closed => Handled::respond(not_configured()),
        });
    };

    let raw_path = block.get(":path").unwrap_or_default();
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
    let authority = if routes.routes_by_host() {
        block.get(":authority").unwrap_or_default()
    } else {
        Cow::Borrowed("")
    };
    let Some(api) = routes.route(&authority, &effective) else {
        return Ok(match settings.unmatched {
            Unmatched::Pass => {
                strip_unchecked(&block, settings, headers)?;
                Handled::forward(Reason::Unmatched, Vec::new())
            }
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
    let header_key = block.get(&settings.key_header);
    let (query_key, rest_of_query) = match query {
        Some(q) => take_query_param(q, &settings.key_query_param),
        None => (None, None),
    };
    let key = header_key.as_deref().or(query_key.as_deref());
    let route = routes.api(api);
    let auth = route.auth;
    let authorization = if auth.accepts_jwt() && !route.public {
        block.get(AUTHORIZATION_HEADER)
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
    // The key the upstream may see: only the one that was read (and, on a private API,
    // checked), and only when the API version forwards keys.
    let forwarded_key = route.forward_api_key && !matches!(credential, Credential::Bearer(_));

    let verdict = decide(
        routes,
        api,
        credential,
        now_ms,
        store,
        leases,
        &config.challenges,
    );
    let (reason, identity, response_headers, cas_retries, contract) = match verdict {
        Verdict::Deny(denial) => return Ok(Handled::respond(denial).on(&route.id)),
        Verdict::Wait(wanted) => {
            return Ok(Handled {
                reason: Reason::Allow,
                contract: Some(wanted.contract),
                outcome: Outcome::Wait(wanted),
                cas_retries: 0,
                api: Some(route.id.clone()),
            })
        }
        Verdict::Public => (Reason::Public, None, Vec::new(), 0, None),
        Verdict::Allow {
            contract,
            client,
            plan,
            subject,
            rate,
            cas_retries,
        } => (
            Reason::Allow,
            Some((client, plan, subject)),
            rate_limit_headers(settings.rate_limit_headers, &rate),
            cas_retries,
            Some(contract),
        ),
    };

    // Forwarding: the upstream learns who called from us only.
    let mut ours: [&str; 3] = ["", "", ""];
    if let Some((client, plan, subject)) = &identity {
        headers.set(CLIENT_HEADER, client)?;
        headers.set(PLAN_HEADER, plan)?;
        ours[0] = CLIENT_HEADER;
        ours[1] = PLAN_HEADER;
        if let Some(subject) = subject {
            headers.set(SUBJECT_HEADER, subject)?;
            ours[2] = SUBJECT_HEADER;
        }
    }
    remove_own_headers(&block, &ours, headers)?;

    if !forwarded_key {
        if header_key.is_some() {
            headers.remove(&settings.key_header)?;
        }
        if query_key.is_some() {
            headers.set(":path", &path_with_query(path, rest_of_query.as_deref()))?;
        }
    } else if let Some(checked) = header_key.as_deref() {
        // The header's first value was read: a repeat or a query parameter beside it would
        // reach the upstream unchecked.
        if block.count_of(&settings.key_header) > 1 {
            headers.set(&settings.key_header, checked)?;
        }
        if query_key.is_some() {
            headers.set(":path", &path_with_query(path, rest_of_query.as_deref()))?;
        }
    } else if let Some(kept) = query.and_then(|q| keep_first_param(q, &settings.key_query_param)) {
        headers.set(":path", &path_with_query(path, Some(&kept)))?;
    }
    Ok(Handled {
        reason,
        outcome: Outcome::Forward { response_headers },
        cas_retries,
        api: Some(route.id.clone()),
        contract,
    })
}

fn path_with_query(path: &str, query: Option<&str>) -> String {
    match query {
        Some(rest) => format!("{path}?{rest}"),
        None => path.to_owned(),
    }
}

/// Removes every `x-tollgate-*` header the caller sent except those in `keep` (which tollgate
/// has just set), each name once.
fn remove_own_headers<H: RequestHeaders + ?Sized>(
    block: &HeaderBlock,
    keep: &[&str],
    headers: &mut H,
) -> Result<(), StoreError> {
    let prefix = OWN_HEADER_PREFIX.as_bytes();
    for (i, (name, _)) in block.entries().enumerate() {
        let ours = name.len() >= prefix.len()
            && name
                .get(..prefix.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(prefix));
        if !ours || keep.iter().any(|k| k.as_bytes() == name) {
            continue;
        }
        // Once per name: the host's remove takes every value.
        if block.entries().take(i).any(|(earlier, _)| earlier == name) {
            continue;
        }
        headers.remove(&String::from_utf8_lossy(name))?;
    }
    Ok(())
}

/// A request forwarded without a check (unmatched with `pass`, or before any configuration
/// with `failure_mode: open`): no `x-tollgate-*` header, and neither tollgate's key header
/// nor its key parameter, reach the upstream.
fn strip_unchecked<H: RequestHeaders + ?Sized>(
    block: &HeaderBlock,
    settings: &FilterConfig,
    headers: &mut H,
) -> Result<(), StoreError> {
    remove_own_headers(block, &[], headers)?;
    if block.get(&settings.key_header).is_some() {
        headers.remove(&settings.key_header)?;
    }
    let raw_path = block.get(":path").unwrap_or_default();
    if let (path, Some(query)) = split_query(&raw_path) {
        if let (Some(_), rest) = take_query_param(query, &settings.key_query_param) {
            headers.set(":path", &path_with_query(path, rest.as_deref()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
