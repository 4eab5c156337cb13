use super::*;

fn request() -> LeaseRequest {
    LeaseRequest {
        gateway: "0123456789abcdef".into(),
        contract: 7,
        limits: vec![RateLimit {
            requests: 10,
            per: Period::Second,
        }],
        want: 4,
        held: Vec::new(),
    }
}

#[test]
fn a_well_formed_request_passes_its_check() {
    assert_eq!(request().check(), Ok(()));
}

#[test]
fn malformed_requests_name_their_problem() {
    let mut r = request();
    r.gateway = "nothex".into();
    assert!(r.check().unwrap_err().contains("gateway"));
    let mut r = request();
    r.want = 0;
    assert!(r.check().unwrap_err().contains("want"));
    let mut r = request();
    r.limits.push(r.limits[0]);
    assert!(r.check().unwrap_err().contains("twice"));
    let mut r = request();
    r.limits.clear();
    assert!(r.check().unwrap_err().contains("limits"));
}

#[test]
fn fallback_names_round_trip() {
    for f in [Fallback::Share, Fallback::Closed, Fallback::Local] {
        assert_eq!(f.as_str().parse::<Fallback>(), Ok(f));
    }
    assert!("shared".parse::<Fallback>().unwrap_err().contains("share"));
}

#[test]
fn the_offset_reads_the_broker_clock_no_earlier_than_it_is() {
    assert_eq!(clock_offset_ms(1_000, 1_250), 250);
    assert_eq!(clock_offset_ms(1_250, 1_000), -250);
}

// ---- counting against grants ----

use std::collections::HashMap;

use proptest::prelude::*;

use crate::lease::LeaseBook;
use crate::limits::{counter_key, Admission, Counted, MIN_WANT};
use crate::shared::MemoryStore;

// 2025-06-15T12:00:00Z: far from any minute, hour, day or month boundary.
const NOON: u64 = 1_749_988_800_000;

fn per(requests: u64, per: Period) -> RateLimit {
    RateLimit { requests, per }
}

/// What the broker's Redis step does (control-plane/src/fleet): per (period, window start) one
/// count for the fleet; a grant is at most the room left in every window, sized down as the
/// room runs out.
#[derive(Default)]
struct Broker {
    counts: HashMap<(Period, u64), u64>,
    gateways: u32,
    /// Not the broker's: the test's ledger of units counted in Redis that no gateway holds
    /// because a grant's answer or a return was lost on the way.
    lost: HashMap<(Period, u64), u64>,
}

impl Broker {
    fn grant(&mut self, request: &LeaseRequest, now_ms: u64) -> LeaseAnswer {
        let held = |i: usize| request.held.get(i).copied().unwrap_or(0);
        let windows: Vec<_> = request
            .limits
            .iter()
            .map(|l| (l, window(l.per, now_ms)))
            .collect();
        let room = |l: &RateLimit, w: &crate::time::Window, counts: &HashMap<_, u64>| {
            l.requests - counts.get(&(l.per, w.start)).copied().unwrap_or(0)
        };
        let reach = windows
            .iter()
            .enumerate()
            .map(|(i, (l, w))| held(i) + room(l, w, &self.counts))
            .min()
            .unwrap_or(0);
        let n = u64::from(self.gateways.max(1));
        let allowed = request
            .want
            .min(reach)
            .min((reach / (2 * n)).max(1))
            .min(reach);
        LeaseAnswer {
            allowed,
            now_ms,
            gateways: self.gateways.max(1),
            windows: windows
                .iter()
                .enumerate()
                .map(|(i, (l, w))| {
                    let granted = allowed.saturating_sub(held(i));
                    let count = self.counts.entry((l.per, w.start)).or_default();
                    *count += granted;
                    LeaseWindow {
                        start: w.start,
                        end: w.end,
                        granted,
                        remaining: l.requests - *count,
                    }
                })
                .collect(),
        }
    }
}

/// One Envoy process: its shared data and its workers' lease books.
struct Gateway {
    store: MemoryStore,
    workers: Vec<LeaseBook>,
    state: FleetState,
}

