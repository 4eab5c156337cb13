//! Fleet-wide counting in the filter ([`tollgate_core::fleet`]): a request that finds this
//! gateway's grant spent is held while its worker asks the control plane's broker for more,
//! then decided again; a broker that cannot be reached puts the gateway on its fallback for
//! [`AWAY_RETRY_MS`].

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::time::Duration;

use proxy_wasm::hostcalls::dispatch_http_call;
use tollgate_core::config::ControlPlane;
use tollgate_core::fleet::{
    apply_grant, clock_offset_ms, FleetState, GrantWanted, LeaseAnswer, LeaseRequest,
    AWAY_RETRY_MS, LEASE_PATH,
};
use tollgate_core::gateway::RequestHeaders;
use tollgate_core::limits::{counter_key, CountError};
use tollgate_core::shared::StoreError;

use crate::host::{self, HeaderMap, SharedData};

/// How long a held request waits for the broker before the fallback decides it.
const CALL_TIMEOUT: Duration = Duration::from_millis(250);

/// The process's fleet state, created by the first worker that needs it (with a random id:
/// std seeds `RandomState` from the host's entropy).
pub fn state() -> Result<FleetState, StoreError> {
    let fresh = RandomState::new().hash_one(host::now_ms().unwrap_or(0));
    FleetState::load_or_create(&mut SharedData, fresh).map_err(count_error)
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
    let headers = vec![
        (":method", "POST"),
        (":path", LEASE_PATH),
        (":authority", control_plane.authority.as_str()),
        ("authorization", authorization),
        ("content-type", "application/json"),
    ];
    let sent_ms = host::now_ms().map_err(|e| e.0)?;
    dispatch_http_call(
        &control_plane.cluster,
        headers,
        Some(&body),
        Vec::new(),
        CALL_TIMEOUT,
    )
    .map(|token| Asking {
        token,
        request,
        sent_ms,
    })
    .map_err(|status| format!("cannot call cluster {}: {status:?}", control_plane.cluster))
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
        s.away_until_ms = 0;
    })
    .map_err(|e| count_error(e).0)?;
    Ok((state, answer))
}

/// Puts the gateway on its fallback until [`AWAY_RETRY_MS`] from now.
pub fn away() -> Result<FleetState, StoreError> {
    let until = host::now_ms()?.saturating_add(AWAY_RETRY_MS);
    FleetState::update(&mut SharedData, |s| s.away_until_ms = until).map_err(count_error)
}

fn count_error(e: CountError) -> StoreError {
    match e {
        CountError::Store(e) => e,
        CountError::Contention => StoreError("the fleet state stayed busy".into()),
    }
}
