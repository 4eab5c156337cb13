//! The HTTP filter on each worker thread: one root per worker holding the configuration and
//! the catalogue in force, and one small context per request.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use proxy_wasm::hostcalls::set_tick_period;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use tollgate_core::config::{ConfigError, LoadedConfig};
use tollgate_core::decision::{deny, Denial, Reason};
use tollgate_core::distribution::{
    changes_between, decode_revision, publish_directory, RoutesDocument, CHANGES_KEY, REVISION_KEY,
    ROUTES_KEY,
};
use tollgate_core::fleet::{FleetState, GrantWanted};
use tollgate_core::gateway::{handle_request, Outcome};
use tollgate_core::keycache::{BucketCache, CachedDirectory, Changed, DEFAULT_BUDGET_BYTES};
use tollgate_core::lease::LeaseBook;
use tollgate_core::limits::Counting;
use tollgate_core::problem::{self, Problem};
use tollgate_core::shared::SharedStore;
use tollgate_core::usage::RowKey;

use crate::fleet::{Asking, Watch};
use crate::host::{self, HeaderMap, SharedData};
use crate::metrics::RequestMetrics;
use crate::usage::WorkerUsage;
use tollgate_core::gateway::RequestHeaders;

/// Static mode has nothing to refresh; the tick only flushes metric tallies.
const STATIC_TICK: Duration = Duration::from_secs(1);

/// How often one request may be held for a grant before it is refused as busy (a grant can be
/// taken by other requests between its arrival and the held request's turn).
const MAX_ASKS: u8 = 3;

pub struct WorkerRoot {
    config: Rc<LoadedConfig>,
    metrics: Rc<RequestMetrics>,
    /// This worker's quota leases on contract counters; returned on the tick.
    leases: Rc<RefCell<LeaseBook>>,
    /// The revision of the routing table in force.
    revision: Option<u64>,
    /// Key-directory buckets read recently, shared by this worker's requests.
    buckets: Rc<RefCell<BucketCache>>,
    /// The process's fleet state as this worker last read or wrote it (fleet-wide counting).
    fleet: Rc<Cell<Option<FleetState>>>,
    /// `Bearer <gateway token>` for the broker (live mode).
    authorization: Rc<Option<String>>,
    /// The contracts this worker took grants for, and its own calls to the broker.
    watch: Rc<RefCell<Watch>>,
    /// This worker's usage tally (live mode with `usage` on).
    usage: Option<Rc<RefCell<WorkerUsage>>>,
}

impl WorkerRoot {
    pub fn configure(bytes: &[u8]) -> Result<Self, ConfigError> {
        let parsed = LoadedConfig::parse(bytes)?;
        if let Some(directory) = &parsed.static_directory {
            // Static mode: every worker writes the same buckets; the last write is as good as
            // the first. (One catalogue per vm_id: give other catalogues their own vm_id.)
            publish_directory(&mut SharedData, directory).map_err(|e| ConfigError {
                field: "snapshot".into(),
                message: format!("cannot publish the key directory into shared data: {}", e.0),
            })?;
        }
        let config = parsed.config;
        let live = config.settings.control_plane.clone();
        // The token the poller sends with snapshot polls; workers send it to the broker.
        let authorization = live
            .as_ref()
            .and_then(|cp| crate::host::gateway_authorization(cp).ok());
        let usage = match (&live, config.settings.usage) {
            (Some(_), true) => {
                match host::property("plugin_vm_id") {
                    Ok(Some(vm_id)) => Some(Rc::new(RefCell::new(WorkerUsage::new(vm_id)))),
                    other => {
                        log::warn!("tollgate: usage not tallied: the plugin's vm_id is unknown ({other:?})");
                        None
                    }
                }
            }
            _ => None,
        };
        let mut root = WorkerRoot {
            usage,
            revision: config.routes.as_ref().map(|r| r.revision()),
            config: Rc::new(config),
            metrics: Rc::new(RequestMetrics::define()),
            leases: crate::lease::worker_book(),
            buckets: Rc::new(RefCell::new(BucketCache::new(DEFAULT_BUDGET_BYTES))),
            fleet: Rc::new(Cell::new(None)),
            authorization: Rc::new(authorization),
            watch: Rc::new(RefCell::new(Watch::default())),
        };
        // The tick refreshes the routing table (live mode) and flushes the metric tallies.
        let tick = match &live {
            Some(cp) => Duration::from_millis(u64::from(cp.worker_refresh_ms)),
            None => STATIC_TICK,
        };
        if let Err(status) = set_tick_period(tick) {
            log::warn!("tollgate: cannot schedule the worker tick: {status:?}");
        }
        match live {
            // A worker that starts after the poller has a snapshot enforces it at once.
            Some(_) => root.refresh(),
            None => log::info!(
                "tollgate: static mode, snapshot revision {}",
                root.revision.unwrap_or_default()
            ),
        }
        Ok(root)
    }

