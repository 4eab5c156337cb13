//! Plan limits: the per-contract counter state and the one admission algorithm.
//!
//! Each contract has exactly one counter key in shared data, holding the current window and
//! count of every limit of its plan, so one compare-and-swap admits a request against all limits
//! at once. Keys are therefore bounded by the number of contracts, never by windows or callers.
//!
//! A request is admitted only if every limit has room in its current window; then it counts
//! against all of them. A rejected request writes nothing. A CAS mismatch means another worker
//! wrote first: re-read and re-check, never write anyway.
//!
//! A stored window never moves backwards. Each worker reads the clock once per request and
//! keeps that stamp across CAS retries, so a request stamped just before a boundary can land
//! after another worker has already counted in the new window. Such a request is decided
//! against the stored, newer window and counted there: another worker has seen that window
//! begin, so the request is really being served in it. (Re-reading the clock instead would
//! need a clock in every store call and still leave a request that read before the boundary
//! and lost no race deciding on its old stamp; deciding on the stored state needs neither.)
//! The one exception is a stored window more than [`MAX_CLOCK_LAG_MS`] ahead of the request:
//! no request is delayed that long, so the host clock was stepped back, and counting into a
//! window that starts far in the future would refuse the contract until the clock caught up.
//!
//! # Counter value format (version 1)
//!
//! The value of [`counter_key`] is `[1]` followed by one 17-byte slot per limit of the plan:
//! `period tag (u8, [`Period::tag`]) | window start (u64 LE, Unix seconds) | count (u64 LE)`.
//! `count` is every request *claimed* in that window: admitted, or reserved by a worker's lease
//! and not yet returned ([`crate::lease`]). So for every stored slot, `count <= requests`, and
//! a slot's window start only ever grows (outside a clock step, see above). Any other value
//! (empty, another version) holds no counts.

use crate::shared::{SetOutcome, SharedStore, StoreError};
use crate::snapshot::{Period, RateLimit};
use crate::time::{window, Window};

/// How often a request re-reads after losing a CAS race before it gives up (and is refused,
/// never admitted). Each lost race means another request was counted in between; a worker that
/// sleeps on Envoy's shared-data mutex between its read and its write can lose many in a row
/// (a native test with 8 threads on 2 cores saw 100), so the bound is generous: an attempt is
/// two host calls, about a microsecond each.
pub const MAX_CAS_ATTEMPTS: u32 = 1_000;

/// How far (in ms) a stored window may start ahead of a request's stamp and still be taken as
/// the window the request is served in. Beyond it the stored window is taken as written under
/// a clock that has since been stepped back, and the request counts in its own window.
pub const MAX_CLOCK_LAG_MS: u64 = 10_000;

/// A shared-data key that exists only to lend its CAS token to inserts; see [`insert_token`].
pub const INSERT_GUARD_KEY: &str = "tollgate.insert-guard";

const STATE_FORMAT: u8 = 1;
const SLOT_LEN: usize = 1 + 8 + 8;

pub fn counter_key(contract_id: u64) -> String {
    format!("tollgate.contract.{contract_id}")
}

/// What a response tells the caller about the most constraining limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateStatus {
    pub limit: u64,
    pub remaining: u64,
    /// Whole seconds to the end of that limit's window.
    pub reset: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admitted(RateStatus),
    /// Some limit is exhausted; nothing was counted.
    Rejected {
        status: RateStatus,
        retry_after: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CountError {
    Store(StoreError),
    /// Lost the CAS race [`MAX_CAS_ATTEMPTS`] times in a row.
    Contention,
}

impl From<StoreError> for CountError {
    fn from(e: StoreError) -> Self {
        CountError::Store(e)
    }
}

/// The outcome of [`count_request`] with the number of CAS races lost on the way (a metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counted {
    pub admission: Admission,
    pub cas_retries: u32,
}

/// One limit's window and count as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    pub(crate) period: Period,
    pub(crate) window_start: u64,
    pub(crate) count: u64,
}

