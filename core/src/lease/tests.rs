use super::*;
use crate::limits::count_request;
use crate::limits::interleave::{Call, Observe, Scheduler};
use crate::shared::MemoryStore;
use crate::snapshot::Period;
use crate::time::window;
use proptest::prelude::*;
use std::collections::HashMap;

const KEY: &str = "tollgate.contract.7";
// 2025-06-15T12:00:00Z: far from any minute, hour, day or month boundary.
const NOON: u64 = 1_749_988_800_000;
const NEW_YEAR_2026: u64 = 1_767_225_600_000;

fn limit(requests: u64, per: Period) -> RateLimit {
    RateLimit { requests, per }
}

/// A memory store that counts the host calls made through it.
#[derive(Default)]
struct Counting {
    store: MemoryStore,
    calls: u32,
}

impl SharedStore for Counting {
    fn get(&mut self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        self.calls += 1;
        self.store.get(key)
    }
    fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<SetOutcome, StoreError> {
        self.calls += 1;
        self.store.set(key, value, cas)
    }
}

fn claimed(store: &MemoryStore) -> Vec<(Period, u64, u64)> {
    store
        .peek(KEY)
        .map(|(v, _)| {
            decode(&v)
                .iter()
                .map(|s| (s.period, s.window_start, s.count))
                .collect()
        })
        .unwrap_or_default()
}

fn remaining(c: &Counted) -> Option<u64> {
    match c.admission {
        Admission::Admitted(s) => Some(s.remaining),
        Admission::Rejected { .. } | Admission::Starved { .. } => None,
    }
}

#[test]
fn a_lease_admits_without_host_calls_until_it_runs_out() {
    let mut store = Counting::default();
    let mut book = LeaseBook::new();
    book.set_workers(2);
    let limits = [limit(1_000, Period::Day)];
    book.admit(&mut store, KEY, &limits, NOON).unwrap();
    let refill_calls = store.calls;
    // One CAS reserved min(1000 / 4, MAX_CHUNK) = 64: the next 63 need no host call.
    for _ in 0..63 {
        book.admit(&mut store, KEY, &limits, NOON + 5).unwrap();
    }
    assert_eq!(
        store.calls, refill_calls,
        "admissions from the lease called the host"
    );
    assert_eq!(claimed(&store.store)[0].2, 64);
    book.admit(&mut store, KEY, &limits, NOON + 6).unwrap();
    assert!(store.calls > refill_calls, "the 65th request refilled");
    assert_eq!(claimed(&store.store)[0].2, 128);
}

#[test]
fn one_worker_sees_the_same_headers_as_without_leases() {
    let limits = [limit(30, Period::Minute), limit(100, Period::Day)];
    let mut book = LeaseBook::new();
    let mut with_leases = MemoryStore::new();
    let mut without = MemoryStore::new();
    for n in 0..35 {
        let leased = book
            .admit(&mut with_leases, KEY, &limits, NOON + n)
            .unwrap();
        let plain = count_request(&mut without, KEY, &limits, NOON + n).unwrap();
        assert_eq!(leased.admission, plain.admission, "request {n}");
    }
    // Chunks shrank to 1 near the limit: exactly 30 claimed, nothing reserved beyond it.
    assert_eq!(claimed(&with_leases)[0].2, 30);
}

#[test]
fn chunks_shrink_to_one_near_the_limit_and_the_limit_is_exact() {
    let limits = [limit(50, Period::Hour)];
    let mut store = MemoryStore::new();
    let mut books: Vec<LeaseBook> = (0..4).map(|_| LeaseBook::new()).collect();
    for b in &mut books {
        b.set_workers(4);
    }
    let mut admitted = 0;
    for n in 0..400u64 {
        let book = &mut books[(n % 4) as usize];
        let c = book.admit(&mut store, KEY, &limits, NOON + n).unwrap();
        admitted += u64::from(remaining(&c).is_some());
        assert!(claimed(&store)[0].2 <= 50, "claimed beyond the limit");
    }
    // Every worker kept requesting, so no reservation was left unused.
    assert_eq!(admitted, 50);
    assert_eq!(books.iter().map(LeaseBook::reserved).sum::<u64>(), 0);
}

