//! Fleet-wide counting: what a gateway and the control plane's lease broker say to each other.
//!
//! With `tollgate serve --redis`, every snapshot carries [`FleetSettings`] and Redis holds the
//! authoritative count of every (contract, limit, window). A gateway never asks Redis per
//! request: it asks the broker for a *grant* of g units of the current window of every limit
//! of a plan at once ([`LeaseRequest`] → [`LeaseAnswer`]), writes the grant into the
//! contract's counter in shared data as its *allowance* for those windows, and its workers
//! admit from the allowance exactly as they admit from a plan's limit without Redis. The
//! broker grants at most the room left in every window, so, per window, what all gateways
//! were granted never exceeds the limit.
//!
//! Windows are the broker's: it reads Redis `TIME` and answers with each window's bounds and
//! its own clock, from which the gateway keeps the offset of its clock to the broker's
//! ([`clock_offset_ms`]).

use serde::{Deserialize, Serialize};

use crate::limits::{
    counter_key, current_window, decode, encode, insert_token, CountError, Counting, Grant, Slot,
    MAX_CAS_ATTEMPTS, MAX_LIMITS, MIN_WANT,
};
use crate::shared::{SetOutcome, SharedStore};
use crate::snapshot::{Period, RateLimit};
use crate::time::{window, Window};

/// Where an Envoy process keeps its fleet identity and what it last heard from the broker.
pub const FLEET_STATE_KEY: &str = "tollgate.fleet";

/// How long a gateway that could not reach the broker goes without asking it again. After one
/// failed ask it admits only what it holds (as `closed`): one slow answer under load is no
/// outage, and must not open the fallback's room. Only when the next ask fails too does the
/// configured fallback apply, again for this long, until an ask succeeds.
pub const AWAY_RETRY_MS: u64 = 1_000;

const STATE_LEN: usize = 8 + 8 + 4 + 8 + 4;

/// Where gateways ask for grants: `POST`, with the gateway token as for snapshots.
pub const LEASE_PATH: &str = "/gateway/v1/leases";

/// Where gateways hand back units they did not use ([`ReturnRequest`]).
pub const RETURN_PATH: &str = "/gateway/v1/leases/returns";

/// How long a contract's grant may go unclaimed at a gateway before its unused units go back to
/// the fleet: longer than a worker keeps an idle lease ([`crate::lease::IDLE_RETURN_MS`]), so
/// that what workers reserved is back in the counter, and handed back with the rest.
pub const IDLE_RETURN_MS: u64 = 2_000;

/// What a gateway does for a contract whose allowance is spent while the broker or Redis
/// cannot be reached (grants already held keep admitting exactly).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    /// Each gateway admits at most ⌊L / N⌋ per window, what it was granted included, N being
    /// the gateways the broker saw in the last minute.
    #[default]
    Share,
    /// 429 with `Retry-After` until the broker answers again.
    Closed,
    /// Each gateway counts alone, as without Redis (the fleet admits up to N × L).
    Local,
}

impl Fallback {
    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::Share => "share",
            Fallback::Closed => "closed",
            Fallback::Local => "local",
        }
    }
}

impl std::str::FromStr for Fallback {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "share" => Ok(Fallback::Share),
            "closed" => Ok(Fallback::Closed),
            "local" => Ok(Fallback::Local),
            other => Err(format!(
                "unknown fleet fallback '{other}': expected share, closed or local"
            )),
        }
    }
}

/// Present in a snapshot when counts are fleet-wide (signed with the rest of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct FleetSettings {
    #[serde(default)]
    pub fallback: Fallback,
}

/// A request found this gateway's grant for its contract spent: the grant to ask for before
/// deciding it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantWanted {
    pub contract: u64,
    pub limits: Vec<RateLimit>,
    pub want: u64,
    /// Per limit, what this gateway holds unused in the limit's current window.
    pub held: Vec<u64>,
}

