//! Prometheus metrics of the control plane, served at `GET /metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::store::StoreFigures;

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

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LeaseLabels {
    /// `granted` (at least one unit), `exhausted` (a window had no room: granted 0),
    /// `returned` (units handed back) or `return_replayed` (a return applied before).
    pub outcome: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub snapshot_responses: Family<SnapshotLabels, Counter>,
    pub long_polls_waiting: Gauge,
    pub token_refusals: Family<TokenRefusedLabels, Counter>,
    pub lease_answers: Family<LeaseLabels, Counter>,
    pub units_granted: Counter,
    pub redis_errors: Counter,
    pub window_retries: Counter,
    pub grant_seconds: Histogram,
    revision: Gauge<u64, AtomicU64>,
    snapshot_bytes: Gauge<u64, AtomicU64>,
    buckets_rendered: Counter,
    checks: Counter,
    drift_repaired: Counter,
    refused_parts: Gauge<u64, AtomicU64>,
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
        let lease_answers = Family::<LeaseLabels, Counter>::default();
        registry.register(
            "fleet_lease_answers",
            "Lease requests the broker answered, by outcome",
            lease_answers.clone(),
        );
        let units_granted = Counter::default();
        registry.register(
            "fleet_units_granted",
            "Units of contracts' windows granted to gateways",
            units_granted.clone(),
        );
        let redis_errors = Counter::default();
        registry.register(
            "fleet_redis_errors",
            "Lease requests answered 503 because Redis failed or did not answer in time",
            redis_errors.clone(),
        );
        let window_retries = Counter::default();
        registry.register(
            "fleet_window_retries",
            "Grant steps Redis refused because a window had ended since the broker computed it",
            window_retries.clone(),
        );
        // 100 µs to about 1.6 s.
        let grant_seconds = Histogram::new(exponential_buckets(0.000_1, 2.0, 15));
        registry.register(
            "fleet_grant_seconds",
            "Time the broker took to answer a lease request, Redis included",
            grant_seconds.clone(),
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
            "Bytes of the stored key-directory buckets the latest revision is assembled from",
            snapshot_bytes.clone(),
        );
        let buckets_rendered = Counter::default();
        registry.register(
            "snapshot_buckets_rendered",
            "Key-directory buckets rendered from the catalogue by writes (a write renders those it touched)",
            buckets_rendered.clone(),
        );
        let checks = Counter::default();
        registry.register(
            "snapshot_consistency_checks",
            "Background comparisons of every stored bucket with the catalogue, finished",
            checks.clone(),
        );
        let drift_repaired = Counter::default();
        registry.register(
            "snapshot_drift_repaired",
            "Stored buckets a consistency check found differing from the catalogue, re-rendered",
            drift_repaired.clone(),
        );
        let refused_parts = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "snapshot_refused_parts",
            "Parts of the stored catalogue the latest check found gateways would refuse",
            refused_parts.clone(),
        );
        Metrics {
            registry,
            http_requests,
            snapshot_responses,
            long_polls_waiting,
            token_refusals,
            lease_answers,
            units_granted,
            redis_errors,
            window_retries,
            grant_seconds,
            revision,
            snapshot_bytes,
            buckets_rendered,
            checks,
            drift_repaired,
            refused_parts,
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

    /// The text exposition, with the snapshot figures refreshed at scrape time.
    pub fn render(&self, revision: u64, store: &StoreFigures) -> String {
        self.revision.set(revision);
        let bytes = store.stored_bytes.load(Ordering::Relaxed);
        self.snapshot_bytes.set(bytes.max(0) as u64);
        // The store counts; the counters here catch up with it (never backwards).
        for (counter, total) in [
            (&self.buckets_rendered, &store.buckets_rendered),
            (&self.checks, &store.checks),
            (&self.drift_repaired, &store.drift_repaired),
        ] {
            let total = total.load(Ordering::Relaxed);
            counter.inc_by(total.saturating_sub(counter.get()));
        }
        self.refused_parts
            .set(store.refused_pages.load(Ordering::Relaxed));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