/// Admits or rejects one request against `limits`, counting it in `store` under `key`.
pub fn count_request<S: SharedStore + ?Sized>(
    store: &mut S,
    key: &str,
    limits: &[RateLimit],
    now_ms: u64,
) -> Result<Counted, CountError> {
    for attempt in 0..MAX_CAS_ATTEMPTS {
        let current = store.get(key)?;
        let stored = current.as_ref().map(|(value, _)| value.as_slice());
        let (admission, next) = evaluate(limits, stored.unwrap_or(&[]), now_ms);
        let Some(next) = next else {
            return Ok(Counted {
                admission,
                cas_retries: attempt,
            });
        };
        let cas = match &current {
            Some((_, token)) => *token,
            None => insert_token(store)?,
        };
        match store.set(key, &next, cas)? {
            SetOutcome::Written => {
                return Ok(Counted {
                    admission,
                    cas_retries: attempt,
                })
            }
            SetOutcome::CasMismatch => continue,
        }
    }
    Err(CountError::Contention)
}

/// A CAS token for writing a key we saw absent, such that the write fails if someone else has
/// created the key since.
///
/// Envoy ignores the token when the key is absent, so an insert can only be guarded by a token
/// that the key cannot hold once it exists. Tokens come from one process-wide sequence and each
/// is handed to one write of one key, so any token ever held by *another* key qualifies: we use
/// the guard key's. (Only a wrap of the 32-bit sequence between the guard's write and this
/// insert could collide.)
pub(crate) fn insert_token<S: SharedStore + ?Sized>(store: &mut S) -> Result<u32, StoreError> {
    for _ in 0..2 {
        if let Some((_, token)) = store.get(INSERT_GUARD_KEY)? {
            return Ok(token);
        }
        // The guard's value is irrelevant; racing creators are harmless.
        store.set(INSERT_GUARD_KEY, &[], 0)?;
    }
    Err(StoreError(format!(
        "shared data key {INSERT_GUARD_KEY} was written but cannot be read back"
    )))
}

/// Decides on one request given the stored counter value; returns the new value to write when
/// the request is admitted.
fn evaluate(limits: &[RateLimit], stored: &[u8], now_ms: u64) -> (Admission, Option<Vec<u8>>) {
    match claim(limits, &decode(stored), now_ms, |_| 1) {
        Claim::Rejected(admission) => (admission, None),
        Claim::Granted {
            windows,
            room_after,
            value,
            ..
        } => (
            Admission::Admitted(admitted_status(limits, &windows, &room_after, 0, now_ms)),
            Some(value),
        ),
    }
}

/// What claiming room in a stored counter came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Claim {
    /// Some limit has no room in the window the request is served in; write nothing.
    Rejected(Admission),
    /// `granted` (≥ 1) requests claimed in every limit's window: write `value`.
    Granted {
        granted: u64,
        /// Per limit (in the plan's order): the window claimed in, and what is left in it for
        /// everyone once this claim is written.
        windows: Vec<Window>,
        room_after: Vec<u64>,
        value: Vec<u8>,
    },
}

/// Claims room for up to `want(room)` requests in every limit at once, where `room` is the
/// fewest requests any limit has left in the window a request at `now_ms` is served in.
pub(crate) fn claim(
    limits: &[RateLimit],
    previous: &[Slot],
    now_ms: u64,
    want: impl FnOnce(u64) -> u64,
) -> Claim {
    // (limit, window, count claimed before this request)
    let current: Vec<_> = limits
        .iter()
        .map(|limit| {
            let (w, count) = current_window(limit.per, previous, now_ms);
            (limit, w, count)
        })
        .collect();

    let exhausted = current
        .iter()
        .filter(|(limit, _, count)| *count >= limit.requests)
        .max_by_key(|(_, w, _)| w.end);
    if let Some((limit, w, _)) = exhausted {
        let retry_after = w.seconds_left(now_ms);
        let status = RateStatus {
            limit: limit.requests,
            remaining: 0,
            reset: retry_after,
        };
        return Claim::Rejected(Admission::Rejected {
            status,
            retry_after,
        });
    }

    let room = current
        .iter()
        .map(|(limit, _, count)| limit.requests - count)
        .min()
        .unwrap_or(u64::MAX);
    let granted = want(room).clamp(1, room.max(1));
    let slots: Vec<Slot> = current
        .iter()
        .map(|(limit, w, count)| Slot {
            period: limit.per,
            window_start: w.start,
            count: count.saturating_add(granted),
        })
        .collect();
    Claim::Granted {
        granted,
        windows: current.iter().map(|(_, w, _)| *w).collect(),
        room_after: current
            .iter()
            .map(|(limit, _, count)| limit.requests.saturating_sub(count.saturating_add(granted)))
            .collect(),
        value: encode(&slots),
    }
}

