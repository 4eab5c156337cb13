//! The snapshot poller: one per Envoy process (a singleton WasmService on the main thread).
//!
//! It long-polls the control plane (`GET <path>?since=<held>&wait=<s>`), verifies each
//! snapshot's Ed25519 signature and signed issue time, compiles it, checks that it moves the
//! gateway forward ([`Sequence`]: never to an older revision, a delta only over the revision it
//! names, pages in order), and only then publishes it into shared data, where every worker
//! picks it up on its next refresh tick. Anything else (an error status, a timeout, a bad
//! signature, bad JSON, an unknown schema, a replayed or too old answer) keeps the last good
//! snapshot, is logged and counted, and is retried with capped exponential backoff and jitter.
//!
//! The gateway token comes from the environment Envoy gives the module (`host_env_keys`),
//! never from the plugin configuration, which Envoy's admin interface prints.

use std::time::Duration;

use proxy_wasm::hostcalls::{dispatch_http_call, set_tick_period};
use tollgate_core::config::{ConfigError, ControlPlane, LoadedConfig};
use tollgate_core::distribution::{
    note_changed_buckets, publish_changes, publish_directory, publish_routes, verify_snapshot,
    Backoff, Sequence, Step,
};
use tollgate_core::gateway::RequestHeaders;
use tollgate_core::keycache::Changed;
use tollgate_core::signing::{TrustedKeys, SIGNATURE_HEADER};

use crate::host::{self, HeaderMap, SharedData};
use crate::metrics::PollerMetrics;
use crate::usage::Shipper;

/// How often the poller checks whether a retry is due.
const TICK: Duration = Duration::from_millis(50);
/// Extra time a long poll may take beyond the wait the control plane was asked for.
const POLL_SLACK: Duration = Duration::from_secs(5);

pub struct Poller {
    control_plane: ControlPlane,
    metrics: PollerMetrics,
    backoff: Backoff,
    /// `Bearer <gateway token>`.
    authorization: String,
    trusted_keys: TrustedKeys,
    /// The revision held (sent as `since` and `If-None-Match`) and the one being assembled.
    sequence: Sequence,
    /// The cursor of the next page of the revision being received.
    next_page: Option<String>,
    in_flight: Option<u32>,
    next_poll_at_ms: u64,
    /// The key-directory buckets the revision being received changes (over all its pages),
    /// published with it so that workers evict exactly those from their caches.
    changed: Changed,
    /// Usage reporting (`usage` on): the workers' tallies, shipped to the control plane.
    usage: Option<Shipper>,
}

impl Poller {
    pub fn configure(bytes: &[u8]) -> Result<Self, ConfigError> {
        let config = LoadedConfig::parse(bytes)?.config;
        let usage_on = config.settings.usage;
        let Some(control_plane) = config.settings.control_plane else {
            return Err(ConfigError {
                field: "control_plane".into(),
                message: "the tollgate-poller service needs a control_plane to poll".into(),
            });
        };
        let config_error = |field: &str, message: String| ConfigError {
            field: format!("control_plane.{field}"),
            message,
        };
        let trusted_keys = control_plane
            .trusted_keys()
            .map_err(|e| config_error("snapshot_public_keys", e.to_string()))?;
        let authorization = host::gateway_authorization(&control_plane)
            .map_err(|message| config_error("gateway_token_env", message))?;
        if let Err(status) = set_tick_period(TICK) {
            log::warn!("tollgate poller: cannot schedule polling: {status:?}");
        }
        log::info!(
            "tollgate poller: polling cluster {} at {}{}",
            control_plane.cluster,
            control_plane.authority,
            control_plane.path
        );
        Ok(Poller {
            usage: usage_on.then(|| Shipper::new(&control_plane)),
            backoff: Backoff::new(control_plane.retry_initial_ms, control_plane.retry_max_ms),
            authorization,
            trusted_keys,
            control_plane,
            metrics: PollerMetrics::define(),
            sequence: Sequence::default(),
            next_page: None,
            in_flight: None,
            next_poll_at_ms: 0,
            changed: Changed::none(),
        })
    }

    pub fn on_tick(&mut self) {
        let now = host::now_ms().unwrap_or(u64::MAX);
        if self.in_flight.is_none() && now >= self.next_poll_at_ms {
            self.poll();
        }
        if let Some(usage) = &mut self.usage {
            usage.on_tick(&self.control_plane, &self.authorization, now);
        }
    }

    /// A worker handed over a usage tally.
    pub fn on_queue_ready(&mut self, queue: u32) {
        if let Some(usage) = &mut self.usage {
            usage.on_queue_ready(queue);
        }
    }