impl Gateway {
    fn new(id: u64, workers: usize) -> Self {
        let mut store = MemoryStore::new();
        let state = FleetState::load_or_create(&mut store, id).unwrap();
        let workers = (0..workers)
            .map(|_| {
                let mut book = LeaseBook::new();
                book.set_workers(workers as u32);
                book.set_counting(state.counting(FleetSettings::default(), 0));
                book
            })
            .collect();
        Gateway {
            store,
            workers,
            state,
        }
    }

    /// One request on `worker` at `now_ms`, asking the broker as the filter does when the
    /// grant is spent (at most a few times).
    fn request(
        &mut self,
        broker: &mut Broker,
        worker: usize,
        limits: &[RateLimit],
        now_ms: u64,
    ) -> Admission {
        self.request_at(broker, worker, limits, now_ms, now_ms)
    }

    /// A request stamped `stamp_ms` while the broker's clock reads `broker_ms`.
    fn request_at(
        &mut self,
        broker: &mut Broker,
        worker: usize,
        limits: &[RateLimit],
        stamp_ms: u64,
        broker_ms: u64,
    ) -> Admission {
        self.request_losing(broker, worker, limits, stamp_ms, broker_ms, false)
    }

    /// [`Gateway::request_at`], the broker's first answer lost on the way back if `lose`
    /// (counted in Redis, never applied here).
    fn request_losing(
        &mut self,
        broker: &mut Broker,
        worker: usize,
        limits: &[RateLimit],
        stamp_ms: u64,
        broker_ms: u64,
        mut lose: bool,
    ) -> Admission {
        let key = counter_key(1);
        let mut now = stamp_ms;
        let mut seen = Vec::new();
        for _ in 0..5 {
            let Counted { admission, .. } = self.workers[worker]
                .admit(&mut self.store, &key, limits, now)
                .unwrap();
            let Admission::Starved { want, held } = admission else {
                return admission;
            };
            let request = LeaseRequest {
                gateway: self.state.gateway_id(),
                contract: 1,
                limits: limits.to_vec(),
                want,
                held: held[..limits.len()].to_vec(),
            };
            let answer = broker.grant(&request, broker_ms);
            answer.check(&request).unwrap();
            if std::mem::take(&mut lose) {
                for (l, w) in limits.iter().zip(&answer.windows) {
                    *broker.lost.entry((l.per, w.start)).or_default() += w.granted;
                }
                continue;
            }
            apply_grant(&mut self.store, &key, limits, &answer).unwrap();
            seen.push((answer, decode(&self.store.get(&key).unwrap().unwrap().0)));
            now = answer_now(&seen);
        }
        panic!("still starved after four grants: {seen:#?}");
    }
}

fn answer_now(seen: &[(LeaseAnswer, Vec<Slot>)]) -> u64 {
    seen.last().map_or(0, |(a, _)| a.now_ms)
}

fn admitted(a: &Admission) -> bool {
    matches!(a, Admission::Admitted(_))
}

#[test]
fn three_gateways_admit_exactly_the_limit_between_them() {
    let mut broker = Broker {
        gateways: 3,
        ..Broker::default()
    };
    let limits = [per(1_000, Period::Minute)];
    let mut gateways: Vec<Gateway> = (0..3).map(|i| Gateway::new(i + 1, 2)).collect();
    let mut admitted_total = 0;
    let mut calls = 0;
    // Round robin over every worker of every gateway until all of them refuse.
    for i in 0..5_000u64 {
        let (g, w) = ((i % 3) as usize, ((i / 3) % 2) as usize);
        let before: u64 = broker.counts.values().sum();
        let a = gateways[g].request(&mut broker, w, &limits, NOON + i);
        calls += u64::from(broker.counts.values().sum::<u64>() != before);
        admitted_total += u64::from(admitted(&a));
    }
    assert_eq!(admitted_total, 1_000);
    assert_eq!(broker.counts.values().sum::<u64>(), 1_000);
    println!("1,000 admitted through 3 gateways × 2 workers with {calls} grants");
    assert!(calls < 200, "{calls} grants for 1,000 requests");
}

