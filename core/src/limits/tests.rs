use super::*;
use crate::shared::MemoryStore;
use proptest::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

const KEY: &str = "tollgate.contract.1";
// 2025-06-15T12:00:00Z: far from any minute, hour, day or month boundary.
const NOON: u64 = 1_749_988_800_000;

fn limit(requests: u64, per: Period) -> RateLimit {
    RateLimit { requests, per }
}

fn admitted(c: &Counted) -> bool {
    matches!(c.admission, Admission::Admitted(_))
}

#[test]
fn admits_up_to_the_limit_then_rejects() {
    let mut store = MemoryStore::new();
    let limits = [limit(3, Period::Minute)];
    let statuses: Vec<_> = (0..4)
        .map(|_| {
            count_request(&mut store, KEY, &limits, NOON)
                .unwrap()
                .admission
        })
        .collect();
    assert_eq!(
        statuses[..3]
            .iter()
            .map(|a| match a {
                Admission::Admitted(s) => s.remaining,
                Admission::Rejected { .. } | Admission::Starved { .. } => 99,
            })
            .collect::<Vec<_>>(),
        vec![2, 1, 0]
    );
    assert_eq!(
        statuses[3],
        Admission::Rejected {
            status: RateStatus {
                limit: 3,
                remaining: 0,
                reset: 60
            },
            retry_after: 60
        }
    );
}

#[test]
fn rejected_request_writes_nothing() {
    let mut store = MemoryStore::new();
    let limits = [limit(1, Period::Hour)];
    count_request(&mut store, KEY, &limits, NOON).unwrap();
    let before = store.get(KEY).unwrap();
    let c = count_request(&mut store, KEY, &limits, NOON).unwrap();
    assert!(!admitted(&c));
    assert_eq!(
        store.get(KEY).unwrap(),
        before,
        "value and CAS token unchanged"
    );
}

#[test]
fn a_new_window_starts_from_zero() {
    let mut store = MemoryStore::new();
    let limits = [limit(1, Period::Second)];
    assert!(admitted(
        &count_request(&mut store, KEY, &limits, NOON).unwrap()
    ));
    assert!(!admitted(
        &count_request(&mut store, KEY, &limits, NOON + 999).unwrap()
    ));
    assert!(admitted(
        &count_request(&mut store, KEY, &limits, NOON + 1000).unwrap()
    ));
}

#[test]
fn month_limit_resets_at_new_year_and_retry_after_points_there() {
    let mut store = MemoryStore::new();
    let limits = [limit(2, Period::Month)];
    let new_year_2026 = 1_767_225_600_000;
    let early_dec = new_year_2026 - 20 * 86_400_000;
    assert!(admitted(
        &count_request(&mut store, KEY, &limits, early_dec).unwrap()
    ));
    assert!(admitted(
        &count_request(&mut store, KEY, &limits, new_year_2026 - 5_000).unwrap()
    ));
    let last_ms = count_request(&mut store, KEY, &limits, new_year_2026 - 1).unwrap();
    assert_eq!(
        last_ms.admission,
        Admission::Rejected {
            status: RateStatus {
                limit: 2,
                remaining: 0,
                reset: 1
            },
            retry_after: 1
        }
    );
    assert!(admitted(
        &count_request(&mut store, KEY, &limits, new_year_2026).unwrap()
    ));
}