#[test]
fn a_denied_request_writes_nothing_even_with_a_stale_lease() {
    let limits = [limit(1, Period::Second), limit(100, Period::Day)];
    let mut store = MemoryStore::new();
    let mut book = LeaseBook::new();
    book.admit(&mut store, KEY, &limits, NOON).unwrap();
    let mut other = LeaseBook::new();
    other.admit(&mut store, KEY, &limits, NOON + 1_000).unwrap();
    let before = store.peek(KEY);
    let c = book.admit(&mut store, KEY, &limits, NOON + 1_001).unwrap();
    assert_eq!(remaining(&c), None);
    assert_eq!(store.peek(KEY), before, "value and CAS token unchanged");
}

#[test]
fn the_tick_returns_idle_leases_and_empties_the_book() {
    let limits = [limit(1_000, Period::Day)];
    let mut store = MemoryStore::new();
    let mut book = LeaseBook::new();
    for n in 0..3 {
        book.admit(&mut store, KEY, &limits, NOON + n).unwrap();
    }
    assert_eq!(claimed(&store)[0].2, 64); // 1000 / 2, capped: one chunk of 64
                                          // Used less than IDLE_RETURN_MS ago: kept. Idle for that long: returned and dropped.
    assert_eq!(
        book.on_tick(&mut store, NOON + 2 + IDLE_RETURN_MS - 1)
            .unwrap()
            .requests,
        0
    );
    assert_eq!(book.len(), 1);
    let returned = book.on_tick(&mut store, NOON + 2 + IDLE_RETURN_MS).unwrap();
    assert_eq!(returned.requests, 61);
    assert!(book.is_empty());
    assert_eq!(
        claimed(&store)[0].2,
        3,
        "exactly the admitted requests stay claimed"
    );
}

#[test]
fn a_lease_dies_with_its_window_and_returns_into_the_windows_still_current() {
    let limits = [limit(500, Period::Second), limit(10_000, Period::Day)];
    let mut store = MemoryStore::new();
    let mut book = LeaseBook::new();
    book.admit(&mut store, KEY, &limits, NOON + 10).unwrap();
    let day = window(Period::Day, NOON).start;
    assert_eq!(
        claimed(&store),
        vec![(Period::Second, NOON / 1000, 64), (Period::Day, day, 64)]
    );
    // The next second: the refill gives the day back 63 and claims a new chunk in one write.
    book.admit(&mut store, KEY, &limits, NOON + 1_010).unwrap();
    assert_eq!(
        claimed(&store),
        vec![
            (Period::Second, NOON / 1000 + 1, 64),
            (Period::Day, day, 1 + 64)
        ]
    );
    // A tick after that second ends returns into the day only, not into a newer second that
    // another worker opened meanwhile.
    let mut other = LeaseBook::new();
    other.admit(&mut store, KEY, &limits, NOON + 2_000).unwrap();
    book.on_tick(&mut store, NOON + 2_001).unwrap();
    assert!(book.is_empty());
    assert_eq!(
        claimed(&store),
        vec![
            (Period::Second, NOON / 1000 + 2, 64),
            (Period::Day, day, 2 + 64)
        ]
    );
}

#[test]
fn a_stale_stamp_is_served_in_the_leases_newer_window() {
    let limits = [limit(100, Period::Month)];
    let mut store = MemoryStore::new();
    let mut book = LeaseBook::new();
    book.admit(&mut store, KEY, &limits, NEW_YEAR_2026 + 5)
        .unwrap();
    book.admit(&mut store, KEY, &limits, NEW_YEAR_2026 - 3)
        .unwrap();
    assert_eq!(
        book.lease_windows(KEY),
        Some(vec![NEW_YEAR_2026 / 1000]),
        "a December stamp after January began is counted in January"
    );
    assert_eq!(
        claimed(&store),
        vec![(Period::Month, NEW_YEAR_2026 / 1000, 50)]
    );
}

