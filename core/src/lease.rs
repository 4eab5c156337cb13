//! Worker-local quota leases: a worker claims a chunk of a contract's current windows in the
//! shared counter with one compare-and-swap and admits from it with no host call at all.
//!
//! The counter value keeps its format ([`crate::limits`]): a slot's `count` is what has been
//! *claimed* in its window, i.e. admitted plus reserved by some worker's lease and not yet
//! returned. A lease reserves the same number in every limit of the plan (they are claimed
//! together), so its unused part is one number. Hence, per window: admitted + reserved ≤ L,
//! and a stored window never moves backwards (claims go through [`crate::limits::claim`]).
//!
//! - The chunk is sized from the room left and the number of workers: `room / (2 × workers)`,
//!   at most [`MAX_CHUNK`], and 1 near the limit — so a worker holds little that others might
//!   need, and what one worker holds shrinks as the window fills.
//! - A lease serves requests whose windows are its own (a stale stamp from an older window is
//!   served in the lease's newer one, as with the counter itself). A request from a newer
//!   window, or a plan whose limits changed, refills, and the refill's one CAS also returns the
//!   old lease's unused part into the windows still stored (e.g. the day of a
//!   second-and-day plan).
//! - On the worker's tick, leases idle for [`IDLE_RETURN_MS`], or whose window has ended, are
//!   returned (into windows the counter still holds, never into newer ones) and dropped; so
//!   the book is bounded by the contracts a worker served within that time, and never more
//!   than [`MAX_LEASES`] (beyond that a request claims exactly itself, as without leases).
//!   The idle time is a duration, not a number of ticks: live mode ticks every 20 ms, and a
//!   contract served a few times a second should not pay a refill and a return per request.
//! - A denied request writes nothing; the stale lease it might have returned waits for the
//!   tick.
//!
//! Headers from a lease describe the shared counter as of the lease's last refill: `remaining`
//! is the room others had then plus this worker's unused part, which never over-promises
//! relative to that state (other workers may have used some of it since).

use std::collections::HashMap;

use crate::limits::{
    admitted_status, claim, current_window, decode, encode, insert_token, Admission, Claim,
    CountError, Counted, Counting, Slot, MAX_CAS_ATTEMPTS,
};
use crate::shared::{SetOutcome, SharedStore, StoreError};
use crate::snapshot::RateLimit;
use crate::time::Window;

/// The most a worker reserves at once for one contract.
pub const MAX_CHUNK: u64 = 64;

/// The most leases one worker keeps; more contracts within one tick claim request by request.
pub const MAX_LEASES: usize = 10_000;

/// How long a lease may go unused before the tick hands it back.
pub const IDLE_RETURN_MS: u64 = 1_000;

/// Where workers count themselves so chunks can be sized for all of them: a little-endian u32.
pub const WORKERS_KEY: &str = "tollgate.workers";

/// How often a tick's return of one lease re-reads after losing a CAS race before it keeps
/// the lease for the next tick.
const RETURN_ATTEMPTS: u32 = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Lease {
    limits: Vec<RateLimit>,
    /// Per limit: the window reserved in.
    windows: Vec<Window>,
    /// Per limit: the room the counter had for everyone else after the last refill.
    room_after: Vec<u64>,
    /// Reserved in the counter and not yet admitted.
    left: u64,
    /// The stamp of the latest request it served (or of its refill).
    last_used_ms: u64,
}

impl Lease {
    /// Whether a request for `limits` stamped `now_ms` is served in this lease's windows.
    fn serves(&self, limits: &[RateLimit], now_ms: u64) -> bool {
        self.limits == limits && self.current(now_ms)
    }

    /// Whether a request stamped `now_ms` is served in this lease's windows.
    fn current(&self, now_ms: u64) -> bool {
        self.limits.iter().zip(&self.windows).all(|(limit, w)| {
            let mine = [Slot {
                period: limit.per,
                window_start: w.start,
                count: 0,
                grant: None,
            }];
            current_window(limit.per, &mine, now_ms).0 == *w
        })
    }

    /// The stored slots with this lease's unused part given back to the windows it was
    /// reserved in (slots that have moved on to newer windows are left alone).
    fn give_back(&self, stored: &mut [Slot]) {
        if self.left == 0 {
            return;
        }
        for slot in stored.iter_mut() {
            let reserved_here = self
                .limits
                .iter()
                .zip(&self.windows)
                .any(|(limit, w)| limit.per == slot.period && w.start == slot.window_start);
            if reserved_here {
                slot.count = slot.count.saturating_sub(self.left);
            }
        }
    }
}