    pub fn on_tick(&mut self) {
        crate::lease::on_tick(&self.leases);
        if let Ok(mut cache) = self.buckets.try_borrow_mut() {
            let (hits, misses) = cache.take_counts();
            self.metrics.key_cache(hits, misses);
        }
        self.metrics.flush();
        if let (Some(usage), Ok(now_ms)) = (&self.usage, host::now_ms()) {
            if let Ok(mut usage) = usage.try_borrow_mut() {
                usage.on_tick(now_ms);
            }
        }
        if self.config.settings.control_plane.is_some() {
            self.refresh();
        }
        // What other workers heard from the broker (its clock, the gateways, an outage).
        let fleet_on = self
            .config
            .routes
            .as_ref()
            .is_some_and(|r| r.fleet().is_some());
        self.fleet.set(match fleet_on {
            true => crate::fleet::state()
                .map_err(|e| log::warn!("tollgate: fleet state unavailable: {}", e.0))
                .ok(),
            false => None,
        });
        self.watch_fleet();
    }

    /// Refills busy contracts ahead of their grants running dry and hands idle ones back.
    fn watch_fleet(&mut self) {
        let Ok(mut watch) = self.watch.try_borrow_mut() else {
            return;
        };
        let (Some(cp), Some(authorization), Some(state), Ok(local_ms)) = (
            &self.config.settings.control_plane,
            self.authorization.as_deref(),
            self.fleet.get(),
            host::now_ms(),
        ) else {
            // Counting alone again: what was watched has no broker to go back to.
            watch.watched.clear();
            return;
        };
        let outcome = watch.on_tick(cp, authorization, &state, local_ms);
        drop(watch);
        self.count(&outcome);
    }

    /// An answer to a call this worker's root made to the broker.
    pub fn on_call_response(&mut self, token: u32, num_headers: usize, body_size: usize) {
        let Ok(mut watch) = self.watch.try_borrow_mut() else {
            return;
        };
        if let Some((outcome, state)) = watch.on_response(token, num_headers, body_size) {
            if state.is_some() {
                self.fleet.set(state);
            }
            drop(watch);
            self.count(&outcome);
        }
    }

    fn count(&self, outcome: &crate::fleet::Outcome) {
        self.metrics.fleet_grants.add(outcome.grants);
        self.metrics.fleet_broker_failures.add(outcome.failures);
        self.metrics.fleet_returns.add(outcome.returns);
    }

    /// Adopts the poller's latest routing table from shared data if it is newer than ours.
    /// (Keys and contracts need no adoption: requests read them from shared data.)
    fn refresh(&mut self) {
        let mut shared = SharedData;
        let published = match shared.get(REVISION_KEY) {
            Ok(Some((bytes, _))) => decode_revision(&bytes),
            Ok(None) => None,
            Err(e) => {
                log::warn!("tollgate: {}", e.0);
                None
            }
        };
        let Some(published) = published else { return };
        if self.revision == Some(published) {
            return;
        }
        let body = match shared.get(ROUTES_KEY) {
            Ok(Some((body, _))) => body,
            Ok(None) => return,
            Err(e) => {
                log::warn!("tollgate: {}", e.0);
                return;
            }
        };
        // The poller validated these routes before publishing them; compiling can still fail
        // only if the module was upgraded in between, and then the current table stays.
        match RoutesDocument::compile(&body) {
            Ok(routes) => {
                let revision = routes.revision();
                // The buckets this revision changed leave the cache before it is enforced.
                let changed = match shared.get(CHANGES_KEY) {
                    Ok(Some((log, _))) => changes_between(&log, self.revision, revision),
                    _ => Changed::All,
                };
                let evicted = self
                    .buckets
                    .try_borrow_mut()
                    .map(|mut cache| cache.evict(&changed))
                    .is_ok();
                if !evicted {
                    // Not reachable (requests borrow the cache only while they run); a fresh
                    // cache is always correct.
                    self.buckets = Rc::new(RefCell::new(BucketCache::new(DEFAULT_BUDGET_BYTES)));
                }
                self.config = Rc::new(self.config.with_routes(Arc::new(routes)));
                self.revision = Some(revision);
                self.metrics.snapshots_adopted.inc();
                log::info!("tollgate: enforcing snapshot revision {revision}");
            }
            Err(e) => {
                // The poller has written that revision's buckets already: the cache must not
                // keep the old ones while the old routes stay in force.
                if let Ok(mut cache) = self.buckets.try_borrow_mut() {
                    cache.evict(&Changed::All);
                }
                log::warn!("tollgate: published snapshot not adopted: {e}")
            }
        }
    }

