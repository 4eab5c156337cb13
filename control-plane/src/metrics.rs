//! Prometheus metrics of the control plane, served at `GET /metrics`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// A method HTTP defines, else `other`.
    pub method: &'static str,
    /// The matched route template (`/v1/orgs/{org}`), never the raw path: bounded cardinality.
    pub route: String,
    pub status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SnapshotLabels {
    /// `full` (200), `not_modified` (304 without waiting or after a wait timed out),
    /// `woken` (200 after a long poll saw a new revision), `page` (a `?cursor=` page), `delta` (a `?since=` delta).
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenRefusedLabels {
    /// The RFC 6749 error (`invalid_client`, `invalid_request`, `unsupported_grant_type`,
    /// `invalid_scope`), `throttled`, `payload_too_large` or `internal`.
    pub reason: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub snapshot_responses: Family<SnapshotLabels, Counter>,
    pub long_polls_waiting: Gauge,
    pub token_refusals: Family<TokenRefusedLabels, Counter>,
    revision: Gauge<u64, AtomicU64>,
    snapshot_bytes: Gauge<u64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tollgate");
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered by the control plane",
            http_requests.clone(),
        );
        let snapshot_responses = Family::<SnapshotLabels, Counter>::default();
        registry.register(
            "snapshot_responses",
            "Snapshot requests by outcome",
            snapshot_responses.clone(),
        );
        let long_polls_waiting = Gauge::default();
        registry.register(
            "snapshot_long_polls_waiting",
            "Gateways currently holding a snapshot long poll",
            long_polls_waiting.clone(),
        );
        let token_refusals = Family::<TokenRefusedLabels, Counter>::default();
        registry.register(
            "oauth_token_refused",
            "POST /oauth/token requests refused, by reason",
            token_refusals.clone(),
        );
        let revision = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "snapshot_revision",
            "Revision of the latest committed snapshot",
            revision.clone(),
        );
        let snapshot_bytes = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "snapshot_bytes",
            "Size of the latest snapshot body",
            snapshot_bytes.clone(),
        );
        Metrics {
            registry,
            http_requests,
            snapshot_responses,
            long_polls_waiting,
            token_refusals,
            revision,
            snapshot_bytes,
        }
    }

    pub fn snapshot_served(&self, outcome: &'static str) {
        self.snapshot_responses
            .get_or_create(&SnapshotLabels { outcome })
            .inc();
    }

    pub fn token_refused(&self, reason: &'static str) {
        self.token_refusals
            .get_or_create(&TokenRefusedLabels { reason })
            .inc();
    }

    /// The text exposition, with the snapshot gauges refreshed at scrape time.
    pub fn render(&self, revision: u64, snapshot_bytes: usize) -> String {
        self.revision.set(revision);
        self.snapshot_bytes.set(snapshot_bytes as u64);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
