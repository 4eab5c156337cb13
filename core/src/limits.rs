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

use crate::fleet::Fallback;
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
const FLEET_FORMAT: u8 = 2;
const SLOT_LEN: usize = 1 + 8 + 8;
const FLEET_SLOT_LEN: usize = SLOT_LEN + 8 + 8;
/// Stored for a slot without a grant, and for a fleet room not known.
const NONE: u64 = u64::MAX;

/// The most limits a plan has: one per period.
pub const MAX_LIMITS: usize = 5;

/// The fewest units a gateway asks the broker for at once.
pub const MIN_WANT: u64 = 8;

/// Whom a gateway's counts are shared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Counting {
    /// The gateway counts alone: a window admits up to the plan's limit here.
    #[default]
    Alone,
    /// Fleet-wide: a window admits what the broker granted this gateway in it.
    Fleet {
        /// The broker cannot be reached: what a spent allowance falls back to.
        away: Option<Fallback>,
        /// Gateways the broker saw in the last minute (the N of `share`), at least 1.
        gateways: u32,
    },
}

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
    /// Fleet-wide counting: this gateway's grant for the window is spent while the fleet may
    /// have room. Nothing was counted; ask the broker to allow `want` more requests (holding
    /// `held` unused in each limit's window) and decide again.
    Starved {
        want: u64,
        held: [u64; MAX_LIMITS],
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
    /// Fleet-wide counting: the broker's grants to this gateway in this window.
    pub(crate) grant: Option<Grant>,
}

/// What the broker granted a gateway in one window, and what it said was left for the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Grant {
    pub(crate) allowance: u64,
    /// `None`: not known (a window this gateway counted in while the broker was away).
    pub(crate) fleet_room: Option<u64>,
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
    match claim(limits, &decode(stored), now_ms, Counting::Alone, |_| 1) {
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
    /// Some limit has no room in the window the request is served in (or, counting
    /// fleet-wide, this gateway's grant is spent: [`Admission::Starved`]); write nothing.
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

/// One limit as a claim sees it: its window, what is claimed in it here, how far claims may go
/// here, and (counting fleet-wide) what the broker said the rest of the fleet had left.
struct Room<'a> {
    limit: &'a RateLimit,
    window: Window,
    count: u64,
    cap: u64,
    grant: Option<Grant>,
}

impl Room<'_> {
    /// What the whole fleet has left beyond this gateway's own room, as last heard.
    fn elsewhere(&self) -> u64 {
        self.grant.and_then(|g| g.fleet_room).unwrap_or(0)
    }
}

/// Claims room for up to `want(room)` requests in every limit at once, where `room` is the
/// fewest requests any limit has left here in the window a request at `now_ms` is served in.
pub(crate) fn claim(
    limits: &[RateLimit],
    previous: &[Slot],
    now_ms: u64,
    counting: Counting,
    want: impl FnOnce(u64) -> u64,
) -> Claim {
    let rooms: Vec<Room> = limits
        .iter()
        .map(|limit| {
            let (window, stored) = current_window(limit.per, previous, now_ms);
            let count = stored.map_or(0, |s| s.count);
            let grant = stored.and_then(|s| s.grant);
            let cap = match counting {
                Counting::Alone => limit.requests,
                Counting::Fleet { away, gateways } => {
                    let allowance = grant.map_or(0, |g| g.allowance);
                    match away {
                        None | Some(Fallback::Closed) => allowance,
                        Some(Fallback::Share) => {
                            allowance.max(limit.requests / u64::from(gateways.max(1)))
                        }
                        Some(Fallback::Local) => limit.requests,
                    }
                    .min(limit.requests)
                }
            };
            Room {
                limit,
                window,
                count,
                cap,
                grant,
            }
        })
        .collect();

    // The limit itself is spent here, or (fleet-wide) the broker said the fleet has none left.
    let exhausted = rooms
        .iter()
        .filter(|r| {
            r.count >= r.limit.requests
                || (r.count >= r.cap && r.grant.is_some_and(|g| g.fleet_room == Some(0)))
        })
        .max_by_key(|r| r.window.end);
    if let Some(r) = exhausted {
        return rejected(r.limit.requests, r.window.seconds_left(now_ms), now_ms, r);
    }
    // Counting fleet-wide, this gateway's own part is spent.
    if let Some(r) = rooms.iter().find(|r| r.count >= r.cap) {
        return match counting {
            Counting::Fleet { away: None, .. } => {
                // Half again what was claimed here in the window (so a busy contract asks
                // less and less often), plus what was counted here beyond the grants (while
                // the broker was away, or before counts were fleet-wide).
                let busiest = rooms.iter().map(|r| r.count).max().unwrap_or(0);
                let owed = rooms
                    .iter()
                    .map(|r| r.count.saturating_sub(r.cap))
                    .max()
                    .unwrap_or(0);
                let smallest = rooms.iter().map(|r| r.limit.requests).min().unwrap_or(1);
                let mut held = [0; MAX_LIMITS];
                for (h, r) in held.iter_mut().zip(&rooms) {
                    *h = r.cap.saturating_sub(r.count);
                }
                Claim::Rejected(Admission::Starved {
                    want: ((busiest / 2).max(MIN_WANT) + owed).min(smallest),
                    held,
                })
            }
            // Retried once the broker may be back (it is asked again after a second).
            Counting::Fleet {
                away: Some(Fallback::Closed),
                ..
            } => rejected(r.limit.requests, 1, now_ms, r),
            _ => rejected(r.limit.requests, r.window.seconds_left(now_ms), now_ms, r),
        };
    }

    let room = rooms
        .iter()
        .map(|r| r.cap - r.count)
        .min()
        .unwrap_or(u64::MAX);
    let granted = want(room).clamp(1, room.max(1));
    let slots: Vec<Slot> = rooms
        .iter()
        .map(|r| Slot {
            period: r.limit.per,
            window_start: r.window.start,
            count: r.count.saturating_add(granted),
            grant: r.grant.or(match counting {
                Counting::Alone => None,
                // Counted in a window the broker granted nothing in (it is away).
                Counting::Fleet { .. } => Some(Grant {
                    allowance: 0,
                    fleet_room: None,
                }),
            }),
        })
        .collect();
    Claim::Granted {
        granted,
        windows: rooms.iter().map(|r| r.window).collect(),
        room_after: rooms
            .iter()
            .map(|r| {
                (r.cap - r.count - granted)
                    .saturating_add(r.elsewhere())
                    .min(r.limit.requests)
            })
            .collect(),
        value: encode(&slots),
    }
}

