//! Fixed rate-limit windows on UTC calendar boundaries, computed from Unix time.
//!
//! Months are the only irregular period; they are derived from the proleptic Gregorian civil
//! date (the days-from-civil algorithm), so February, leap years and December → January are
//! exact without a time-zone database.

use crate::snapshot::Period;

/// A window `[start, end)` in Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: u64,
    pub end: u64,
}

impl Window {
    /// Whole seconds from `now_ms` to the window end, rounded up so a client that waits this
    /// long is always past the boundary; at least 1.
    pub fn seconds_left(&self, now_ms: u64) -> u64 {
        let end_ms = self.end.saturating_mul(1000);
        end_ms.saturating_sub(now_ms).div_ceil(1000).max(1)
    }
}

pub fn window(period: Period, now_ms: u64) -> Window {
    let now = now_ms / 1000;
    let fixed = |len: u64| {
        let start = now - now % len;
        Window {
            start,
            end: start + len,
        }
    };
    match period {
        Period::Second => fixed(1),
        Period::Minute => fixed(60),
        Period::Hour => fixed(3_600),
        Period::Day => fixed(86_400),
        Period::Month => {
            let (year, month, _) = civil_from_days(now / 86_400);
            let (next_year, next_month) = if month == 12 {
                (year + 1, 1)
            } else {
                (year, month + 1)
            };
            Window {
                start: days_from_civil(year, month, 1) * 86_400,
                end: days_from_civil(next_year, next_month, 1) * 86_400,
            }
        }
    }
}

/// Days since 1970-01-01 of a civil date (year ≥ 1970).
pub fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    // Shift the year to start in March so the leap day is the year's last day.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date (year, month 1–12, day 1–31) of a day count since 1970-01-01.
pub fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: u64 = 1000;

    #[test]
    fn month_window_of_a_leap_february() {
        // 2024-02-29T23:59:59Z
        let now = 1_709_251_199 * S;
        let w = window(Period::Month, now);
        assert_eq!(w.start, 1_706_745_600); // 2024-02-01
        assert_eq!(w.end, 1_709_251_200); // 2024-03-01
        assert_eq!(w.seconds_left(now), 1);
    }

    #[test]
    fn december_rolls_into_next_year() {
        // 2025-12-31T12:00:00Z
        let w = window(Period::Month, 1_767_182_400 * S);
        assert_eq!(w.start, 1_764_547_200); // 2025-12-01
        assert_eq!(w.end, 1_767_225_600); // 2026-01-01
                                          // One second into the new year is a new window.
        let next = window(Period::Month, 1_767_225_600 * S);
        assert_eq!(next.start, 1_767_225_600);
    }

    #[test]
    fn fixed_windows_align_to_utc() {
        let now = 1_700_000_123_456; // 2023-11-14T22:15:23.456Z
        assert_eq!(window(Period::Second, now).start, 1_700_000_123);
        assert_eq!(window(Period::Minute, now).start, 1_700_000_100);
        assert_eq!(window(Period::Hour, now).start, 1_699_999_200);
        assert_eq!(window(Period::Day, now).start, 1_699_920_000);
        assert_eq!(window(Period::Second, now).seconds_left(now), 1);
        assert_eq!(window(Period::Minute, now).seconds_left(now), 37);
    }

    proptest! {
        #[test]
        fn civil_dates_round_trip(days in 0u64..200_000) {
            let (y, m, d) = civil_from_days(days);
            prop_assert!((1..=12).contains(&m) && (1..=31).contains(&d));
            prop_assert_eq!(days_from_civil(y, m, d), days);
        }

        #[test]
        fn every_instant_lies_in_its_window(now_ms in 0u64..4_102_444_800_000, p in 0usize..5) {
            let period = Period::ALL[p];
            let w = window(period, now_ms);
            prop_assert!(w.start * 1000 <= now_ms && now_ms < w.end * 1000);
            // The window just after ends where this one starts the next.
            let next = window(period, w.end * 1000);
            prop_assert_eq!(next.start, w.end);
            if period == Period::Month {
                let (_, _, day) = civil_from_days(w.start / 86_400);
                prop_assert_eq!(day, 1);
                let len_days = (w.end - w.start) / 86_400;
                prop_assert!((28..=31).contains(&len_days));
            }
        }
    }
}