/// A gateway's request for units of a contract's current windows (`POST` [`LEASE_PATH`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    /// The Envoy process asking: 16 lowercase hex digits, random per process.
    pub gateway: String,
    /// The contract's id (its counter in shared data and in Redis).
    pub contract: u64,
    /// The plan's limits, in the plan's order; the grant is the same in every one.
    pub limits: Vec<RateLimit>,
    /// How many more requests the gateway would like to admit (at least 1); the broker may
    /// allow fewer.
    pub want: u64,
    /// Per limit (absent: none), what the gateway holds unused in the limit's current window:
    /// the broker grants in each limit only what, with that, lets the gateway admit the
    /// requests it allows. (Limits of different periods do not run out together: the units
    /// of a day limit granted beside a second's that ended unused are still the gateway's.)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<u64>,
}

/// One limit's window as the broker counted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LeaseWindow {
    /// Unix seconds, inclusive.
    pub start: u64,
    /// Unix seconds, exclusive.
    pub end: u64,
    /// Granted to this gateway in this window by this answer.
    pub granted: u64,
    /// What is left in this window for the whole fleet after this grant.
    pub remaining: u64,
}

/// The broker's answer, one window per limit in the request's order. With `held_i` what the
/// gateway said it holds in limit i, the broker allows `a = min(want, min_i(held_i + room_i))`
/// more requests (possibly fewer, sized down as the room runs out) and grants
/// `max(0, a − held_i)` in each window, never more than its room. `allowed` is `a`: 0 when some
/// window has no room left for this gateway (its `remaining` is 0 and nothing is held there).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LeaseAnswer {
    pub allowed: u64,
    /// The broker's clock (Redis `TIME`) when it granted, in Unix milliseconds.
    pub now_ms: u64,
    /// Gateways that asked for grants in the last minute (this one included): the N of the
    /// `share` fallback.
    pub gateways: u32,
    pub windows: Vec<LeaseWindow>,
}

/// Units a gateway hands back: taken out of its allowance first, so it can no longer admit
/// them, then subtracted from the fleet's count. `id` makes it idempotent: the broker applies
/// one return of a gateway once, however often it is sent (a retry after a lost answer, or a
/// replay).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ReturnRequest {
    pub gateway: String,
    pub contract: u64,
    /// 16 lowercase hex digits, random per return.
    pub id: String,
    pub windows: Vec<ReturnedUnits>,
}

/// Units handed back in one window of one limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ReturnedUnits {
    pub per: Period,
    /// The window's start, Unix seconds (as the grant named it).
    pub start: u64,
    pub units: u64,
}

/// The broker's answer to a return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ReturnAnswer {
    /// False: this return was applied before (the units were not subtracted again).
    pub applied: bool,
}

