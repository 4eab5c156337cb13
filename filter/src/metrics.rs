//! The filter's counters, defined once per VM through proxy-wasm `define_metric`.
//!
//! Envoy files them under the `wasmcustom` stat namespace; a decision is part of the name
//! (`tollgate_requests_total.decision.allow`) and the Envoy configurations we ship turn it into
//! a `decision` tag, so `/stats/prometheus` shows `tollgate_requests_total{decision="allow"}`.

use std::cell::Cell;

use proxy_wasm::hostcalls::define_metric;
use proxy_wasm::types::MetricType;
use tollgate_core::decision::Reason;

use crate::host::{increment_metric, record_metric};

/// A defined metric; one that could not be defined is logged once and then not counted.
#[derive(Clone, Copy)]
pub struct Metric(Option<u32>);

impl Metric {
    fn define(kind: MetricType, name: &str) -> Self {
        match define_metric(kind, name) {
            Ok(id) => Metric(Some(id)),
            Err(status) => {
                log::warn!("tollgate: metric {name} not defined: {status:?}");
                Metric(None)
            }
        }
    }

    pub fn counter(name: &str) -> Self {
        Self::define(MetricType::Counter, name)
    }

    pub fn gauge(name: &str) -> Self {
        Self::define(MetricType::Gauge, name)
    }

    pub fn add(self, n: u32) {
        if let (Some(id), true) = (self.0, n > 0) {
            increment_metric(id, n);
        }
    }

    pub fn inc(self) {
        self.add(1);
    }

    pub fn set(self, value: u64) {
        if let Some(id) = self.0 {
            record_metric(id, value);
        }
    }
}

/// What every worker counts. Request decisions are tallied in the VM and handed to Envoy on
/// the worker's tick ([`RequestMetrics::flush`]): one host call per decision per tick instead of
/// one per request, on a path where every host call shows in the cost.
pub struct RequestMetrics {
    by_reason: [Metric; Reason::ALL.len()],
    pending: [Cell<u32>; Reason::ALL.len()],
    pending_cas_retries: Cell<u32>,
    pub cas_retries: Metric,
    pub host_errors: Metric,
    pub snapshots_adopted: Metric,
    key_cache_hits: Metric,
    key_cache_misses: Metric,
    /// Fleet-wide counting: grants asked for and answered, and asks that failed.
    pub fleet_grants: Metric,
    pub fleet_broker_failures: Metric,
    /// Returns of unused units sent to the broker.
    pub fleet_returns: Metric,
}

impl RequestMetrics {
    pub fn define() -> Self {
        RequestMetrics {
            by_reason: Reason::ALL.map(|r| {
                Metric::counter(&format!("tollgate_requests_total.decision.{}", r.label()))
            }),
            pending: Default::default(),
            pending_cas_retries: Cell::new(0),
            cas_retries: Metric::counter("tollgate_cas_retries_total"),
            host_errors: Metric::counter("tollgate_host_errors_total"),
            snapshots_adopted: Metric::counter("tollgate_snapshot_adoptions_total"),
            key_cache_hits: Metric::counter("tollgate_key_cache_hits_total"),
            key_cache_misses: Metric::counter("tollgate_key_cache_misses_total"),
            fleet_grants: Metric::counter("tollgate_fleet_grants_total"),
            fleet_broker_failures: Metric::counter("tollgate_fleet_broker_failures_total"),
            fleet_returns: Metric::counter("tollgate_fleet_returns_total"),
        }
    }

    pub fn request(&self, reason: Reason, cas_retries: u32) {
        if let Some(n) = Reason::ALL
            .iter()
            .position(|r| *r == reason)
            .and_then(|i| self.pending.get(i))
        {
            n.set(n.get().saturating_add(1));
        }
        self.pending_cas_retries
            .set(self.pending_cas_retries.get().saturating_add(cas_retries));
    }

    /// The worker's bucket-cache tallies since the last tick.
    pub fn key_cache(&self, hits: u64, misses: u64) {
        self.key_cache_hits
            .add(u32::try_from(hits).unwrap_or(u32::MAX));
        self.key_cache_misses
            .add(u32::try_from(misses).unwrap_or(u32::MAX));
    }

    /// Hands the tallies to Envoy.
    pub fn flush(&self) {
        for (metric, n) in self.by_reason.iter().zip(&self.pending) {
            metric.add(n.take());
        }
        self.cas_retries.add(self.pending_cas_retries.take());
    }
}

/// What the snapshot poller counts.
pub struct PollerMetrics {
    pub updates: Metric,
    pub rejected: Metric,
    /// The subset of `rejected` the replay guard refused (an older revision, a delta from
    /// another revision, a page out of order, an answer older than the maximum age).
    pub replayed: Metric,
    pub fetch_errors: Metric,
    pub revision: Metric,
}

impl PollerMetrics {
    pub fn define() -> Self {
        PollerMetrics {
            updates: Metric::counter("tollgate_snapshot_updates_total"),
            rejected: Metric::counter("tollgate_snapshot_rejected_total"),
            replayed: Metric::counter("tollgate_snapshot_replayed_total"),
            fetch_errors: Metric::counter("tollgate_snapshot_fetch_errors_total"),
            revision: Metric::gauge("tollgate_snapshot_revision"),
        }
    }
}

/// What the singleton counts of usage reporting.
pub struct UsageMetrics {
    /// Reports the control plane acknowledged.
    pub reports: Metric,
    /// Reports not sent or not acknowledged (each is sent again).
    pub failures: Metric,
    /// Rows given up (a full outbox, a refused report); never silently.
    pub dropped: Metric,
    /// Reports waiting for an acknowledgement.
    pub unacknowledged: Metric,
}

impl UsageMetrics {
    pub fn define() -> Self {
        UsageMetrics {
            reports: Metric::counter("tollgate_usage_reports_total"),
            failures: Metric::counter("tollgate_usage_report_failures_total"),
            dropped: Metric::counter("tollgate_usage_dropped_rows_total"),
            unacknowledged: Metric::gauge("tollgate_usage_unacknowledged_reports"),
        }
    }
}