    pub fn request_context(&self) -> RequestContext {
        RequestContext {
            config: self.config.clone(),
            metrics: self.metrics.clone(),
            leases: self.leases.clone(),
            buckets: self.buckets.clone(),
            response_headers: Vec::new(),
            fleet: self.fleet.clone(),
            authorization: self.authorization.clone(),
            watch: self.watch.clone(),
            asking: None,
            asks: 0,
            usage: self.usage.clone(),
            arrived_ms: None,
            answered: None,
        }
    }
}

pub struct RequestContext {
    /// The configuration in force when the request arrived; a snapshot swap mid-request does
    /// not change what this request is held to.
    config: Rc<LoadedConfig>,
    metrics: Rc<RequestMetrics>,
    leases: Rc<RefCell<LeaseBook>>,
    buckets: Rc<RefCell<BucketCache>>,
    /// Rate-limit headers decided at request time, added to the upstream's response.
    response_headers: Vec<(&'static str, String)>,
    fleet: Rc<Cell<Option<FleetState>>>,
    authorization: Rc<Option<String>>,
    watch: Rc<RefCell<Watch>>,
    /// The grant this request is held for.
    asking: Option<Asking>,
    asks: u8,
    usage: Option<Rc<RefCell<WorkerUsage>>>,
    /// When the request was first decided (the gateway's clock).
    arrived_ms: Option<u64>,
    /// The usage row of a forwarded request, whose response is still to be counted.
    answered: Option<RowKey>,
}

impl Context for RequestContext {
    fn on_http_call_response(
        &mut self,
        token: u32,
        num_headers: usize,
        body_size: usize,
        _: usize,
    ) {
        let Some(asking) = self.asking.take_if(|a| a.token == token) else {
            return;
        };
        let stamp = match crate::fleet::received(&asking, num_headers, body_size) {
            Ok((state, answer)) => {
                self.fleet.set(Some(state));
                self.metrics.fleet_grants.inc();
                if let Ok(mut watch) = self.watch.try_borrow_mut() {
                    let request = &asking.request;
                    watch.granted(request.contract, &request.limits, answer.now_ms);
                }
                // Decided at the broker's clock: the grant is for the windows it counted in.
                Some(answer.now_ms)
            }
            Err(why) => {
                self.broker_failed(&why);
                None
            }
        };
        if let Action::Continue = self.decide(stamp) {
            self.resume_http_request();
        }
    }
}

impl HttpContext for RequestContext {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.decide(None)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.count_response();
        for (name, value) in std::mem::take(&mut self.response_headers) {
            if let Err(e) = host::add_response_header(name, &value) {
                log::warn!("tollgate: {}", e.0);
            }
        }
        Action::Continue
    }
}

impl RequestContext {
    /// How this request counts, and its stamp: the gateway's clock, or counting fleet-wide
    /// the broker's as reckoned from it (`stamp`: the broker's, from the answer just received).
    fn counting(
        &mut self,
        stamp: Option<u64>,
    ) -> Result<(Counting, u64), tollgate_core::shared::StoreError> {
        let local_ms = host::now_ms()?;
        self.arrived_ms.get_or_insert(local_ms);
        let Some(settings) = self.config.routes.as_ref().and_then(|r| r.fleet()) else {
            return Ok((Counting::Alone, local_ms));
        };
        let state = match self.fleet.get() {
            Some(state) => state,
            None => {
                let state = crate::fleet::state()?;
                self.fleet.set(Some(state));
                state
            }
        };
        Ok((
            state.counting(settings, local_ms),
            stamp.unwrap_or_else(|| state.broker_ms(local_ms)),
        ))
    }

