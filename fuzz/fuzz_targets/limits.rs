//! The limit arithmetic: calendar windows and the one admission algorithm, with arbitrary
//! limits (any period, 0 to u64::MAX requests, duplicates), arbitrary stored counter bytes,
//! and a run of requests at non-decreasing times anywhere in u64 milliseconds.
//!
//! Invariants: nothing panics or overflows; every window holds its time and lasts its period
//! (a month 28 to 31 days) and the next one starts where it ends; a rejected request changes
//! nothing in shared data; an admitted one reports fewer remaining than its limit; no window
//! of any limit ever admits more than that limit.

#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use tollgate_core::limits::{count_request, Admission};
use tollgate_core::shared::{MemoryStore, SharedStore};
use tollgate_core::snapshot::{Period, RateLimit};
use tollgate_core::time::window;
use tollgate_fuzz::NOW_MS;

const KEY: &str = "tollgate.contract.1";

fn check_window(period: Period, now_ms: u64) {
    let w = window(period, now_ms);
    let now = now_ms / 1000;
    assert!(
        w.start <= now && now < w.end,
        "{period:?} window {w:?} misses {now}"
    );
    let length = w.end - w.start;
    match period {
        Period::Second => assert_eq!(length, 1),
        Period::Minute => assert_eq!(length, 60),
        Period::Hour => assert_eq!(length, 3_600),
        Period::Day => assert_eq!(length, 86_400),
        Period::Month => {
            assert!((28..=31).contains(&(length / 86_400)) && length.is_multiple_of(86_400))
        }
    }
    assert!(w.seconds_left(now_ms) >= 1);
    if let Some(end_ms) = w.end.checked_mul(1000) {
        assert_eq!(
            window(period, end_ms).start,
            w.end,
            "{period:?} windows are not contiguous"
        );
    }
}

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    let mut limits = Vec::new();
    for _ in 0..u.int_in_range(0..=6)? {
        let per = *u.choose(&Period::ALL)?;
        let requests = if u.ratio(1, 4)? {
            u.arbitrary()?
        } else {
            u.int_in_range(0..=6)?
        };
        limits.push(RateLimit { requests, per });
    }
    let mut store = MemoryStore::new();
    if u.arbitrary()? {
        let stored: Vec<u8> = u.arbitrary()?;
        store
            .set(KEY, &stored, 0)
            .expect("memory store never fails");
    }
    let mut now_ms: u64 = if u.ratio(1, 3)? {
        u.arbitrary()?
    } else {
        NOW_MS
    };

    // (period, window start) → requests admitted in it
    let mut admitted: HashMap<(Period, u64), u64> = HashMap::new();
    while !u.is_empty() {
        now_ms = now_ms.saturating_add(u64::from(u.arbitrary::<u32>()? % 90_000_000));
        for period in Period::ALL {
            check_window(period, now_ms);
        }
        let before = store.peek(KEY);
        let counted = count_request(&mut store, KEY, &limits, now_ms)
            .expect("a memory store has no contention and never fails");
        assert_eq!(counted.cas_retries, 0);
        match counted.admission {
            Admission::Rejected {
                status,
                retry_after,
            } => {
                assert_eq!(
                    store.peek(KEY),
                    before,
                    "a rejected request changed the counter"
                );
                assert_eq!(status.remaining, 0);
                assert!(retry_after >= 1);
                assert!(limits.iter().any(|l| l.requests == status.limit));
            }
            Admission::Admitted(status) => {
                if !limits.is_empty() {
                    assert!(status.remaining < status.limit, "{status:?}");
                    assert!(status.reset >= 1);
                }
                let mut seen = Vec::new();
                for limit in &limits {
                    let w = window(limit.per, now_ms);
                    if seen.contains(&(limit.per, w.start)) {
                        continue; // one count per window, however many limits share it
                    }
                    seen.push((limit.per, w.start));
                    *admitted.entry((limit.per, w.start)).or_default() += 1;
                }
                for limit in &limits {
                    let w = window(limit.per, now_ms);
                    let n = admitted[&(limit.per, w.start)];
                    assert!(n <= limit.requests, "{n} admitted in a window of {limit:?}");
                }
            }
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