#[test]
fn retry_after_is_the_latest_end_among_exhausted_limits() {
    let mut store = MemoryStore::new();
    let limits = [limit(1, Period::Minute), limit(1, Period::Hour)];
    count_request(&mut store, KEY, &limits, NOON).unwrap();
    match count_request(&mut store, KEY, &limits, NOON + 30_000)
        .unwrap()
        .admission
    {
        Admission::Rejected {
            retry_after,
            status,
        } => {
            // NOON is on the hour: the hour window ends 3600 s after it.
            assert_eq!(retry_after, 3_570);
            assert_eq!(status.limit, 1);
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn headers_describe_the_limit_with_least_remaining() {
    let mut store = MemoryStore::new();
    let limits = [limit(100, Period::Minute), limit(2, Period::Day)];
    match count_request(&mut store, KEY, &limits, NOON)
        .unwrap()
        .admission
    {
        Admission::Admitted(s) => assert_eq!((s.limit, s.remaining, s.reset), (2, 1, 43_200)),
        other => panic!("expected admission, got {other:?}"),
    }
}

#[test]
fn insert_race_loses_no_update() {
    // Caller A reads "absent"; before A writes, B inserts the key. A must not overwrite B.
    let inner = Rc::new(RefCell::new(MemoryStore::new()));
    let limits = [limit(10, Period::Hour)];
    let mut a = Interleaved::new(inner.clone(), vec![false, true], limits.to_vec());
    assert!(admitted(
        &count_request(&mut a, KEY, &limits, NOON).unwrap()
    ));
    assert_eq!(a.injected_admitted, 1);
    let count = slot_counts(&inner.borrow_mut());
    assert_eq!(
        count,
        vec![2],
        "both the injected and the first request counted"
    );
}

#[test]
fn fails_closed_when_cas_never_succeeds() {
    struct AlwaysRaced(MemoryStore);
    impl SharedStore for AlwaysRaced {
        fn get(&mut self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
            self.0.get(key)
        }
        fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<SetOutcome, StoreError> {
            if key == KEY {
                return Ok(SetOutcome::CasMismatch);
            }
            self.0.set(key, value, cas)
        }
    }
    let mut store = AlwaysRaced(MemoryStore::new());
    let r = count_request(&mut store, KEY, &[limit(5, Period::Day)], NOON);
    assert_eq!(r, Err(CountError::Contention));
}

#[test]
fn threads_sharing_one_store_admit_exactly_the_limit() {
    let store = Arc::new(Mutex::new(MemoryStore::new()));
    let limits = [limit(500, Period::Day), limit(700, Period::Hour)];
    let admitted_total: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                s.spawn(move || {
                    let mut locked = LockPerCall(store);
                    (0..100)
                        .filter(|_| {
                            admitted(&count_request(&mut locked, KEY, &limits, NOON).unwrap())
                        })
                        .count() as u64
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(admitted_total, 500);
}

/// Takes the store's lock per host call, as Envoy does, so threads interleave between calls.
struct LockPerCall(Arc<Mutex<MemoryStore>>);

impl SharedStore for LockPerCall {
    fn get(&mut self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        self.0.lock().unwrap().get(key)
    }
    fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<SetOutcome, StoreError> {
        self.0.lock().unwrap().set(key, value, cas)
    }
}

/// A store through which one caller runs while, before chosen calls, whole requests of other
/// callers run to completion: the interleavings that matter for the caller's read-then-CAS gap.
struct Interleaved {
    inner: Rc<RefCell<MemoryStore>>,
    schedule: std::vec::IntoIter<bool>,
    limits: Vec<RateLimit>,
    injected_admitted: u64,
    injected_total: u64,
}

impl Interleaved {
    fn new(inner: Rc<RefCell<MemoryStore>>, schedule: Vec<bool>, limits: Vec<RateLimit>) -> Self {
        Interleaved {
            inner,
            schedule: schedule.into_iter(),
            limits,
            injected_admitted: 0,
            injected_total: 0,
        }
    }

    fn maybe_inject(&mut self) {
        if self.schedule.next().unwrap_or(false) {
            let mut store = self.inner.borrow_mut();
            let c = count_request(&mut *store, KEY, &self.limits, NOON).unwrap();
            self.injected_total += 1;
            self.injected_admitted += u64::from(admitted(&c));
        }
    }
}

impl SharedStore for Interleaved {
    fn get(&mut self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        self.maybe_inject();
        self.inner.borrow_mut().get(key)
    }
    fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<SetOutcome, StoreError> {
        self.maybe_inject();
        self.inner.borrow_mut().set(key, value, cas)
    }
}

fn slot_counts(store: &MemoryStore) -> Vec<u64> {
    store
        .peek(KEY)
        .map(|(value, _)| decode(&value).iter().map(|slot| slot.count).collect())
        .unwrap_or_default()
}

fn arb_limits() -> impl Strategy<Value = Vec<RateLimit>> {
    proptest::sample::subsequence(Period::ALL.to_vec(), 1..=3).prop_flat_map(|periods| {
        let n = periods.len();
        proptest::collection::vec(1u64..6, n).prop_map(move |reqs| {
            periods
                .iter()
                .zip(reqs)
                .map(|(per, requests)| limit(requests, *per))
                .collect()
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Under any interleaving of other callers into one caller's read/CAS steps, the total
    /// admitted equals min(limit, requests) for a single window: no over-admission, no loss.
    #[test]
    fn interleaved_callers_admit_exactly_the_smallest_limit(
        limits in arb_limits(),
        schedules in proptest::collection::vec(proptest::collection::vec(any::<bool>(), 0..12), 1..12),
    ) {
        let inner = Rc::new(RefCell::new(MemoryStore::new()));
        let mut total = 0u64;
        let mut admitted_count = 0u64;
        for schedule in schedules {
            let mut caller = Interleaved::new(inner.clone(), schedule, limits.clone());
            let c = count_request(&mut caller, KEY, &limits, NOON).unwrap();
            total += 1 + caller.injected_total;
            admitted_count += u64::from(admitted(&c)) + caller.injected_admitted;
        }
        let smallest = limits.iter().map(|l| l.requests).min().unwrap();
        prop_assert_eq!(admitted_count, total.min(smallest));
        // Every limit counted every admitted request: multi-limit admission is atomic.
        let counts = slot_counts(&inner.borrow());
        prop_assert_eq!(counts, vec![admitted_count; limits.len()]);
    }

    /// Over time, no window of any limit ever holds more admitted requests than its limit, and
    /// every rejection is justified by a full window.
    #[test]
    fn no_window_ever_exceeds_its_limit(
        limits in arb_limits(),
        steps in proptest::collection::vec(0u64..90_000, 1..120),
        start in 1_700_000_000_000u64..1_900_000_000_000,
    ) {
        let mut store = MemoryStore::new();
        let mut now = start;
        let mut admitted_in: HashMap<(Period, u64), u64> = HashMap::new();
        for step in steps {
            now += step;
            let before = store.peek(KEY);
            let c = count_request(&mut store, KEY, &limits, now).unwrap();
            match c.admission {
                Admission::Admitted(_) => {
                    for l in &limits {
                        let w = window(l.per, now);
                        let n = admitted_in.entry((l.per, w.start)).or_default();
                        *n += 1;
                        prop_assert!(*n <= l.requests, "{:?} window over its limit", l.per);
                    }
                }
                Admission::Rejected { retry_after, .. } => {
                    prop_assert_eq!(store.peek(KEY), before, "a rejection wrote");
                    prop_assert!(retry_after >= 1);
                    let full = limits.iter().any(|l| {
                        let w = window(l.per, now);
                        admitted_in.get(&(l.per, w.start)).copied().unwrap_or(0) >= l.requests
                    });
                    prop_assert!(full, "rejected with room in every window");
                }
                Admission::Starved { .. } => prop_assert!(false, "counting alone never starves"),
            }
        }
    }
}

/// The reproduction: a request stamped 1 ms before a second boundary that lands after
/// another worker counted 3 in the new second must not restart the new second's count.
#[test]
fn stale_stamp_after_a_boundary_never_restarts_the_new_window() {
    let mut store = MemoryStore::new();
    let limits = [limit(3, Period::Second)];
    let t0 = NOON + 60_000; // a second boundary
    let admitted_at = |store: &mut MemoryStore, now_ms: u64, n: usize| {
        (0..n)
            .filter(|_| admitted(&count_request(store, KEY, &limits, now_ms).unwrap()))
            .count()
    };
    let old = admitted_at(&mut store, t0 - 10, 3);
    let new = admitted_at(&mut store, t0 + 5, 3);
    let stale = admitted_at(&mut store, t0 - 1, 1);
    let later = admitted_at(&mut store, t0 + 6, 3);
    assert_eq!((old, new), (3, 3));
    // The stale request is served in the new second (it landed there) and finds it full.
    assert_eq!(stale, 0, "the stale request was admitted");
    assert_eq!(later, 0, "the new second admitted more than 3");
    assert_eq!(slot_counts(&store), vec![3]);
}

/// Calendar boundaries where every period ends at once (second … month).
const NEW_YEAR_2026: u64 = 1_767_225_600_000;
const MARCH_2024: u64 = 1_709_251_200_000; // the end of a leap February

/// The spec as an oracle, independent of the encoding: requests are linearised at their
/// successful write; each admitted request counts, for every limit, in the later of its own
/// window and the window the previous admission counted in (a stored window never moves
/// backwards); no such window may hold more than its limit. A rejection must write nothing and
/// be justified by a full window as of the read it decided on.
struct StaleClockOracle {
    limits: Vec<RateLimit>,
    /// Per caller: the stamp of its request in flight, whether it wrote, and whether some
    /// limit was full at its latest read.
    stamp: Vec<u64>,
    wrote: Vec<bool>,
    full_at_read: Vec<bool>,
    latest: HashMap<Period, u64>,
    admitted: HashMap<(Period, u64), u64>,
    violations: Vec<String>,
}

impl StaleClockOracle {
    fn new(limits: &[RateLimit], callers: usize) -> Self {
        StaleClockOracle {
            limits: limits.to_vec(),
            stamp: vec![0; callers],
            wrote: vec![false; callers],
            full_at_read: vec![false; callers],
            latest: HashMap::new(),
            admitted: HashMap::new(),
            violations: Vec::new(),
        }
    }

    fn served_in(&self, per: Period, stamp: u64) -> u64 {
        let own = window(per, stamp).start;
        self.latest.get(&per).map_or(own, |latest| own.max(*latest))
    }

    fn full(&self, stamp: u64) -> bool {
        self.limits.iter().any(|l| {
            let w = self.served_in(l.per, stamp);
            self.admitted.get(&(l.per, w)).copied().unwrap_or(0) >= l.requests
        })
    }

    fn admit(&mut self, stamp: u64) {
        for l in self.limits.clone() {
            let w = self.served_in(l.per, stamp);
            self.latest.insert(l.per, w);
            let n = self.admitted.entry((l.per, w)).or_default();
            *n += 1;
            if *n > l.requests {
                self.violations.push(format!(
                    "{n} admitted in the {:?} window starting {w} (limit {}), last stamped {stamp}",
                    l.per, l.requests
                ));
            }
        }
    }
}

impl interleave::Observe for StaleClockOracle {
    fn observe(&mut self, caller: usize, call: interleave::Call<'_>, _: &MemoryStore, _: u64) {
        match call {
            interleave::Call::Get { key } if key == KEY => {
                self.full_at_read[caller] = self.full(self.stamp[caller]);
            }
            interleave::Call::Set {
                key,
                outcome: SetOutcome::Written,
            } if key == KEY => {
                self.wrote[caller] = true;
                self.admit(self.stamp[caller]);
            }
            _ => {}
        }
    }
}

fn arb_boundary() -> impl Strategy<Value = u64> {
    prop_oneof![Just(NEW_YEAR_2026), Just(MARCH_2024)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    /// Concurrent callers whose clocks lag by up to 2 s, each request stamped once and kept
    /// across its CAS retries, interleaved host call by host call across second boundaries and
    /// a month boundary: no window of any limit admits more than its limit, no rejection
    /// writes, every rejection is justified, and the stored counts are exactly the admissions.
    #[test]
    fn stale_clocks_across_boundaries_never_over_admit(
        limits in arb_limits(),
        boundary in arb_boundary(),
        lead_ms in 0u64..3_000,
        lags in proptest::collection::vec(proptest::collection::vec(0u64..2_000, 1..7), 2..6),
        schedule in proptest::collection::vec((any::<u8>(), 0u16..60), 1..200),
    ) {
        let callers = lags.len();
        let start = boundary - lead_ms;
        let world = interleave::Scheduler::run(
            callers,
            schedule,
            start,
            start + 7_000,
            StaleClockOracle::new(&limits, callers),
            |caller, turns| {
                for lag in &lags[caller] {
                    let stamp = turns.now(|w| {
                        let stamp = w.clock_ms - lag;
                        w.extra.stamp[caller] = stamp;
                        w.extra.wrote[caller] = false;
                        stamp
                    });
                    let counted = count_request(turns, KEY, &limits, stamp);
                    let admitted = matches!(
                        counted,
                        Ok(Counted { admission: Admission::Admitted(_), .. })
                    );
                    turns.now(|w| {
                        let o = &mut w.extra;
                        if !admitted && o.wrote[caller] {
                            o.violations.push(format!("a rejection stamped {stamp} wrote"));
                        }
                        if matches!(counted, Ok(Counted { admission: Admission::Rejected { .. }, .. }))
                            && !o.full_at_read[caller]
                        {
                            o.violations.push(format!("rejected at {stamp} with room in every window"));
                        }
                    });
                }
            },
        );
        let oracle = &world.extra;
        prop_assert!(oracle.violations.is_empty(), "{:#?}", oracle.violations);
        let stored = world.store.peek(KEY).map(|(v, _)| decode(&v)).unwrap_or_default();
        for l in &limits {
            let Some(latest) = oracle.latest.get(&l.per) else { continue };
            let slot = stored.iter().find(|s| s.period == l.per);
            prop_assert_eq!(
                slot.map(|s| (s.window_start, s.count)),
                Some((*latest, oracle.admitted[&(l.per, *latest)])),
                "{:?}: stored window and count are the admissions'", l.per
            );
        }
    }
}

#[test]
fn stale_stamp_before_new_year_counts_in_the_new_month() {
    let mut store = MemoryStore::new();
    let limits = [limit(2, Period::Month), limit(10, Period::Second)];
    let at = |store: &mut MemoryStore, now_ms| {
        count_request(store, KEY, &limits, now_ms)
            .unwrap()
            .admission
    };
    assert!(matches!(
        at(&mut store, NEW_YEAR_2026 - 60_000),
        Admission::Admitted(_)
    ));
    assert!(matches!(
        at(&mut store, NEW_YEAR_2026 + 3),
        Admission::Admitted(_)
    ));
    // Stamped in December after January began: served in January (1 left), not December's
    // last slot (1 left too, but the December window must not be restored).
    match at(&mut store, NEW_YEAR_2026 - 2) {
        Admission::Admitted(s) => assert_eq!((s.limit, s.remaining), (2, 0)),
        other => panic!("expected admission, got {other:?}"),
    }
    assert!(matches!(
        at(&mut store, NEW_YEAR_2026 - 1),
        Admission::Rejected { .. }
    ));
    let stored = decode(&store.peek(KEY).unwrap().0);
    assert_eq!(stored[0].window_start, NEW_YEAR_2026 / 1000);
    assert_eq!(stored[0].count, 2);
}

#[test]
fn a_clock_stepped_back_further_than_any_delay_counts_in_its_own_window() {
    let mut store = MemoryStore::new();
    let limits = [limit(1, Period::Second)];
    assert!(admitted(
        &count_request(&mut store, KEY, &limits, NOON + 3_600_000).unwrap()
    ));
    // An hour earlier: no request waits that long; the stored second is from a clock that was
    // ahead. Counting into it would refuse this contract for an hour.
    let back = NOON + 3_600_000 - MAX_CLOCK_LAG_MS - 1_000;
    assert!(admitted(
        &count_request(&mut store, KEY, &limits, back).unwrap()
    ));
    // Within the bound, the stored (newer) window decides.
    let mut store = MemoryStore::new();
    assert!(admitted(
        &count_request(&mut store, KEY, &limits, NOON + 10_000).unwrap()
    ));
    let near = NOON + 10_000 - MAX_CLOCK_LAG_MS;
    assert!(!admitted(
        &count_request(&mut store, KEY, &limits, near).unwrap()
    ));
}
