//! The OpenAPI document. Paths and bodies come from the handlers' annotations as the router is
//! built (utoipa-axum), so the document lists exactly the routes that exist; `core`'s snapshot
//! types and problem body document themselves (its `openapi` feature), so `/v1/snapshot` is
//! described by the very types the server serialises. This module adds what the annotations
//! cannot see: which token each path takes, and which bodies are optional.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::OpenApi as OpenApiDoc;
use utoipa::OpenApi;

use tollgate_core::fleet::{LEASE_PATH, RETURN_PATH};

use super::SNAPSHOT_PATH;
use crate::error::Problem;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tollgate control plane",
        description = "Catalogue management (`/v1/*`, admin token or management token), the \
                       signed gateway snapshot (`/v1/snapshot`, gateway token), the lease broker \
                       of fleet-wide limits (`/gateway/v1/leases`, gateway token, with `serve \
                       --redis`), and the OAuth 2.0 token issuer (`/oauth/token`, \
                       `/.well-known/jwks.json`). Errors are \
                       `application/problem+json` with a stable `type` \
                       `urn:tollgate:problem:<kind>`."
    ),
    components(schemas(Problem))
)]
pub struct ApiDoc;

pub const ADMIN_TOKEN: &str = "admin_token";
pub const GATEWAY_TOKEN: &str = "gateway_token";

/// Declares both bearer schemes and marks each operation with the one the router enforces:
/// the gateway token on `/v1/snapshot` and `/gateway/v1/leases[/returns]`, the admin token on every
/// other `/v1` path, none elsewhere.
pub fn add_security(doc: &mut OpenApiDoc) {
    let components = doc.components.get_or_insert_with(Default::default);
    for (name, description) in [
        (
            ADMIN_TOKEN,
            "Admin token (TOLLGATE_ADMIN_TOKEN or <data-dir>/admin-token), or a management \
             token from POST /oauth/token with a service account's credentials: scope \
             tollgate:admin for every request, tollgate:read for GET only (else 403)",
        ),
        (
            GATEWAY_TOKEN,
            "Gateway token: TOLLGATE_GATEWAY_TOKEN or <data-dir>/gateway-token",
        ),
    ] {
        components.add_security_scheme(
            name,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(description))
                    .build(),
            ),
        );
    }
    for (path, item) in doc.paths.paths.iter_mut() {
        let scheme = if path == SNAPSHOT_PATH || path == LEASE_PATH || path == RETURN_PATH {
            GATEWAY_TOKEN
        } else if path.starts_with("/v1/") {
            ADMIN_TOKEN
        } else {
            continue;
        };
        for operation in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            operation.security = Some(vec![SecurityRequirement::new(scheme, Vec::<String>::new())]);
        }
    }
}

/// Paths whose JSON body may be omitted (utoipa marks every `$ref` body required).
pub const OPTIONAL_BODIES: [&str; 1] =
    ["/v1/orgs/{org}/clients/{client}/versions/{version}/credentials"];

pub fn mark_optional_bodies(doc: &mut OpenApiDoc) {
    for path in OPTIONAL_BODIES {
        if let Some(item) = doc.paths.paths.get_mut(path) {
            if let Some(utoipa::openapi::RefOr::T(body)) =
                item.post.as_mut().and_then(|o| o.request_body.as_mut())
            {
                body.required = Some(utoipa::openapi::Required::False);
            }
        }
    }
}

/// Documented error answers, shared by the path annotations. Each is a problem+json body; the
/// operation's description names the `type` kinds it can answer.
pub mod problems {
    use crate::error::Problem;
    use utoipa::IntoResponses;

    /// invalid-body (malformed JSON, unknown or missing field) or invalid-field (bad id,
    /// version, routing, cursor)
    #[derive(IntoResponses)]
    #[response(status = 400, content_type = "application/problem+json")]
    pub struct BadRequest(pub Problem);

    /// not-found: a resource in the path or the body does not exist
    #[derive(IntoResponses)]
    #[response(status = 404, content_type = "application/problem+json")]
    pub struct NotFound(pub Problem);

    /// A lifecycle or uniqueness rule refuses the change (see the operation for its kinds)
    #[derive(IntoResponses)]
    #[response(status = 409, content_type = "application/problem+json")]
    pub struct Conflict(pub Problem);

    /// payload-too-large: the body exceeds this path's limit (1 MiB; 64 MiB for apply)
    #[derive(IntoResponses)]
    #[response(status = 413, content_type = "application/problem+json")]
    pub struct TooLarge(pub Problem);

    /// Well-formed but semantically invalid input (see the operation for its kinds)
    #[derive(IntoResponses)]
    #[response(status = 422, content_type = "application/problem+json")]
    pub struct Unprocessable(pub Problem);

    /// fleet-off: this control plane runs without `--redis` (counts are per gateway)
    #[derive(IntoResponses)]
    #[response(status = 404, content_type = "application/problem+json")]
    pub struct FleetOff(pub Problem);

    /// redis-unavailable: Redis failed or did not answer within 100 ms; nothing was granted
    #[derive(IntoResponses)]
    #[response(status = 503, content_type = "application/problem+json")]
    pub struct RedisUnavailable(pub Problem);

    /// unauthorized: missing or wrong bearer token
    #[derive(IntoResponses)]
    #[response(status = 401, content_type = "application/problem+json")]
    pub struct Unauthorized(pub Problem);
}