fn is_id(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl ReturnRequest {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Whether the request is one a broker can apply, or what is wrong with it.
    pub fn check(&self) -> Result<(), String> {
        if !is_id(&self.gateway) {
            return Err("gateway must be 16 hex digits".into());
        }
        if !is_id(&self.id) {
            return Err("id must be 16 hex digits".into());
        }
        if self.windows.is_empty() || self.windows.len() > MAX_LIMITS {
            return Err(format!(
                "windows must list between 1 and {MAX_LIMITS} windows"
            ));
        }
        let mut periods: Vec<Period> = self.windows.iter().map(|w| w.per).collect();
        periods.sort();
        periods.dedup();
        if periods.len() != self.windows.len() {
            return Err("windows name a period twice".into());
        }
        for w in &self.windows {
            if window(w.per, w.start.saturating_mul(1000)).start != w.start {
                return Err(format!(
                    "{} is not the start of a {:?} window",
                    w.start, w.per
                ));
            }
        }
        Ok(())
    }
}

impl LeaseRequest {
    /// The JSON body of the call to the broker.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Whether the request is one a broker can answer, or what is wrong with it.
    pub fn check(&self) -> Result<(), String> {
        if !is_id(&self.gateway) {
            return Err("gateway must be 16 hex digits".into());
        }
        if self.limits.is_empty() || self.limits.len() > MAX_LIMITS {
            return Err(format!(
                "limits must list between 1 and {MAX_LIMITS} limits"
            ));
        }
        if self.limits.iter().any(|l| l.requests == 0) {
            return Err("every limit allows at least 1 request".into());
        }
        let mut periods: Vec<Period> = self.limits.iter().map(|l| l.per).collect();
        periods.sort();
        periods.dedup();
        if periods.len() != self.limits.len() {
            return Err("limits name a period twice".into());
        }
        if self.want == 0 {
            return Err("want must be at least 1".into());
        }
        if !self.held.is_empty() && self.held.len() != self.limits.len() {
            return Err("held must list one number per limit, or be absent".into());
        }
        Ok(())
    }
}

/// The offset to add to a gateway's clock to read the broker's, from an answer stamped
/// `broker_now_ms` to a request sent at `sent_ms` (gateway clock). The broker read its clock
/// after the request was sent, so the gateway's clock plus this offset runs ahead of the
/// broker's by at most the round trip, never behind: by the gateway's reckoning a window ends
/// no later than it does for the broker.
pub fn clock_offset_ms(sent_ms: u64, broker_now_ms: u64) -> i64 {
    let diff = i128::from(broker_now_ms) - i128::from(sent_ms);
    diff.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

impl LeaseAnswer {
    /// Reads the broker's JSON answer.
    pub fn parse(body: &[u8]) -> Result<LeaseAnswer, String> {
        serde_json::from_slice(body).map_err(|e| format!("unreadable grant: {e}"))
    }

    /// Whether this answers `request` in windows this gateway's calendar agrees with: one
    /// window per limit, each the one its period has at the broker's clock.
    pub fn check(&self, request: &LeaseRequest) -> Result<(), String> {
        if self.windows.len() != request.limits.len() {
            return Err(format!(
                "the broker answered {} windows for {} limits",
                self.windows.len(),
                request.limits.len()
            ));
        }
        for (limit, w) in request.limits.iter().zip(&self.windows) {
            let expected = window(limit.per, self.now_ms);
            if (expected.start, expected.end) != (w.start, w.end) {
                return Err(format!(
                    "the broker's {:?} window [{}, {}) is not the one of its clock ({} ms)",
                    limit.per, w.start, w.end, self.now_ms
                ));
            }
        }
        Ok(())
    }
}

/// Adds a broker's grant to this gateway's allowance in the contract's counter `key`, in the
/// windows the broker named; a stored window that is older starts afresh with the grant, one
/// that is newer keeps what it has (the grant's window has ended here already).
pub fn apply_grant<S: SharedStore + ?Sized>(
    store: &mut S,
    key: &str,
    limits: &[RateLimit],
    answer: &LeaseAnswer,
) -> Result<(), CountError> {
    for _ in 0..MAX_CAS_ATTEMPTS {
        let current = store.get(key)?;
        let mut slots = current
            .as_ref()
            .map(|(value, _)| decode(value))
            .unwrap_or_default();
        for (limit, w) in limits.iter().zip(&answer.windows) {
            let granted = Grant {
                allowance: w.granted,
                fleet_room: Some(w.remaining),
            };
            match slots.iter_mut().find(|s| s.period == limit.per) {
                Some(s) if s.window_start == w.start => {
                    s.grant = Some(Grant {
                        allowance: s.grant.map_or(0, |g| g.allowance) + w.granted,
                        fleet_room: Some(w.remaining),
                    });
                }
                Some(s) if s.window_start > w.start => {}
                Some(s) => {
                    *s = Slot {
                        period: limit.per,
                        window_start: w.start,
                        count: 0,
                        grant: Some(granted),
                    }
                }
                None => slots.push(Slot {
                    period: limit.per,
                    window_start: w.start,
                    count: 0,
                    grant: Some(granted),
                }),
            }
        }
        let cas = match &current {
            Some((_, token)) => *token,
            None => insert_token(store)?,
        };
        if store.set(key, &encode(&slots), cas)? == SetOutcome::Written {
            return Ok(());
        }
    }
    Err(CountError::Contention)
}

/// A contract a worker took grants for, looked at on the worker's tick: asked for more before
/// its grant runs dry while it is busy, its unused units handed back once it falls idle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    pub contract: u64,
    pub limits: Vec<RateLimit>,
    /// Claimed in the busiest current window at the last look (none yet), and when that last
    /// changed.
    claimed: Option<u64>,
    changed_ms: u64,
}

/// What a look at a [`Watched`] contract calls for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due {
    Nothing,
    /// Busy and within two ticks of running dry: ask for this now, holding no request.
    Refill(GrantWanted),
    /// Idle for [`IDLE_RETURN_MS`]: these units were taken out of the allowance (no worker of
    /// this gateway can admit them any more); hand them back, and stop watching.
    Return(Vec<ReturnedUnits>),
    /// No grant in a current window any more (or nothing unused to hand back): stop watching.
    Forget,
}