/// The status of a request admitted from a claim of which its holder has `left` unused: the
/// room everyone else had when the claim was written, plus the holder's own unused part.
pub(crate) fn admitted_status(
    limits: &[RateLimit],
    windows: &[Window],
    room_after: &[u64],
    left: u64,
    now_ms: u64,
) -> RateStatus {
    most_constraining(
        limits
            .iter()
            .zip(windows)
            .zip(room_after)
            .map(|((limit, w), room)| (limit.requests, room.saturating_add(left), w, now_ms)),
    )
}

/// The window of `period` a request stamped `now_ms` counts in, and the count stored for it:
/// the request's own window, or the stored one when that is newer (see the module docs).
pub(crate) fn current_window(period: Period, stored: &[Slot], now_ms: u64) -> (Window, u64) {
    let own = window(period, now_ms);
    match stored.iter().find(|s| s.period == period) {
        Some(s) if s.window_start == own.start => (own, s.count),
        Some(s)
            if s.window_start > own.start
                && s.window_start.saturating_mul(1000).saturating_sub(now_ms)
                    <= MAX_CLOCK_LAG_MS =>
        {
            (window(period, s.window_start.saturating_mul(1000)), s.count)
        }
        _ => (own, 0),
    }
}

/// The limit with the fewest requests left; among equals, the one whose window ends last.
fn most_constraining<'a>(
    candidates: impl Iterator<Item = (u64, u64, &'a Window, u64)>,
) -> RateStatus {
    let mut best: Option<(RateStatus, u64)> = None;
    for (limit, remaining, w, now_ms) in candidates {
        let status = RateStatus {
            limit,
            remaining,
            reset: w.seconds_left(now_ms),
        };
        let better = match &best {
            None => true,
            Some((b, end)) => remaining < b.remaining || (remaining == b.remaining && w.end > *end),
        };
        if better {
            best = Some((status, w.end));
        }
    }
    best.map_or(
        RateStatus {
            limit: 0,
            remaining: 0,
            reset: 0,
        },
        |(s, _)| s,
    )
}

pub(crate) fn encode(slots: &[Slot]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + slots.len() * SLOT_LEN);
    out.push(STATE_FORMAT);
    for slot in slots {
        out.push(slot.period.tag());
        out.extend_from_slice(&slot.window_start.to_le_bytes());
        out.extend_from_slice(&slot.count.to_le_bytes());
    }
    out
}

/// Reads what [`encode`] wrote. Anything else (an empty value, another format) holds no
/// counts: it can only be a key that was never counted under this format.
pub(crate) fn decode(bytes: &[u8]) -> Vec<Slot> {
    let Some((&STATE_FORMAT, rest)) = bytes.split_first() else {
        return Vec::new();
    };
    rest.chunks_exact(SLOT_LEN)
        .filter_map(|chunk| {
            let period = Period::from_tag(chunk[0])?;
            let window_start = u64::from_le_bytes(chunk[1..9].try_into().ok()?);
            let count = u64::from_le_bytes(chunk[9..17].try_into().ok()?);
            Some(Slot {
                period,
                window_start,
                count,
            })
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod interleave;
#[cfg(test)]
mod tests;
