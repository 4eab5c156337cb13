//! Fleet-wide counting in the filter ([`tollgate_core::fleet`]): a request that finds this
//! gateway's grant spent is held while its worker asks the control plane's broker for more,
//! then decided again; a broker that cannot be reached puts the gateway on its fallback for
//! [`AWAY_RETRY_MS`].

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::time::Duration;

use proxy_wasm::hostcalls::dispatch_http_call;
use tollgate_core::config::ControlPlane;
use tollgate_core::fleet::{
    apply_grant, clock_offset_ms, Due, FleetState, GrantWanted, LeaseAnswer, LeaseRequest,
    ReturnRequest, ReturnedUnits, Watched, AWAY_RETRY_MS, LEASE_PATH, RETURN_PATH,
};
use tollgate_core::gateway::RequestHeaders;
use tollgate_core::limits::{counter_key, CountError};
use tollgate_core::shared::StoreError;
use tollgate_core::snapshot::RateLimit;
use tollgate_core::time::window;

use crate::host::{self, HeaderMap, SharedData};

/// How long a held request waits for the broker before the fallback decides it.
const CALL_TIMEOUT: Duration = Duration::from_millis(250);

/// A random u64 (std seeds `RandomState` from the host's entropy).
pub fn random(salt: u64) -> u64 {
    RandomState::new().hash_one((host::now_ms().unwrap_or(0), salt))
}

/// The process's fleet state, created by the first worker that needs it (with a random id).
pub fn state() -> Result<FleetState, StoreError> {
    FleetState::load_or_create(&mut SharedData, random(0)).map_err(count_error)
}

/// A grant being asked for on behalf of a held request.
pub struct Asking {
    pub token: u32,
    pub request: LeaseRequest,
    pub sent_ms: u64,
}

/// Sends the broker `wanted` for this gateway; `Err` if the call could not even be made.
pub fn ask(
    control_plane: &ControlPlane,
    authorization: &str,
    state: &FleetState,
    wanted: GrantWanted,
) -> Result<Asking, String> {
    let request = LeaseRequest {
        gateway: state.gateway_id(),
        contract: wanted.contract,
        limits: wanted.limits,
        want: wanted.want,
        held: wanted.held,
    };
    let body = request.to_json();
    let sent_ms = host::now_ms().map_err(|e| e.0)?;
    call(control_plane, authorization, LEASE_PATH, &body).map(|token| Asking {
        token,
        request,
        sent_ms,
    })
}

/// The units `units` of `contract`, taken out of this gateway's allowance, as a return with an
/// id of its own (sent again as it is until the broker has it).
pub fn return_of(state: &FleetState, contract: u64, units: Vec<ReturnedUnits>) -> ReturnRequest {
    ReturnRequest {
        gateway: state.gateway_id(),
        contract,
        id: format!("{:016x}", random(contract)),
        windows: units,
    }
}

/// Sends `back` to the broker; the call's token.
pub fn give_back(
    control_plane: &ControlPlane,
    authorization: &str,
    back: &ReturnRequest,
) -> Result<u32, String> {
    call(control_plane, authorization, RETURN_PATH, &back.to_json())
}

fn call(
    control_plane: &ControlPlane,
    authorization: &str,
    path: &str,
    body: &[u8],
) -> Result<u32, String> {
    post(control_plane, authorization, path, body, CALL_TIMEOUT)
}