impl Watched {
    pub fn new(contract: u64, limits: Vec<RateLimit>, now_ms: u64) -> Self {
        Watched {
            contract,
            limits,
            claimed: None,
            changed_ms: now_ms,
        }
    }

    /// Looks at the contract's counter at the broker's clock `now_ms`; `refill`: whether a
    /// refill may be asked for (none is in flight for it).
    pub fn look<S: SharedStore + ?Sized>(
        &mut self,
        store: &mut S,
        now_ms: u64,
        refill: bool,
    ) -> Result<Due, CountError> {
        let key = counter_key(self.contract);
        let Some((value, token)) = store.get(&key)? else {
            return Ok(Due::Forget);
        };
        let mut slots = decode(&value);
        let current: Vec<(Window, Option<Slot>)> = self
            .limits
            .iter()
            .map(|l| {
                let (w, s) = current_window(l.per, &slots, now_ms);
                (w, s.copied())
            })
            .collect();
        if current
            .iter()
            .all(|(_, s)| s.and_then(|s| s.grant).is_none())
        {
            return Ok(Due::Forget);
        }
        let claimed = current
            .iter()
            .map(|(_, s)| s.map_or(0, |s| s.count))
            .max()
            .unwrap_or(0);
        // Claims since the last look (none known at the first).
        let consumed = self
            .claimed
            .map_or(0, |before| claimed.saturating_sub(before));
        if self.claimed != Some(claimed) {
            if self.claimed.is_some() {
                self.changed_ms = now_ms;
            }
            self.claimed = Some(claimed);
        }
        if now_ms.saturating_sub(self.changed_ms) >= IDLE_RETURN_MS {
            let mut units = Vec::new();
            for slot in slots.iter_mut() {
                let current = current.iter().any(|(_, s)| {
                    s.is_some_and(|s| {
                        s.period == slot.period && s.window_start == slot.window_start
                    })
                });
                if let (true, Some(grant)) = (current, slot.grant.as_mut()) {
                    if grant.allowance > slot.count {
                        units.push(ReturnedUnits {
                            per: slot.period,
                            start: slot.window_start,
                            units: grant.allowance - slot.count,
                        });
                        grant.allowance = slot.count;
                    }
                }
            }
            if units.is_empty() {
                return Ok(Due::Forget);
            }
            // Lost to a claim in between: busy after all, looked at again next tick.
            return Ok(match store.set(&key, &encode(&slots), token)? {
                SetOutcome::Written => Due::Return(units),
                SetOutcome::CasMismatch => Due::Nothing,
            });
        }
        if !refill || consumed == 0 {
            return Ok(Due::Nothing);
        }
        let mut held = Vec::with_capacity(current.len());
        for (_, s) in &current {
            let grant = s.and_then(|s| s.grant);
            let count = s.map_or(0, |s| s.count);
            let allowance = grant.map_or(0, |g| g.allowance);
            // The fleet has nothing left: the window ends as it is.
            if count >= allowance && grant.is_some_and(|g| g.fleet_room == Some(0)) {
                return Ok(Due::Nothing);
            }
            held.push(allowance.saturating_sub(count));
        }
        let room = held.iter().copied().min().unwrap_or(0);
        if room > consumed.saturating_mul(2) {
            return Ok(Due::Nothing);
        }
        let busiest = current
            .iter()
            .map(|(_, s)| s.map_or(0, |s| s.count))
            .max()
            .unwrap_or(0);
        let smallest = self.limits.iter().map(|l| l.requests).min().unwrap_or(1);
        Ok(Due::Refill(GrantWanted {
            contract: self.contract,
            limits: self.limits.clone(),
            want: (busiest / 2).max(MIN_WANT).min(smallest),
            held,
        }))
    }
}

/// An Envoy process's fleet identity and what it last heard from the broker, in shared data
/// under [`FLEET_STATE_KEY`] so that all its workers agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetState {
    /// Random per process: the broker counts gateways by it.
    pub gateway: u64,
    /// Add to this gateway's clock to read the broker's ([`clock_offset_ms`]).
    pub clock_offset_ms: i64,
    /// Gateways the broker saw in the last minute (at least 1).
    pub gateways: u32,
    /// Until then (gateway clock, ms) the broker is not asked again.
    pub away_until_ms: u64,
    /// Asks that failed in a row since the broker last answered.
    pub failures: u32,
}

