//! The gateway's decision for one request to a matched API version.

use crate::config::RateLimitHeaders;
use crate::fleet::GrantWanted;
use crate::index::{ApiRef, RouteIndex};
use crate::keydir::{bucket_key, bucket_of, find};
use crate::keys::key_digest;
use crate::lease::LeaseBook;
use crate::limits::{counter_key, Admission, CountError, RateStatus};
use crate::problem::Problem;
use crate::shared::SharedStore;
use crate::snapshot::{ApiStatus, RateLimit};
use crate::time::window;
use crate::token::subject_digest;

/// Why a request was answered the way it was; also the `decision` label of the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    Allow,
    Public,
    Unmatched,
    NoRoute,
    BadPath,
    MissingKey,
    InvalidKey,
    MissingToken,
    InvalidToken,
    NoContract,
    RateLimited,
    Retired,
    NotConfigured,
    CounterUnavailable,
}

impl Reason {
    pub const ALL: [Reason; 14] = [
        Reason::Allow,
        Reason::Public,
        Reason::Unmatched,
        Reason::NoRoute,
        Reason::BadPath,
        Reason::MissingKey,
        Reason::InvalidKey,
        Reason::MissingToken,
        Reason::InvalidToken,
        Reason::NoContract,
        Reason::RateLimited,
        Reason::Retired,
        Reason::NotConfigured,
        Reason::CounterUnavailable,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Reason::Allow => "allow",
            Reason::Public => "public",
            Reason::Unmatched => "unmatched",
            Reason::NoRoute => "no_route",
            Reason::BadPath => "bad_path",
            Reason::MissingKey => "missing_key",
            Reason::InvalidKey => "invalid_key",
            Reason::MissingToken => "missing_token",
            Reason::InvalidToken => "invalid_token",
            Reason::NoContract => "no_contract",
            Reason::RateLimited => "rate_limited",
            Reason::Retired => "retired",
            Reason::NotConfigured => "not_configured",
            Reason::CounterUnavailable => "counter_unavailable",
        }
    }
}

/// A response the gateway answers itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub reason: Reason,
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub problem: Problem,
    /// The contract a rate-limited request was counted against (for usage).
    pub contract: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A public API: no key needed, no identity, no limits.
    Public,
    /// A contract admitted the request and counted it.
    Allow {
        contract: u64,
        client: String,
        plan: String,
        /// The verified `sub` of a bearer token (principal propagation).
        subject: Option<String>,
        rate: RateStatus,
        cas_retries: u32,
    },
    Deny(Denial),
    /// Counting fleet-wide, this gateway's grant for the contract is spent: ask the broker,
    /// then decide again (nothing was counted).
    Wait(GrantWanted),
}

/// What the caller presented, as the API version's `auth` mode reads the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential<'r> {
    /// An API key (`None`: none was sent).
    ApiKey(Option<&'r str>),
    /// A bearer token (`None`: none was sent, on an API that needs one).
    Bearer(Option<&'r str>),
    /// Neither, on an API that accepts either.
    Nothing,
}

/// The challenges a 401 carries and the rate-limit headers style, built once from the
/// configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenges {
    /// `APIKey realm="tollgate", header="<key header>"`
    pub api_key: String,
    pub rate_limit_headers: RateLimitHeaders,
}

const BEARER_CHALLENGE: &str = "Bearer realm=\"tollgate\"";