#[test]
fn the_book_is_bounded_and_changed_limits_refill() {
    let mut store = MemoryStore::new();
    let mut book = LeaseBook::new();
    let limits = [limit(1_000, Period::Day)];
    for contract in 0..50 {
        book.admit(
            &mut store,
            &format!("tollgate.contract.{contract}"),
            &limits,
            NOON,
        )
        .unwrap();
    }
    assert_eq!(book.len(), 50);
    book.on_tick(&mut store, NOON + IDLE_RETURN_MS).unwrap();
    assert!(book.is_empty(), "contracts no longer served are dropped");
    // A plan whose limits changed is not served from the old lease.
    book.admit(&mut store, KEY, &limits, NOON).unwrap();
    let tighter = [limit(1, Period::Day)];
    let c = book.admit(&mut store, KEY, &tighter, NOON + 1).unwrap();
    assert_eq!(
        remaining(&c),
        None,
        "the old lease's 1000/day served a 1/day plan"
    );
}

#[test]
fn a_book_made_before_the_other_workers_started_sizes_chunks_for_all_of_them() {
    let mut store = MemoryStore::new();
    let mut book = LeaseBook::new(); // made when it was the only worker
    assert_eq!(join_workers(&mut store).unwrap(), 1);
    assert_eq!(join_workers(&mut store).unwrap(), 2);
    // Its first refill reads the count: 2 workers, 100 / 4 = 25, not 100 / 2.
    book.admit(&mut store, KEY, &[limit(100, Period::Day)], NOON)
        .unwrap();
    assert_eq!(book.reserved(), 24);
}

#[test]
fn workers_count_themselves_once_each() {
    let mut store = MemoryStore::new();
    assert_eq!(join_workers(&mut store).unwrap(), 1);
    assert_eq!(join_workers(&mut store).unwrap(), 2);
    let mut book = LeaseBook::new();
    book.on_tick(&mut store, NOON).unwrap();
    // 2 workers: a 100/day plan reserves 100 / 4 = 25.
    book.admit(&mut store, KEY, &[limit(100, Period::Day)], NOON)
        .unwrap();
    assert_eq!(book.reserved(), 24);
}

/// Per window, admitted ≤ L; in the shared value, claimed ≤ L and stored windows never move
/// backwards; every admission counts in a window no older than its stamp and no newer than
/// the clock; a denial writes nothing. Admissions are attributed to the windows of the lease
/// that served them.
struct LeaseOracle {
    limits: Vec<RateLimit>,
    wrote: Vec<bool>,
    latest: HashMap<Period, u64>,
    admitted: HashMap<(Period, u64), u64>,
    violations: Vec<String>,
}

impl LeaseOracle {
    fn limit_of(&self, per: Period) -> u64 {
        self.limits
            .iter()
            .find(|l| l.per == per)
            .map_or(0, |l| l.requests)
    }

    fn admit(&mut self, stamp: u64, clock: u64, windows: &[u64]) {
        for (l, start) in self.limits.clone().iter().zip(windows) {
            if *start < window(l.per, stamp).start || start * 1000 > clock {
                self.violations.push(format!(
                    "{:?}: stamped {stamp} at clock {clock}, counted in the window of {start}",
                    l.per
                ));
            }
            let n = self.admitted.entry((l.per, *start)).or_default();
            *n += 1;
            if *n > l.requests {
                self.violations
                    .push(format!("{n} admitted in {:?} window {start}", l.per));
            }
        }
    }
}