    fn poll(&mut self) {
        let cp = &self.control_plane;
        let (path, if_none_match) = match (&self.next_page, self.sequence.held()) {
            // The rest of a revision that arrives in pages.
            (Some(cursor), _) => (format!("{}?cursor={cursor}", cp.path), None),
            // With a snapshot in hand, wait for a newer one and take only what changed since
            // (the key-directory buckets it touched, plus routes and issuers).
            (None, Some(rev)) => (
                format!("{}?since={rev}&wait={}", cp.path, cp.poll_timeout_seconds),
                Some(format!("\"{rev}\"")),
            ),
            (None, None) => (cp.path.clone(), None),
        };
        let mut headers = vec![
            (":method", "GET"),
            (":path", path.as_str()),
            (":authority", cp.authority.as_str()),
            ("authorization", self.authorization.as_str()),
        ];
        if let Some(etag) = &if_none_match {
            headers.push(("if-none-match", etag.as_str()));
        }
        let timeout = Duration::from_secs(u64::from(cp.poll_timeout_seconds)) + POLL_SLACK;
        match dispatch_http_call(&cp.cluster, headers, None, Vec::new(), timeout) {
            Ok(token) => self.in_flight = Some(token),
            Err(status) => self.failed(&format!(
                "cannot call cluster {}: {status:?}",
                self.control_plane.cluster
            )),
        }
    }

    pub fn on_response(&mut self, token: u32, num_headers: usize, body_size: usize) {
        if let Some(usage) = &mut self.usage {
            if usage.on_response(token, num_headers, &self.control_plane, &self.authorization) {
                return;
            }
        }
        if self.in_flight != Some(token) {
            return;
        }
        self.in_flight = None;
        if num_headers == 0 {
            return self.failed("no response (timeout or connection failure)");
        }
        let status = HeaderMap::call_response().get(":status").ok().flatten();
        match status.as_deref() {
            Some("200") => self.received(body_size),
            Some("304") => {
                // Nothing changed while we waited: ask again at once.
                self.backoff.reset();
                self.poll();
            }
            other => self.failed(&format!(
                "control plane answered {}",
                other.unwrap_or("without a status")
            )),
        }
    }

    fn received(&mut self, body_size: usize) {
        let body = match host::call_response_body(body_size) {
            Ok(body) => body,
            Err(e) => return self.failed(&e.0),
        };
        let signature = HeaderMap::call_response()
            .get(SIGNATURE_HEADER)
            .ok()
            .flatten();
        let now_s = host::now_ms().unwrap_or(0) / 1000;
        let max_age = u64::from(self.control_plane.max_snapshot_age_seconds);
        let admitted = verify_snapshot(
            &self.trusted_keys,
            max_age,
            now_s,
            &body,
            signature.as_deref(),
        )
        .and_then(|(snapshot, compiled)| {
            let step = self.sequence.admit(&snapshot)?;
            Ok((snapshot, compiled, step))
        });
        match admitted {
            Ok((snapshot, compiled, step)) => {
                // Keys first: each bucket is one atomic write. The routing table (and with it
                // the revision workers watch) follows once the last page is in.
                let mut shared = SharedData;
                note_changed_buckets(&compiled.directory, &mut self.changed);
                let previous = self.sequence.held();
                let changed = &self.changed;
                let published =
                    publish_directory(&mut shared, &compiled.directory).and_then(|_| match step {
                        Step::Page(_) => Ok(()),
                        Step::Complete(revision) => {
                            publish_changes(&mut shared, previous, revision, changed)
                                .and_then(|_| publish_routes(&mut shared, &snapshot))
                        }
                    });
                if let Err(e) = published {
                    return self.failed(&e.0);
                }
                self.sequence.advance(&snapshot, step);
                self.backoff.reset();
                self.next_page = snapshot.next;
                if let Step::Complete(revision) = step {
                    self.changed = Changed::none();
                    log::info!("tollgate poller: published snapshot revision {revision}");
                    self.metrics.updates.inc();
                    self.metrics.revision.set(revision);
                }
                self.poll();
            }
            Err(rejected) => {
                self.metrics.rejected.inc();
                if rejected.is_replay() {
                    self.metrics.replayed.inc();
                }
                log::warn!(
                    "tollgate poller: refused a snapshot ({} bytes): {rejected}; still enforcing revision {}",
                    body.len(),
                    self.held()
                );
                self.schedule_retry();
            }
        }
    }

    fn held(&self) -> String {
        self.sequence
            .held()
            .map_or("none".to_owned(), |r| r.to_string())
    }

    fn failed(&mut self, why: &str) {
        self.metrics.fetch_errors.inc();
        log::warn!(
            "tollgate poller: snapshot poll failed: {why}; still enforcing revision {}",
            self.held()
        );
        self.schedule_retry();
    }

    fn schedule_retry(&mut self) {
        let now = host::now_ms().unwrap_or(0);
        // Sub-millisecond clock bits are as good a jitter source as this needs.
        let entropy = now.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(self.backoff.failures());
        self.next_poll_at_ms = now + self.backoff.next_delay_ms(entropy);
    }
}