/// Decides a request to `api`, counting it if it is admitted: the credential is looked up in
/// the shared key directory, the request admitted from this worker's lease on its contract's
/// counter or the lease refilled from the counter in shared data.
pub fn decide<S: SharedStore + ?Sized>(
    routes: &RouteIndex,
    api: ApiRef,
    credential: Credential<'_>,
    now_ms: u64,
    store: &mut S,
    leases: &mut LeaseBook,
    challenges: &Challenges,
) -> Verdict {
    let route = routes.api(api);
    if route.status == ApiStatus::Retired {
        return Verdict::Deny(deny(
            Reason::Retired,
            Problem::new(
                "api-retired",
                "API version retired",
                410,
                format!("API version {} has been retired", route.id),
            ),
        ));
    }
    if route.public {
        return Verdict::Public;
    }
    let unauthorized = |reason, kind, detail: &str, challenge: Vec<String>| {
        let mut d = deny(
            reason,
            Problem::new(kind, "Unauthorized", 401, detail.to_owned()),
        );
        d.headers
            .extend(challenge.into_iter().map(|c| ("www-authenticate", c)));
        Verdict::Deny(d)
    };
    let api_key_challenge = || vec![challenges.api_key.clone()];

    // Who is calling: a directory digest, and for tokens the verified principal.
    let (digest, subject, invalid_detail): (_, Option<String>, &str) = match credential {
        Credential::ApiKey(Some(k)) if !k.is_empty() => {
            (key_digest(k), None, "the API key is not valid")
        }
        Credential::ApiKey(_) => {
            return unauthorized(
                Reason::MissingKey,
                "missing-api-key",
                "this API requires an API key",
                api_key_challenge(),
            )
        }
        Credential::Bearer(Some(token)) => match routes.issuers().verify(token, now_ms) {
            Ok(v) => (
                subject_digest(&v.issuer, &v.client_subject),
                v.subject,
                "the token's client has no access here",
            ),
            Err(rejected) => {
                return unauthorized(
                    Reason::InvalidToken,
                    "invalid-token",
                    &rejected.to_string(),
                    vec![format!(
                    "{BEARER_CHALLENGE}, error=\"invalid_token\", error_description=\"{rejected}\""
                )],
                )
            }
        },
        Credential::Bearer(None) => {
            return unauthorized(
                Reason::MissingToken,
                "missing-token",
                "this API requires a bearer token",
                vec![BEARER_CHALLENGE.to_owned()],
            )
        }
        Credential::Nothing => {
            return unauthorized(
                Reason::MissingKey,
                "missing-credentials",
                "this API requires an API key or a bearer token",
                vec![challenges.api_key.clone(), BEARER_CHALLENGE.to_owned()],
            )
        }
    };
    let bearer = matches!(credential, Credential::Bearer(_));
    let invalid = |detail: &str| {
        if bearer {
            unauthorized(
                Reason::InvalidToken,
                "invalid-token",
                detail,
                vec![format!(
                    "{BEARER_CHALLENGE}, error=\"invalid_token\", error_description=\"{detail}\""
                )],
            )
        } else {
            unauthorized(
                Reason::InvalidKey,
                "invalid-api-key",
                detail,
                api_key_challenge(),
            )
        }
    };

    let bucket = match store.get(&bucket_key(bucket_of(&digest))) {
        Ok(found) => found.map(|(bytes, _)| bytes).unwrap_or_default(),
        Err(e) => return counter_unavailable(CountError::Store(e)),
    };
    let Some(found) = find(&bucket, &digest) else {
        return invalid(invalid_detail);
    };
    if found.expires_at.is_some_and(|at| now_ms / 1000 >= at) {
        return invalid("the API key has expired");
    }
    let Some(grant) = found.grant_for(&route.id) else {
        return Verdict::Deny(deny(
            Reason::NoContract,
            Problem::new(
                "no-contract",
                "Forbidden",
                403,
                format!("this client has no contract for API version {}", route.id),
            ),
        ));
    };
    let limits = grant.limits.to_vec();
    match leases.admit(store, &counter_key(grant.contract), &limits, now_ms) {
        Ok(counted) => match counted.admission {
            Admission::Admitted(rate) => Verdict::Allow {
                contract: grant.contract,
                client: found.client.to_owned(),
                plan: grant.plan.to_owned(),
                subject,
                rate,
                cas_retries: counted.cas_retries,
            },
            Admission::Starved { want, held } => Verdict::Wait(GrantWanted {
                contract: grant.contract,
                held: held[..limits.len()].to_vec(),
                limits,
                want,
            }),
            Admission::Rejected {
                status,
                retry_after,
            } => {
                let mut d = deny(
                    Reason::RateLimited,
                    Problem::new(
                        "rate-limited",
                        "Too Many Requests",
                        429,
                        format!(
                            "plan {} allows {} requests in this window; retry in {retry_after} s",
                            grant.plan, status.limit
                        ),
                    ),
                );
                d.headers
                    .extend(rate_limit_headers(challenges.rate_limit_headers, &status));
                if challenges.rate_limit_headers == RateLimitHeaders::Ietf {
                    d.headers
                        .push(("ratelimit-policy", policy(&limits, &status, now_ms)));
                }
                d.headers.push(("retry-after", retry_after.to_string()));
                d.contract = Some(grant.contract);
                Verdict::Deny(d)
            }
        },
        Err(e) => counter_unavailable(e),
    }
}

fn counter_unavailable(e: CountError) -> Verdict {
    let detail = match e {
        CountError::Store(err) => format!("shared data unavailable: {}", err.0),
        CountError::Contention => {
            "rate-limit counter busy; the request was not admitted".to_owned()
        }
    };
    Verdict::Deny(deny(
        Reason::CounterUnavailable,
        Problem::new("counter-unavailable", "Service Unavailable", 503, detail),
    ))
}

/// The rate-limit headers of a response for the most constraining limit, in `style`:
/// `X-RateLimit-Limit`, `-Remaining`, `-Reset`; or the IETF draft's one
/// `RateLimit: "tollgate";r=<remaining>;t=<seconds to reset>`; or none.
pub fn rate_limit_headers(style: RateLimitHeaders, s: &RateStatus) -> Vec<(&'static str, String)> {
    match style {
        RateLimitHeaders::XRateLimit => vec![
            ("x-ratelimit-limit", s.limit.to_string()),
            ("x-ratelimit-remaining", s.remaining.to_string()),
            ("x-ratelimit-reset", s.reset.to_string()),
        ],
        RateLimitHeaders::Ietf => vec![(
            "ratelimit",
            format!("\"{IETF_POLICY}\";r={};t={}", s.remaining, s.reset),
        )],
        RateLimitHeaders::None => Vec::new(),
    }
}

/// The policy name of the IETF fields: one name, the limit the response describes.
const IETF_POLICY: &str = "tollgate";

/// `RateLimit-Policy: "tollgate";q=<quota>;w=<window seconds>` for the exhausted limit of a
/// 429: the limit with `status.limit` requests whose window ends last (as `count_request`
/// picks it), its current window's length (months vary).
fn policy(limits: &[RateLimit], status: &RateStatus, now_ms: u64) -> String {
    let seconds = limits
        .iter()
        .filter(|l| l.requests == status.limit)
        .map(|l| window(l.per, now_ms))
        .max_by_key(|w| w.end)
        .map_or(0, |w| w.end - w.start);
    format!("\"{IETF_POLICY}\";q={};w={seconds}", status.limit)
}

/// 503 before any catalogue is loaded (failure mode "closed").
pub fn not_configured() -> Denial {
    deny(
        Reason::NotConfigured,
        Problem::new(
            "not-configured",
            "Service Unavailable",
            503,
            "the gateway has not loaded its configuration yet",
        ),
    )
}

/// A denial with only the problem body and its content type.
pub fn deny(reason: Reason, problem: Problem) -> Denial {
    Denial {
        reason,
        status: problem.status,
        headers: Vec::new(),
        problem,
        contract: None,
    }
}

#[cfg(test)]
mod tests;