impl Observe for LeaseOracle {
    fn observe(&mut self, caller: usize, call: Call<'_>, store: &MemoryStore, _: u64) {
        let Call::Set {
            key,
            outcome: SetOutcome::Written,
        } = call
        else {
            return;
        };
        if key != KEY {
            return;
        }
        self.wrote[caller] = true;
        for (period, start, count) in claimed(store) {
            if count > self.limit_of(period) {
                self.violations
                    .push(format!("{count} claimed in {period:?} window {start}"));
            }
            let admitted = self.admitted.get(&(period, start)).copied().unwrap_or(0);
            if admitted > count {
                self.violations.push(format!(
                    "{period:?} window {start}: {admitted} admitted but only {count} claimed"
                ));
            }
            let latest = self.latest.entry(period).or_insert(start);
            if start < *latest {
                self.violations.push(format!(
                    "{period:?} window moved back from {latest} to {start}"
                ));
            }
            *latest = start.max(*latest);
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// A request whose clock lags by this many ms.
    Admit(u64),
    Tick,
    /// Hand every lease back at once (as a worker that stops).
    ReturnAll,
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u64..2_000).prop_map(Op::Admit),
        2 => Just(Op::Tick),
        1 => Just(Op::ReturnAll),
    ]
}

fn arb_limits() -> impl Strategy<Value = Vec<RateLimit>> {
    proptest::sample::subsequence(Period::ALL.to_vec(), 1..=3).prop_flat_map(|periods| {
        let n = periods.len();
        proptest::collection::vec(1u64..150, n).prop_map(move |reqs| {
            periods
                .iter()
                .zip(reqs)
                .map(|(per, requests)| limit(requests, *per))
                .collect()
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Simulated workers, each with its own lease book, admit at stale stamps and tick at any
    /// point, interleaved host call by host call with each other's refills and returns, across
    /// second boundaries and a month boundary.
    #[test]
    fn workers_with_leases_never_over_admit(
        limits in arb_limits(),
        lead_ms in 0u64..3_000,
        scripts in proptest::collection::vec(proptest::collection::vec(arb_op(), 1..60), 2..5),
        schedule in proptest::collection::vec((any::<u8>(), 0u16..40), 1..300),
    ) {
        let workers = scripts.len();
        let start = NEW_YEAR_2026 - lead_ms;
        let oracle = LeaseOracle {
            limits: limits.clone(),
            wrote: vec![false; workers],
            latest: HashMap::new(),
            admitted: HashMap::new(),
            violations: Vec::new(),
        };
        let world = Scheduler::run(workers, schedule, start, start + 7_000, oracle, |me, turns| {
            let mut book = LeaseBook::new();
            book.set_workers(workers as u32);
            for op in &scripts[me] {
                match op {
                    Op::Tick => {
                        let now = turns.now(|w| w.clock_ms);
                        book.on_tick(turns, now).unwrap();
                    }
                    Op::ReturnAll => {
                        book.return_all(turns).unwrap();
                    }
                    Op::Admit(lag) => {
                        let stamp = turns.now(|w| {
                            w.extra.wrote[me] = false;
                            w.clock_ms - lag
                        });
                        let counted = book.admit(turns, KEY, &limits, stamp);
                        let windows = book.lease_windows(KEY);
                        turns.now(|w| match counted {
                            Ok(Counted { admission: Admission::Admitted(_), .. }) => {
                                let clock = w.clock_ms;
                                w.extra.admit(stamp, clock, &windows.unwrap_or_default());
                            }
                            _ if w.extra.wrote[me] => {
                                w.extra.violations.push(format!("a denial stamped {stamp} wrote"));
                            }
                            _ => {}
                        });
                    }
                }
            }
            // Hand everything back, however long the others keep the counter busy.
            for _ in 0..1_000 {
                book.return_all(turns).unwrap();
                if book.is_empty() {
                    break;
                }
            }
        });
        let oracle = &world.extra;
        prop_assert!(oracle.violations.is_empty(), "{:#?}", oracle.violations);
        // Every reservation came back: what stays claimed is exactly what was admitted.
        for (period, start, count) in claimed(&world.store) {
            let admitted = oracle.admitted.get(&(period, start)).copied().unwrap_or(0);
            prop_assert_eq!(count, admitted, "{:?} window {}", period, start);
        }
    }
}
