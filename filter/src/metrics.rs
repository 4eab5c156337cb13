//! The filter's counters, defined once per VM through proxy-wasm `define_metric`.
//!
//! Envoy files them under the `wasmcustom` stat namespace; a decision is part of the name
//! (`tollgate_requests_total.decision.allow`) and the Envoy configurations we ship turn it into
//! a `decision` tag, so `/stats/prometheus` shows `tollgate_requests_total{decision="allow"}`.

use proxy_wasm::hostcalls::define_metric;
use proxy_wasm::types::MetricType;
use tollgate_core::decision::Reason;

use crate::host::increment_metric;

pub struct Metrics {
    requests: [Option<u32>; Reason::ALL.len()],
    cas_retries: Option<u32>,
    host_errors: Option<u32>,
}

impl Metrics {
    /// Defines every counter; one that cannot be defined is logged and then not counted.
    pub fn define() -> Self {
        let counter = |name: String| match define_metric(MetricType::Counter, &name) {
            Ok(id) => Some(id),
            Err(status) => {
                log::warn!("tollgate: metric {name} not defined: {status:?}");
                None
            }
        };
        Metrics {
            requests: Reason::ALL
                .map(|r| counter(format!("tollgate_requests_total.decision.{}", r.label()))),
            cas_retries: counter("tollgate_cas_retries_total".to_owned()),
            host_errors: counter("tollgate_host_errors_total".to_owned()),
        }
    }

    pub fn request(&self, reason: Reason) {
        let slot = Reason::ALL.iter().position(|r| *r == reason);
        if let Some(Some(id)) = slot.and_then(|i| self.requests.get(i)) {
            increment_metric(*id);
        }
    }

    pub fn cas_retries(&self, n: u32) {
        if let Some(id) = self.cas_retries {
            for _ in 0..n {
                increment_metric(id);
            }
        }
    }

    pub fn host_error(&self) {
        if let Some(id) = self.host_errors {
            increment_metric(id);
        }
    }
}