#[test]
fn a_refused_grant_marks_the_window_exhausted_until_it_ends() {
    let mut broker = Broker::default();
    let limits = [per(2, Period::Minute)];
    let mut g = Gateway::new(1, 1);
    assert!(admitted(&g.request(&mut broker, 0, &limits, NOON)));
    assert!(admitted(&g.request(&mut broker, 0, &limits, NOON)));
    let asked: u64 = broker.counts.values().sum();
    match g.request(&mut broker, 0, &limits, NOON + 1_000) {
        Admission::Rejected { retry_after, .. } => assert_eq!(retry_after, 59),
        other => panic!("{other:?}"),
    }
    // Known exhausted: the next refusal asks nobody.
    let Counted { admission, .. } = g.workers[0]
        .admit(&mut g.store, &counter_key(1), &limits, NOON + 2_000)
        .unwrap();
    assert!(matches!(admission, Admission::Rejected { .. }));
    assert_eq!(broker.counts.values().sum::<u64>(), asked);
}

#[test]
fn two_limits_are_granted_and_spent_together() {
    let mut broker = Broker::default();
    let limits = [per(5, Period::Second), per(8, Period::Minute)];
    let mut g = Gateway::new(1, 1);
    let first = (0..10)
        .filter(|i| admitted(&g.request(&mut broker, 0, &limits, NOON + i)))
        .count();
    assert_eq!(first, 5);
    let second = (0..10)
        .filter(|i| admitted(&g.request(&mut broker, 0, &limits, NOON + 1_000 + i)))
        .count();
    assert_eq!(second, 3, "the minute has 3 left");
}

fn spent(limits: &[RateLimit], away: Option<Fallback>, gateways: u32) -> (MemoryStore, LeaseBook) {
    let mut store = MemoryStore::new();
    let mut book = LeaseBook::new();
    book.set_counting(Counting::Fleet {
        away: None,
        gateways,
    });
    let answer = LeaseAnswer {
        allowed: 2,
        now_ms: NOON,
        gateways,
        windows: limits
            .iter()
            .map(|l| {
                let w = window(l.per, NOON);
                LeaseWindow {
                    start: w.start,
                    end: w.end,
                    granted: 2,
                    remaining: 50,
                }
            })
            .collect(),
    };
    apply_grant(&mut store, &counter_key(1), limits, &answer).unwrap();
    for _ in 0..2 {
        let c = book
            .admit(&mut store, &counter_key(1), limits, NOON)
            .unwrap();
        assert!(admitted(&c.admission));
    }
    book.set_counting(Counting::Fleet { away, gateways });
    (store, book)
}

fn count_admitted(store: &mut MemoryStore, book: &mut LeaseBook, limits: &[RateLimit]) -> usize {
    (0..200)
        .filter(|_| {
            admitted(
                &book
                    .admit(store, &counter_key(1), limits, NOON + 10)
                    .unwrap()
                    .admission,
            )
        })
        .count()
}

#[test]
fn a_spent_grant_starves_while_the_broker_answers() {
    let limits = [per(100, Period::Minute)];
    let (mut store, mut book) = spent(&limits, None, 4);
    match book
        .admit(&mut store, &counter_key(1), &limits, NOON)
        .unwrap()
        .admission
    {
        Admission::Starved { want, .. } => assert_eq!(want, MIN_WANT),
        other => panic!("{other:?}"),
    }
}

#[test]
fn fallback_share_admits_a_gateways_share_including_what_it_was_granted() {
    let limits = [per(100, Period::Minute)];
    let (mut store, mut book) = spent(&limits, Some(Fallback::Share), 4);
    // ⌊100 / 4⌋ = 25 in the window, 2 of which came from the grant.
    assert_eq!(count_admitted(&mut store, &mut book, &limits), 23);
}

#[test]
fn fallback_closed_refuses_once_the_grant_is_spent_and_asks_again_in_a_second() {
    let limits = [per(100, Period::Minute)];
    let (mut store, mut book) = spent(&limits, Some(Fallback::Closed), 4);
    match book
        .admit(&mut store, &counter_key(1), &limits, NOON)
        .unwrap()
        .admission
    {
        Admission::Rejected { retry_after, .. } => assert_eq!(retry_after, 1),
        other => panic!("{other:?}"),
    }
}