impl FleetState {
    /// The process's state, created with `fresh_gateway` as its id if no worker has yet.
    pub fn load_or_create<S: SharedStore + ?Sized>(
        store: &mut S,
        fresh_gateway: u64,
    ) -> Result<FleetState, CountError> {
        for _ in 0..MAX_CAS_ATTEMPTS {
            if let Some((bytes, _)) = store.get(FLEET_STATE_KEY)? {
                if let Some(state) = FleetState::decode(&bytes) {
                    return Ok(state);
                }
            }
            let fresh = FleetState {
                gateway: fresh_gateway,
                clock_offset_ms: 0,
                gateways: 1,
                away_until_ms: 0,
                failures: 0,
            };
            let token = insert_token(store)?;
            // Another worker may have created it meanwhile: then read theirs.
            store.set(FLEET_STATE_KEY, &fresh.encode(), token)?;
        }
        Err(CountError::Contention)
    }

    /// Records what the broker said (or that it could not be reached) with one write.
    pub fn update<S: SharedStore + ?Sized>(
        store: &mut S,
        change: impl Fn(&mut FleetState),
    ) -> Result<FleetState, CountError> {
        for _ in 0..MAX_CAS_ATTEMPTS {
            let Some((bytes, token)) = store.get(FLEET_STATE_KEY)? else {
                return Err(CountError::Store(crate::shared::StoreError(
                    "the fleet state was never created".into(),
                )));
            };
            let mut state = FleetState::decode(&bytes).ok_or_else(|| {
                CountError::Store(crate::shared::StoreError(
                    "the fleet state in shared data is not readable".into(),
                ))
            })?;
            change(&mut state);
            if store.set(FLEET_STATE_KEY, &state.encode(), token)? == SetOutcome::Written {
                return Ok(state);
            }
        }
        Err(CountError::Contention)
    }

    /// The id the broker knows this gateway by.
    pub fn gateway_id(&self) -> String {
        format!("{:016x}", self.gateway)
    }

    /// The broker's clock, as this gateway reckons it at its own `local_ms`.
    pub fn broker_ms(&self, local_ms: u64) -> u64 {
        local_ms.saturating_add_signed(self.clock_offset_ms)
    }

    /// How claims count at `local_ms` under `settings`: against grants; after one failed ask,
    /// for [`AWAY_RETRY_MS`], only against what is held; after two or more in a row, under the
    /// configured fallback.
    pub fn counting(&self, settings: FleetSettings, local_ms: u64) -> Counting {
        let away =
            (self.failures > 0 && local_ms < self.away_until_ms).then_some(match self.failures {
                1 => Fallback::Closed,
                _ => settings.fallback,
            });
        Counting::Fleet {
            away,
            gateways: self.gateways.max(1),
        }
    }

    /// An ask at `local_ms` failed (no answer, an error, an unreadable grant).
    pub fn failed(&mut self, local_ms: u64) {
        self.failures = self.failures.saturating_add(1);
        self.away_until_ms = local_ms.saturating_add(AWAY_RETRY_MS);
    }

    /// The broker answered.
    pub fn answered(&mut self) {
        self.failures = 0;
        self.away_until_ms = 0;
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(STATE_LEN);
        out.extend_from_slice(&self.gateway.to_le_bytes());
        out.extend_from_slice(&self.clock_offset_ms.to_le_bytes());
        out.extend_from_slice(&self.gateways.to_le_bytes());
        out.extend_from_slice(&self.away_until_ms.to_le_bytes());
        out.extend_from_slice(&self.failures.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<FleetState> {
        if bytes.len() != STATE_LEN {
            return None;
        }
        Some(FleetState {
            gateway: u64::from_le_bytes(bytes[0..8].try_into().ok()?),
            clock_offset_ms: i64::from_le_bytes(bytes[8..16].try_into().ok()?),
            gateways: u32::from_le_bytes(bytes[16..20].try_into().ok()?),
            away_until_ms: u64::from_le_bytes(bytes[20..28].try_into().ok()?),
            failures: u32::from_le_bytes(bytes[28..32].try_into().ok()?),
        })
    }
}

#[cfg(test)]
mod tests;
