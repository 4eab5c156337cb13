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
                Admission::Rejected { .. } => 99,
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
            }
        }
    }
}