#[test]
fn fallback_local_counts_alone_up_to_the_limit() {
    let limits = [per(100, Period::Minute)];
    let (mut store, mut book) = spent(&limits, Some(Fallback::Local), 4);
    assert_eq!(count_admitted(&mut store, &mut book, &limits), 98);
}

#[test]
fn what_was_counted_beyond_the_grants_is_asked_for_when_the_broker_is_back() {
    let limits = [per(100, Period::Minute)];
    let (mut store, mut book) = spent(&limits, Some(Fallback::Share), 4);
    assert_eq!(count_admitted(&mut store, &mut book, &limits), 23);
    book.set_counting(Counting::Fleet {
        away: None,
        gateways: 4,
    });
    match book
        .admit(&mut store, &counter_key(1), &limits, NOON + 20)
        .unwrap()
        .admission
    {
        // 25 claimed, 2 granted: 23 owed, plus half the claims.
        Admission::Starved { want, .. } => assert_eq!(want, 12 + 23),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_grant_for_an_older_window_than_the_stored_one_is_dropped() {
    let limits = [per(10, Period::Second)];
    let mut store = MemoryStore::new();
    let answer = |now_ms: u64| LeaseAnswer {
        allowed: 3,
        now_ms,
        gateways: 1,
        windows: vec![LeaseWindow {
            start: now_ms / 1000,
            end: now_ms / 1000 + 1,
            granted: 3,
            remaining: 7,
        }],
    };
    apply_grant(&mut store, &counter_key(1), &limits, &answer(NOON + 1_000)).unwrap();
    apply_grant(&mut store, &counter_key(1), &limits, &answer(NOON)).unwrap();
    let slots = decode(&store.get(&counter_key(1)).unwrap().unwrap().0);
    assert_eq!(slots[0].window_start, NOON / 1000 + 1);
    assert_eq!(slots[0].grant.unwrap().allowance, 3);
    apply_grant(&mut store, &counter_key(1), &limits, &answer(NOON + 1_500)).unwrap();
    let slots = decode(&store.get(&counter_key(1)).unwrap().unwrap().0);
    assert_eq!(slots[0].grant.unwrap().allowance, 6);
}

#[test]
fn an_answer_in_other_windows_than_its_clocks_is_refused() {
    let request = LeaseRequest {
        limits: vec![per(10, Period::Minute)],
        ..request()
    };
    let w = window(Period::Minute, NOON);
    let mut answer = LeaseAnswer {
        allowed: 1,
        now_ms: NOON,
        gateways: 1,
        windows: vec![LeaseWindow {
            start: w.start,
            end: w.end,
            granted: 1,
            remaining: 9,
        }],
    };
    assert_eq!(answer.check(&request), Ok(()));
    answer.now_ms += 60_000;
    assert!(answer.check(&request).unwrap_err().contains("window"));
    answer.windows.clear();
    assert!(answer.check(&request).unwrap_err().contains("0 windows"));
}

#[test]
fn the_fleet_state_is_created_once_per_process() {
    let mut store = MemoryStore::new();
    let first = FleetState::load_or_create(&mut store, 0xab).unwrap();
    let second = FleetState::load_or_create(&mut store, 0xcd).unwrap();
    assert_eq!(first.gateway, 0xab);
    assert_eq!(second, first);
    assert_eq!(first.gateway_id(), "00000000000000ab");
    let away = |away| Counting::Fleet { away, gateways: 1 };
    // One failed ask: only what is held, for a second; then the broker is asked again.
    let once = FleetState::update(&mut store, |s| s.failed(4_000)).unwrap();
    assert_eq!(
        once.counting(FleetSettings::default(), 4_999),
        away(Some(Fallback::Closed))
    );
    assert_eq!(once.counting(FleetSettings::default(), 5_000), away(None));
    // A second in a row: the configured fallback.
    let twice = FleetState::update(&mut store, |s| s.failed(5_000)).unwrap();
    assert_eq!(
        twice.counting(FleetSettings::default(), 5_999),
        away(Some(Fallback::Share))
    );
    let local = FleetSettings {
        fallback: Fallback::Local,
    };
    assert_eq!(twice.counting(local, 5_999), away(Some(Fallback::Local)));
    assert_eq!(twice.counting(local, 6_000), away(None));
    // An answer ends it.
    let back = FleetState::update(&mut store, |s| s.answered()).unwrap();
    assert_eq!(back.counting(FleetSettings::default(), 5_500), away(None));
    assert_eq!(back.failures, 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any interleaving of requests over 3 gateways × 2 workers, the clock moving by up to
    /// 700 ms, each request stamped up to 50 ms before it is decided, worker ticks returning
    /// leases, grants lost on the way back, idle gateways handing units back — each return
    /// applied once, replayed, or lost: per window, what the fleet claimed (admitted or
    /// reserved) never exceeds the limit, because no gateway claims beyond what it was granted
    /// in a window, what a gateway hands back leaves its allowance first, and the broker
    /// never grants beyond the limit nor takes a return twice.
    #[test]
    fn no_window_admits_more_than_its_limit_fleet_wide(
        second in 1u64..40,
        minute in 1u64..200,
        steps in proptest::collection::vec(
            (0usize..3, 0usize..2, 0u64..700, 0u64..50, any::<bool>(), any::<bool>(), (0usize..3, 0u8..4)),
            1..400,
        ),
    ) {
        let limits = [per(second, Period::Second), per(minute, Period::Minute)];
        let mut broker = Broker { gateways: 3, ..Broker::default() };
        let mut gateways: Vec<Gateway> = (0..3).map(|i| Gateway::new(i + 1, 2)).collect();
        let mut watched: Vec<Option<Watched>> = vec![None, None, None];
        let mut applied = std::collections::HashSet::new();
        let mut returns = 0u64;
        let mut now = NOON - 5_000;
        for (g, w, step, stale, tick, lose, (h, hand_back)) in steps {
            now += step;
            let gateway = &mut gateways[g];
            if tick {
                gateway.workers[w].on_tick(&mut gateway.store, now).unwrap();
            }
            gateway.request_losing(&mut broker, w, &limits, now - stale, now, lose);
            // Gateway h's watcher looks (it may have been idle for a while).
            if hand_back > 0 {
                let gateway = &mut gateways[h];
                let watch = watched[h].get_or_insert_with(|| Watched::new(1, limits.to_vec(), now));
                match watch.look(&mut gateway.store, now, false).unwrap() {
                    Due::Return(units) => {
                        returns += 1;
                        let back = ReturnRequest {
                            gateway: gateway.state.gateway_id(),
                            contract: 1,
                            id: format!("{returns:016x}"),
                            windows: units,
                        };
                        // 1: applied; 2: applied, then replayed; 3: lost.
                        for _ in 0..[0, 1, 2, 0][usize::from(hand_back)] {
                            broker.give_back(&back, &mut applied);
                        }
                        if hand_back == 3 {
                            for u in &back.windows {
                                *broker.lost.entry((u.per, u.start)).or_default() += u.units;
                            }
                        }
                        watched[h] = None;
                    }
                    Due::Forget => watched[h] = None,
                    Due::Nothing | Due::Refill(_) => {}
                }
            }
            let mut allowed: HashMap<(Period, u64), u64> = HashMap::new();
            for gateway in &mut gateways {
                let Some((value, _)) = gateway.store.get(&counter_key(1)).unwrap() else {
                    continue;
                };
                for slot in decode(&value) {
                    let grant = slot.grant.unwrap();
                    prop_assert!(slot.count <= grant.allowance, "{slot:?} claims beyond its grant");
                    *allowed.entry((slot.period, slot.window_start)).or_default() += grant.allowance;
                }
            }
            for (window, allowance) in &allowed {
                let granted = broker.counts.get(window).copied().unwrap_or(0);
                prop_assert!(*allowance <= granted, "{window:?}: allowances {allowance} > granted {granted}");
            }
            // The broker's latest window of each period: every unit Redis counts there is held
            // by exactly one gateway, or was lost on the way (never counted off twice).
            for l in &limits {
                let Some(latest) = broker.counts.keys().filter(|(p, _)| *p == l.per).map(|(_, s)| *s).max() else {
                    continue;
                };
                let key = (l.per, latest);
                let held = allowed.get(&key).copied().unwrap_or(0);
                let lost = broker.lost.get(&key).copied().unwrap_or(0);
                prop_assert_eq!(broker.counts[&key], held + lost, "{:?}: Redis counts what no gateway holds", key);
            }
        }
        for ((period, start), granted) in &broker.counts {
            let limit = limits.iter().find(|l| l.per == *period).unwrap().requests;
            prop_assert!(*granted <= limit, "{period:?} window {start}: granted {granted} > {limit}");
        }
    }
}

// ---- watching a granted contract: refill ahead, hand back when idle ----

impl Broker {
    /// The broker's return step: once per (gateway, id).
    fn give_back(
        &mut self,
        request: &ReturnRequest,
        applied: &mut std::collections::HashSet<String>,
    ) -> bool {
        if !applied.insert(format!("{}:{}", request.gateway, request.id)) {
            return false;
        }
        for w in &request.windows {
            if let Some(count) = self.counts.get_mut(&(w.per, w.start)) {
                *count = count.saturating_sub(w.units);
            }
        }
        true
    }
}

fn granted(store: &mut MemoryStore, limits: &[RateLimit], allowed: u64, now_ms: u64) {
    let answer = LeaseAnswer {
        allowed,
        now_ms,
        gateways: 1,
        windows: limits
            .iter()
            .map(|l| {
                let w = window(l.per, now_ms);
                LeaseWindow {
                    start: w.start,
                    end: w.end,
                    granted: allowed,
                    remaining: 1_000,
                }
            })
            .collect(),
    };
    apply_grant(store, &counter_key(1), limits, &answer).unwrap();
}

fn fleet_book() -> LeaseBook {
    let mut book = LeaseBook::new();
    book.set_counting(Counting::Fleet {
        away: None,
        gateways: 1,
    });
    book
}

#[test]
fn a_busy_contract_is_refilled_before_its_grant_runs_dry() {
    let limits = [per(10_000, Period::Minute)];
    let mut store = MemoryStore::new();
    granted(&mut store, &limits, 100, NOON);
    let mut watched = Watched::new(1, limits.to_vec(), NOON);
    let mut book = LeaseBook::new();
    book.set_counting(Counting::Fleet {
        away: None,
        gateways: 1,
    });
    // 30 claimed per tick (leases of 1: the book's chunk is sized by one worker's room / 2,
    // here the claims are one at a time through count_request's equivalent).
    let mut now = NOON;
    let mut dues = Vec::new();
    for _ in 0..3 {
        for _ in 0..30 {
            book.return_all(&mut store).unwrap();
            assert!(admitted(
                &book
                    .admit(&mut store, &counter_key(1), &limits, now)
                    .unwrap()
                    .admission
            ));
        }
        book.return_all(&mut store).unwrap();
        now += 20;
        dues.push(watched.look(&mut store, now, true).unwrap());
    }
    // 100 granted: 70 left after one tick (> 2 × 30), 40 after two (≤ 60): refill.
    assert_eq!(dues[0], Due::Nothing);
    match &dues[1] {
        Due::Refill(w) => {
            assert_eq!(w.held, vec![40]);
            assert_eq!(w.want, 30);
        }
        other => panic!("{other:?}"),
    }
    // No refill while one is in flight.
    assert_eq!(watched.look(&mut store, now, false).unwrap(), Due::Nothing);
}

#[test]
fn an_idle_contract_hands_its_unused_units_back_once() {
    let limits = [per(5, Period::Second), per(100, Period::Minute)];
    let mut store = MemoryStore::new();
    granted(&mut store, &limits, 4, NOON);
    let mut book = fleet_book();
    assert!(admitted(
        &book
            .admit(&mut store, &counter_key(1), &limits, NOON)
            .unwrap()
            .admission
    ));
    book.return_all(&mut store).unwrap();
    let mut watched = Watched::new(1, limits.to_vec(), NOON);
    assert_eq!(
        watched.look(&mut store, NOON + 500, true).unwrap(),
        Due::Nothing
    );
    // The second has ended by then; the minute's 3 unused go back.
    let due = watched.look(&mut store, NOON + 2_100, true).unwrap();
    let minute = window(Period::Minute, NOON).start;
    assert_eq!(
        due,
        Due::Return(vec![ReturnedUnits {
            per: Period::Minute,
            start: minute,
            units: 3
        }])
    );
    // Taken out of the allowance: nothing more is admitted here without a new grant.
    match book
        .admit(&mut store, &counter_key(1), &limits, NOON + 2_200)
        .unwrap()
        .admission
    {
        Admission::Starved { held, .. } => assert_eq!(held[..2], [0, 0]),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        watched.look(&mut store, NOON + 3_000, true).unwrap(),
        Due::Forget
    );
}

#[test]
fn a_contract_whose_windows_ended_is_forgotten() {
    let limits = [per(5, Period::Second)];
    let mut store = MemoryStore::new();
    granted(&mut store, &limits, 4, NOON);
    let mut watched = Watched::new(1, limits.to_vec(), NOON);
    assert_eq!(
        watched.look(&mut store, NOON + 1_000, true).unwrap(),
        Due::Forget
    );
}

/// A gateway that stops early hands back what it held, and the others admit it: the fleet
/// admits the whole limit. A return sent twice (a retry, a replay) is subtracted once.
#[test]
fn units_handed_back_by_an_idle_gateway_are_admitted_elsewhere_and_never_twice() {
    let limits = [per(300, Period::Minute)];
    let mut broker = Broker {
        gateways: 3,
        ..Broker::default()
    };
    let mut applied = std::collections::HashSet::new();
    let mut gateways: Vec<Gateway> = (0..3).map(|i| Gateway::new(i + 1, 1)).collect();
    let mut admitted_total = 0;
    for i in 0..60u64 {
        let a = gateways[(i % 3) as usize].request(&mut broker, 0, &limits, NOON + i);
        admitted_total += u64::from(admitted(&a));
    }
    // Gateway 0 falls idle: its worker hands its lease back, the watcher its grant.
    let g0 = &mut gateways[0];
    g0.workers[0].return_all(&mut g0.store).unwrap();
    let mut watched = Watched::new(1, limits.to_vec(), NOON + 60);
    assert_eq!(
        watched.look(&mut g0.store, NOON + 100, true).unwrap(),
        Due::Nothing
    );
    let Due::Return(units) = watched.look(&mut g0.store, NOON + 2_200, true).unwrap() else {
        panic!("gateway 0 held nothing");
    };
    let back = ReturnRequest {
        gateway: g0.state.gateway_id(),
        contract: 1,
        id: "00000000000000aa".into(),
        windows: units,
    };
    assert_eq!(back.check(), Ok(()));
    let counted = broker.counts.values().sum::<u64>();
    assert!(broker.give_back(&back, &mut applied));
    assert!(
        !broker.give_back(&back, &mut applied),
        "a replayed return applied twice"
    );
    assert_eq!(
        broker.counts.values().sum::<u64>(),
        counted - back.windows[0].units
    );
    // The other two admit the rest of the limit between them, and not one more.
    for i in 0..1_000u64 {
        let g = 1 + (i % 2) as usize;
        let a = gateways[g].request(&mut broker, 0, &limits, NOON + 2_300 + i);
        admitted_total += u64::from(admitted(&a));
    }
    assert_eq!(admitted_total, 300);
}

#[test]
fn malformed_returns_name_their_problem() {
    let ok = ReturnRequest {
        gateway: "0123456789abcdef".into(),
        contract: 1,
        id: "fedcba9876543210".into(),
        windows: vec![ReturnedUnits {
            per: Period::Minute,
            start: NOON / 1000,
            units: 3,
        }],
    };
    assert_eq!(ok.check(), Ok(()));
    let mut r = ok.clone();
    r.id = "x".into();
    assert!(r.check().unwrap_err().contains("id"));
    let mut r = ok.clone();
    r.windows[0].start += 1;
    assert!(r.check().unwrap_err().contains("start of a Minute window"));
    let mut r = ok.clone();
    r.windows.push(r.windows[0]);
    assert!(r.check().unwrap_err().contains("twice"));
    let mut r = ok;
    r.windows.clear();
    assert!(r.check().unwrap_err().contains("windows"));
}