/// One worker's leases, keyed by counter key.
#[derive(Debug)]
pub struct LeaseBook {
    leases: HashMap<String, Lease>,
    workers: u32,
    /// Whether `workers` was set or read from [`WORKERS_KEY`]: workers count themselves as
    /// they start, so a book made by the first one reads the count again at its first refill.
    workers_known: bool,
    /// Whether the counters it claims from hold this gateway's counts or its fleet grants.
    counting: Counting,
}

impl Default for LeaseBook {
    fn default() -> Self {
        LeaseBook {
            leases: HashMap::new(),
            workers: 1,
            workers_known: false,
            counting: Counting::Alone,
        }
    }
}

/// What one tick's returns did, for metrics and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Returned {
    /// Reserved requests put back into the counter.
    pub requests: u64,
    /// Leases kept for the next tick because their return lost every CAS race.
    pub kept: usize,
}

impl LeaseBook {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sizes chunks for `workers` workers (at least 1).
    pub fn set_workers(&mut self, workers: u32) {
        self.workers = workers.max(1);
        self.workers_known = true;
    }

    /// Claims from now on count alone or against fleet grants (see [`Counting`]).
    pub fn set_counting(&mut self, counting: Counting) {
        self.counting = counting;
    }

    pub fn counting(&self) -> Counting {
        self.counting
    }