/// `POST`s `body` (JSON) to the control plane with the gateway token; the call's token.
pub fn post(
    control_plane: &ControlPlane,
    authorization: &str,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<u32, String> {
    let headers = vec![
        (":method", "POST"),
        (":path", path),
        (":authority", control_plane.authority.as_str()),
        ("authorization", authorization),
        ("content-type", "application/json"),
    ];
    dispatch_http_call(
        &control_plane.cluster,
        headers,
        Some(body),
        Vec::new(),
        timeout,
    )
    .map_err(|status| format!("cannot call cluster {}: {status:?}", control_plane.cluster))
}

/// Whether the broker took a return (its answer's status is 200), or why not.
pub fn returned(num_headers: usize) -> Result<(), String> {
    if num_headers == 0 {
        return Err("no answer (timeout or connection failure)".into());
    }
    match HeaderMap::call_response().get(":status").map_err(|e| e.0)? {
        Some(status) if status == "200" => Ok(()),
        other => Err(format!(
            "the broker answered {}",
            other.unwrap_or_else(|| "without a status".into())
        )),
    }
}

/// Takes the broker's answer to `asking` into shared data: the grant into the contract's
/// counter, the broker's clock and gateway count into the fleet state. `Err` says why the
/// answer is no grant (and the gateway is then on its fallback for a while).
pub fn received(
    asking: &Asking,
    num_headers: usize,
    body_size: usize,
) -> Result<(FleetState, LeaseAnswer), String> {
    if num_headers == 0 {
        return Err("no answer (timeout or connection failure)".into());
    }
    let status = HeaderMap::call_response()
        .get(":status")
        .map_err(|e| e.0)?
        .unwrap_or_default();
    let body = host::call_response_body(body_size).map_err(|e| e.0)?;
    if status != "200" {
        return Err(format!(
            "the broker answered {status}: {}",
            String::from_utf8_lossy(body.get(..200).unwrap_or(&body))
        ));
    }
    let answer = LeaseAnswer::parse(&body)?;
    answer.check(&asking.request)?;
    let key = counter_key(asking.request.contract);
    apply_grant(&mut SharedData, &key, &asking.request.limits, &answer)
        .map_err(|e| count_error(e).0)?;
    let offset = clock_offset_ms(asking.sent_ms, answer.now_ms);
    let state = FleetState::update(&mut SharedData, |s| {
        s.clock_offset_ms = offset;
        s.gateways = answer.gateways.max(1);
        s.answered();
    })
    .map_err(|e| count_error(e).0)?;
    Ok((state, answer))
}

/// Records a failed ask: the gateway admits only what it holds, or after two in a row falls
/// back, for [`AWAY_RETRY_MS`] ([`FleetState::counting`]).
pub fn away() -> Result<FleetState, StoreError> {
    let now = host::now_ms()?;
    FleetState::update(&mut SharedData, |s| s.failed(now)).map_err(count_error)
}

fn count_error(e: CountError) -> StoreError {
    match e {
        CountError::Store(e) => e,
        CountError::Contention => StoreError("the fleet state stayed busy".into()),
    }
}

/// What a worker's root has in flight with the broker.
enum RootCall {
    Refill(Asking),
    Return(ReturnRequest),
}

/// A return the broker has not confirmed, sent again until it does or its windows end.
struct Unconfirmed {
    back: ReturnRequest,
    next_at_ms: u64,
    /// Broker clock: past every window it names, a return no longer matters.
    until_ms: u64,
}

impl Unconfirmed {
    fn new(back: ReturnRequest, next_at_ms: u64) -> Self {
        let until_ms = back
            .windows
            .iter()
            .map(|u| window(u.per, u.start.saturating_mul(1000)).end)
            .max()
            .unwrap_or(0)
            .saturating_mul(1000);
        Unconfirmed {
            back,
            next_at_ms,
            until_ms,
        }
    }
}

/// The contracts a worker took grants for, looked at on its tick ([`Watched::look`]): refilled
/// ahead while busy, handed back when idle. Shared with the worker's requests, which add the
/// contracts they were granted for.
#[derive(Default)]
pub struct Watch {
    pub watched: HashMap<u64, Watched>,
    calls: HashMap<u32, RootCall>,
    refilling: HashSet<u64>,
    unconfirmed: Vec<Unconfirmed>,
}

/// What a tick or an answer did, for the worker's metrics.
#[derive(Default)]
pub struct Outcome {
    pub grants: u32,
    pub failures: u32,
    pub returns: u32,
}

impl Watch {
    /// Watches `contract` from now (broker clock).
    pub fn granted(&mut self, contract: u64, limits: &[RateLimit], now_ms: u64) {
        self.watched
            .entry(contract)
            .or_insert_with(|| Watched::new(contract, limits.to_vec(), now_ms));
    }

    /// The worker's tick: every watched contract looked at once, due calls made.
    pub fn on_tick(
        &mut self,
        control_plane: &ControlPlane,
        authorization: &str,
        state: &FleetState,
        local_ms: u64,
    ) -> Outcome {
        let mut outcome = Outcome::default();
        let now_ms = state.broker_ms(local_ms);
        let away = local_ms < state.away_until_ms;
        let mut forget = Vec::new();
        for (contract, watched) in self.watched.iter_mut() {
            let refill = !away && !self.refilling.contains(contract);
            match watched.look(&mut SharedData, now_ms, refill) {
                Ok(Due::Nothing) => {}
                Ok(Due::Forget) => forget.push(*contract),
                Ok(Due::Refill(wanted)) => match ask(control_plane, authorization, state, wanted) {
                    Ok(asking) => {
                        self.refilling.insert(*contract);
                        self.calls.insert(asking.token, RootCall::Refill(asking));
                    }
                    Err(why) => {
                        outcome.failures += 1;
                        log::warn!("tollgate: no refill asked for contract {contract}: {why}");
                    }
                },
                Ok(Due::Return(units)) => {
                    forget.push(*contract);
                    self.unconfirmed
                        .push(Unconfirmed::new(return_of(state, *contract, units), 0));
                }
                Err(e) => log::warn!(
                    "tollgate: contract {contract} not looked at: {}",
                    count_error(e).0
                ),
            }
        }
        for contract in forget {
            self.watched.remove(&contract);
        }
        // Returns: sent now, or again a second after a failure; dropped once their windows end.
        let mut kept = Vec::new();
        for mut u in std::mem::take(&mut self.unconfirmed) {
            if now_ms >= u.until_ms {
                continue;
            }
            if local_ms < u.next_at_ms {
                kept.push(u);
                continue;
            }
            match give_back(control_plane, authorization, &u.back) {
                Ok(token) => {
                    self.calls.insert(token, RootCall::Return(u.back));
                    outcome.returns += 1;
                }
                Err(why) => {
                    outcome.failures += 1;
                    log::warn!("tollgate: a return not sent: {why}");
                    u.next_at_ms = local_ms.saturating_add(AWAY_RETRY_MS);
                    kept.push(u);
                }
            }
        }
        self.unconfirmed = kept;
        outcome
    }

    /// An answer to a call the root made; `None` if the token is not one of them.
    pub fn on_response(
        &mut self,
        token: u32,
        num_headers: usize,
        body_size: usize,
    ) -> Option<(Outcome, Option<FleetState>)> {
        let mut outcome = Outcome::default();
        match self.calls.remove(&token)? {
            RootCall::Refill(asking) => {
                self.refilling.remove(&asking.request.contract);
                match received(&asking, num_headers, body_size) {
                    Ok((state, _)) => {
                        outcome.grants += 1;
                        return Some((outcome, Some(state)));
                    }
                    Err(why) => {
                        outcome.failures += 1;
                        log::warn!("tollgate: a refill from the broker failed: {why}");
                        return Some((outcome, away().ok()));
                    }
                }
            }
            RootCall::Return(back) => {
                if let Err(why) = returned(num_headers) {
                    outcome.failures += 1;
                    log::warn!(
                        "tollgate: a return of contract {} not confirmed, sent again later: {why}",
                        back.contract
                    );
                    let next_at_ms = host::now_ms().unwrap_or(0).saturating_add(AWAY_RETRY_MS);
                    self.unconfirmed.push(Unconfirmed::new(back, next_at_ms));
                }
            }
        }
        Some((outcome, None))
    }
}