fn rejected(limit: u64, retry_after: u64, now_ms: u64, r: &Room) -> Claim {
    let retry_after = retry_after.min(r.window.seconds_left(now_ms)).max(1);
    Claim::Rejected(Admission::Rejected {
        status: RateStatus {
            limit,
            remaining: 0,
            reset: r.window.seconds_left(now_ms),
        },
        retry_after,
    })
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

/// The window of `period` a request stamped `now_ms` counts in, and the slot stored for it:
/// the request's own window, or the stored one when that is newer (see the module docs).
pub(crate) fn current_window(
    period: Period,
    stored: &[Slot],
    now_ms: u64,
) -> (Window, Option<&Slot>) {
    let own = window(period, now_ms);
    match stored.iter().find(|s| s.period == period) {
        Some(s) if s.window_start == own.start => (own, Some(s)),
        Some(s)
            if s.window_start > own.start
                && s.window_start.saturating_mul(1000).saturating_sub(now_ms)
                    <= MAX_CLOCK_LAG_MS =>
        {
            (window(period, s.window_start.saturating_mul(1000)), Some(s))
        }
        _ => (own, None),
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
    let fleet = slots.iter().any(|s| s.grant.is_some());
    let len = if fleet { FLEET_SLOT_LEN } else { SLOT_LEN };
    let mut out = Vec::with_capacity(1 + slots.len() * len);
    out.push(if fleet { FLEET_FORMAT } else { STATE_FORMAT });
    for slot in slots {
        out.push(slot.period.tag());
        out.extend_from_slice(&slot.window_start.to_le_bytes());
        out.extend_from_slice(&slot.count.to_le_bytes());
        if fleet {
            let (allowance, room) = slot.grant.map_or((NONE, NONE), |g| {
                (g.allowance, g.fleet_room.unwrap_or(NONE))
            });
            out.extend_from_slice(&allowance.to_le_bytes());
            out.extend_from_slice(&room.to_le_bytes());
        }
    }
    out
}

/// Reads what [`encode`] wrote. Anything else (an empty value, another format) holds no
/// counts: it can only be a key that was never counted under these formats.
pub(crate) fn decode(bytes: &[u8]) -> Vec<Slot> {
    let (len, rest) = match bytes.split_first() {
        Some((&STATE_FORMAT, rest)) => (SLOT_LEN, rest),
        Some((&FLEET_FORMAT, rest)) => (FLEET_SLOT_LEN, rest),
        _ => return Vec::new(),
    };
    let u64_at = |chunk: &[u8], at: usize| {
        chunk
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    rest.chunks_exact(len)
        .filter_map(|chunk| {
            let period = Period::from_tag(chunk[0])?;
            let grant = match (u64_at(chunk, 17), u64_at(chunk, 25)) {
                (Some(allowance), Some(room)) if allowance != NONE => Some(Grant {
                    allowance,
                    fleet_room: (room != NONE).then_some(room),
                }),
                _ => None,
            };
            Some(Slot {
                period,
                window_start: u64_at(chunk, 1)?,
                count: u64_at(chunk, 9)?,
                grant,
            })
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod interleave;
#[cfg(test)]
mod tests;