    pub fn len(&self) -> usize {
        self.leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// Requests reserved by this book and not yet admitted, over all its leases.
    pub fn reserved(&self) -> u64 {
        self.leases.values().map(|l| l.left).sum()
    }

    fn chunk(&self, room: u64) -> u64 {
        (room / (2 * u64::from(self.workers))).clamp(1, MAX_CHUNK)
    }

    /// Admits or rejects one request against `limits` for the counter `key`: from this
    /// worker's lease when it has room for the request's windows (no host call), else by
    /// refilling the lease with one CAS on the shared counter.
    pub fn admit<S: SharedStore + ?Sized>(
        &mut self,
        store: &mut S,
        key: &str,
        limits: &[RateLimit],
        now_ms: u64,
    ) -> Result<Counted, CountError> {
        if let Some(lease) = self.leases.get_mut(key) {
            if lease.left > 0 && lease.serves(limits, now_ms) {
                lease.left -= 1;
                lease.last_used_ms = lease.last_used_ms.max(now_ms);
                let status = admitted_status(
                    &lease.limits,
                    &lease.windows,
                    &lease.room_after,
                    lease.left,
                    now_ms,
                );
                return Ok(Counted {
                    admission: Admission::Admitted(status),
                    cas_retries: 0,
                });
            }
        }
        self.refill(store, key, limits, now_ms)
    }

    fn refill<S: SharedStore + ?Sized>(
        &mut self,
        store: &mut S,
        key: &str,
        limits: &[RateLimit],
        now_ms: u64,
    ) -> Result<Counted, CountError> {
        if !self.workers_known {
            if let Some(workers) = workers(store)? {
                self.set_workers(workers);
            }
            self.workers_known = true;
        }
        // The lease being replaced: its unused part goes back in the same write.
        let old = self.leases.remove(key);
        let keep = old.is_some() || self.leases.len() < MAX_LEASES;
        for attempt in 0..MAX_CAS_ATTEMPTS {
            let current = store.get(key)?;
            let mut stored = current
                .as_ref()
                .map(|(value, _)| decode(value))
                .unwrap_or_default();
            if let Some(old) = &old {
                old.give_back(&mut stored);
            }
            let chunk = |room| if keep { self.chunk(room) } else { 1 };
            match claim(limits, &stored, now_ms, self.counting, chunk) {
                Claim::Rejected(admission) => {
                    if let Some(old) = old {
                        self.leases.insert(key.to_owned(), old);
                    }
                    return Ok(Counted {
                        admission,
                        cas_retries: attempt,
                    });
                }
                Claim::Granted {
                    granted,
                    windows,
                    room_after,
                    value,
                } => {
                    let cas = match &current {
                        Some((_, token)) => *token,
                        None => insert_token(store)?,
                    };
                    if store.set(key, &value, cas)? == SetOutcome::CasMismatch {
                        continue;
                    }
                    let left = granted - 1;
                    let status = admitted_status(limits, &windows, &room_after, left, now_ms);
                    if keep {
                        self.leases.insert(
                            key.to_owned(),
                            Lease {
                                limits: limits.to_vec(),
                                windows,
                                room_after,
                                left,
                                last_used_ms: now_ms,
                            },
                        );
                    }
                    return Ok(Counted {
                        admission: Admission::Admitted(status),
                        cas_retries: attempt,
                    });
                }
            }
        }
        if let Some(old) = old {
            self.leases.insert(key.to_owned(), old);
        }
        Err(CountError::Contention)
    }

    /// The worker's tick: returns and drops every lease idle for [`IDLE_RETURN_MS`] or whose
    /// window has ended by `now_ms`. Also re-reads how many workers there are.
    pub fn on_tick<S: SharedStore + ?Sized>(
        &mut self,
        store: &mut S,
        now_ms: u64,
    ) -> Result<Returned, StoreError> {
        if let Some(workers) = workers(store)? {
            self.set_workers(workers);
        }
        self.hand_back(store, |lease| {
            now_ms.saturating_sub(lease.last_used_ms) >= IDLE_RETURN_MS || !lease.current(now_ms)
        })
    }

    /// Returns and drops every lease (a worker that stops serving).
    pub fn return_all<S: SharedStore + ?Sized>(
        &mut self,
        store: &mut S,
    ) -> Result<Returned, StoreError> {
        self.hand_back(store, |_| true)
    }

    fn hand_back<S: SharedStore + ?Sized>(
        &mut self,
        store: &mut S,
        due: impl Fn(&Lease) -> bool,
    ) -> Result<Returned, StoreError> {
        let mut done = Returned::default();
        let due: Vec<String> = self
            .leases
            .iter()
            .filter(|(_, lease)| due(lease))
            .map(|(key, _)| key.clone())
            .collect();
        for key in due {
            let Some(lease) = self.leases.remove(&key) else {
                continue;
            };
            if lease.left == 0 {
                continue;
            }
            if give_back(store, &key, &lease)? {
                done.requests += lease.left;
            } else {
                done.kept += 1;
                self.leases.insert(key, lease);
            }
        }
        Ok(done)
    }

    /// The windows (start, per limit) of the lease held for `key`, for tests.
    #[cfg(test)]
    pub(crate) fn lease_windows(&self, key: &str) -> Option<Vec<u64>> {
        self.leases
            .get(key)
            .map(|l| l.windows.iter().map(|w| w.start).collect())
    }
}

/// Writes `lease`'s unused part back into the counter; false if every attempt lost a race.
fn give_back<S: SharedStore + ?Sized>(
    store: &mut S,
    key: &str,
    lease: &Lease,
) -> Result<bool, StoreError> {
    for _ in 0..RETURN_ATTEMPTS {
        let Some((value, cas)) = store.get(key)? else {
            // Nothing stored holds the reservation any more.
            return Ok(true);
        };
        let mut stored = decode(&value);
        let before = stored.clone();
        lease.give_back(&mut stored);
        if stored == before {
            return Ok(true); // every window it was reserved in has moved on
        }
        if store.set(key, &encode(&stored), cas)? == SetOutcome::Written {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Counts this worker in [`WORKERS_KEY`] (once per worker VM: a VM that counted itself twice
/// only makes chunks smaller) and returns how many workers have counted themselves.
pub fn join_workers<S: SharedStore + ?Sized>(store: &mut S) -> Result<u32, CountError> {
    for _ in 0..MAX_CAS_ATTEMPTS {
        let current = store.get(WORKERS_KEY)?;
        let count = current
            .as_ref()
            .and_then(|(value, _)| decode_workers(value))
            .unwrap_or(0)
            .saturating_add(1);
        let cas = match &current {
            Some((_, token)) => *token,
            None => insert_token(store)?,
        };
        if store.set(WORKERS_KEY, &count.to_le_bytes(), cas)? == SetOutcome::Written {
            return Ok(count);
        }
    }
    Err(CountError::Contention)
}

fn workers<S: SharedStore + ?Sized>(store: &mut S) -> Result<Option<u32>, StoreError> {
    Ok(store
        .get(WORKERS_KEY)?
        .and_then(|(value, _)| decode_workers(&value)))
}

fn decode_workers(value: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(value.try_into().ok()?))
}

#[cfg(test)]
mod tests;