    /// Decides the request (again, after a grant: `stamp`), forwarding, answering or holding it.
    fn decide(&mut self, stamp: Option<u64>) -> Action {
        let counted = self.counting(stamp);
        let handled = counted.and_then(|(counting, now_ms)| {
            let leases = &mut *crate::lease::book(&self.leases)?;
            leases.set_counting(counting);
            let mut shared = SharedData;
            match self.buckets.try_borrow_mut() {
                Ok(mut cache) => handle_request(
                    &self.config,
                    &mut HeaderMap::request(),
                    &mut CachedDirectory {
                        cache: &mut cache,
                        store: &mut shared,
                    },
                    leases,
                    now_ms,
                ),
                // Never expected (one request at a time per worker); uncached is always right.
                Err(_) => handle_request(
                    &self.config,
                    &mut HeaderMap::request(),
                    &mut shared,
                    leases,
                    now_ms,
                ),
            }
            .map(|handled| (handled, now_ms))
        });
        match handled {
            Ok((handled, now_ms)) => match handled.outcome {
                // Not decided yet: counted once it is.
                Outcome::Wait(wanted) => self.ask(wanted, handled.api, now_ms),
                Outcome::Forward { response_headers } => {
                    self.metrics.request(handled.reason, handled.cas_retries);
                    let row =
                        self.count_decision(handled.reason, handled.api, handled.contract, now_ms);
                    // The upstream's answer to a request for an API is counted too.
                    self.answered = row.filter(|r| r.api.is_some());
                    self.response_headers = response_headers;
                    Action::Continue
                }
                Outcome::Respond(denial) => {
                    self.metrics.request(handled.reason, handled.cas_retries);
                    self.count_decision(handled.reason, handled.api, handled.contract, now_ms);
                    respond(&denial)
                }
            },
            Err(e) => {
                // Fail closed: a request we could not check is not forwarded.
                log::warn!("tollgate: {}", e.0);
                self.metrics.host_errors.inc();
                respond(&deny(
                    Reason::CounterUnavailable,
                    Problem::new(
                        "gateway-error",
                        "Service Unavailable",
                        503,
                        "the gateway could not check this request",
                    ),
                ))
            }
        }
    }

    /// Holds the request while the broker is asked for `wanted`; decides it under the fallback
    /// when the broker cannot even be called.
    fn ask(&mut self, wanted: GrantWanted, api: Option<Arc<str>>, now_ms: u64) -> Action {
        if self.asks >= MAX_ASKS {
            self.metrics.request(Reason::CounterUnavailable, 0);
            self.count_decision(
                Reason::CounterUnavailable,
                api,
                Some(wanted.contract),
                now_ms,
            );
            return respond(&deny(
                Reason::CounterUnavailable,
                Problem::new(
                    "counter-unavailable",
                    "Service Unavailable",
                    503,
                    "the fleet's grants for this contract were taken faster than they came; retry",
                ),
            ));
        }
        self.asks += 1;
        let asked = match (
            &self.config.settings.control_plane,
            self.authorization.as_deref(),
            self.fleet.get(),
        ) {
            (Some(cp), Some(authorization), Some(state)) => {
                crate::fleet::ask(cp, authorization, &state, wanted)
            }
            _ => Err("no control plane, gateway token or fleet state to ask with".into()),
        };
        match asked {
            Ok(asking) => {
                self.asking = Some(asking);
                Action::Pause
            }
            Err(why) => {
                self.broker_failed(&why);
                self.decide(None)
            }
        }
    }

    /// Adds the decision to the worker's usage tally; its row.
    fn count_decision(
        &self,
        reason: Reason,
        api: Option<Arc<str>>,
        contract: Option<u64>,
        now_ms: u64,
    ) -> Option<RowKey> {
        let mut usage = self.usage.as_ref()?.try_borrow_mut().ok()?;
        let row = RowKey::at(now_ms, api, contract);
        usage.tally.decided(row.clone(), reason);
        Some(row)
    }

    /// Adds the upstream's status and the latency to the forwarded request's row.
    fn count_response(&mut self) {
        let (Some(row), Some(arrived_ms), Some(usage)) =
            (self.answered.take(), self.arrived_ms, &self.usage)
        else {
            return;
        };
        let status = HeaderMap::response()
            .get(":status")
            .ok()
            .flatten()
            .and_then(|s| s.parse::<u16>().ok());
        let latency_ms = host::now_ms().map_or(0, |now| now.saturating_sub(arrived_ms));
        if let Ok(mut usage) = usage.try_borrow_mut() {
            usage.tally.answered(row, status, latency_ms);
        }
    }

    fn broker_failed(&self, why: &str) {
        self.metrics.fleet_broker_failures.inc();
        log::warn!(
            "tollgate: no grant from the broker (held units only, then the fallback): {why}"
        );
        match crate::fleet::away() {
            Ok(state) => self.fleet.set(Some(state)),
            Err(e) => log::warn!("tollgate: fleet state unavailable: {}", e.0),
        }
    }
}

/// Sends a local reply with its headers (a filter's own response-header callback is not
/// guaranteed to run for local replies) and stops the request.
fn respond(denial: &Denial) -> Action {
    let mut headers: Vec<(&str, &str)> = Vec::with_capacity(denial.headers.len() + 1);
    headers.push(("content-type", problem::CONTENT_TYPE));
    headers.extend(denial.headers.iter().map(|(n, v)| (*n, v.as_str())));
    if let Err(e) =
        host::send_response(denial.status, &headers, denial.problem.to_json().as_bytes())
    {
        log::warn!("tollgate: {}", e.0);
    }
    Action::Pause
}
