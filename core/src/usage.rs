//! Usage: what a gateway counted, per minute, per API version and contract, shipped to the
//! control plane exactly once.
//!
//! The counts are the enforcement's own: each worker tallies every decided request in its VM
//! ([`UsageTally`], no host call), hands its tally to the process's singleton once per tick
//! through a shared queue ([`USAGE_QUEUE`]), and the singleton merges them and ships them
//! ([`Outbox`]) as numbered reports ([`UsageReport`]) to [`USAGE_PATH`]. A report is sent again,
//! unchanged, until the control plane acknowledges it; the control plane keeps one row per
//! (gateway, sequence number) it has applied, in the transaction that applies it, so a report
//! that arrives twice counts once.
//!
//! A row is one minute of one API version and either one contract (every request a contract's
//! credential reached, allowed or not) or, without a contract, one cause (a missing or invalid
//! credential, a retired version, a path no API serves).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::decision::Reason;

/// Where gateways post usage reports: `POST`, with the gateway token as for snapshots.
pub const USAGE_PATH: &str = "/gateway/v1/usage";

/// The shared queue (per `vm_id`) on which workers hand their tallies to the singleton.
pub const USAGE_QUEUE: &str = "tollgate.usage";

/// Upper bounds (inclusive, ms) of the latency histogram's buckets; one more bucket holds
/// everything slower. Fixed, so that histograms from any gateway and any minute add up.
pub const LATENCY_BOUNDS_MS: [u64; 15] = [
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000,
];
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;

/// Response status classes counted for allowed requests.
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// A report holds at most this many rows; more are cut into several reports.
pub const MAX_REPORT_ROWS: usize = 5_000;

/// One report from one gateway (`POST` [`USAGE_PATH`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UsageReport {
    /// The Envoy process reporting: 16 lowercase hex digits, random per process.
    pub gateway: String,
    /// 1 for the process's first report, one more for each next; a report is sent again with
    /// the same number until it is acknowledged.
    pub seq: u64,
    pub rows: Vec<UsageRow>,
}

impl UsageReport {
    pub fn to_json(&self) -> Vec<u8> {
        // Plain data: encoding cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// One minute of one API version and contract (or cause).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UsageRow {
    /// Start of the minute, in Unix seconds (a multiple of 60), on the gateway's clock.
    pub minute: u64,
    /// `org/api/version`; absent when no API serves the path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
    /// The contract the credential reached; absent for the causes no contract is known for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract: Option<u64>,
    /// Requests by decision ([`Reason::label`]: `allow`, `rate_limited`, `invalid_key`, …);
    /// only decisions that happened.
    pub decisions: BTreeMap<String, u64>,
    /// Allowed requests by the upstream's response status class ([`STATUS_CLASSES`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub status: BTreeMap<String, u64>,
    /// Allowed requests by gateway-measured latency, request headers to response headers:
    /// counts per bucket of [`LATENCY_BOUNDS_MS`] (empty: none measured).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub latency_ms: Vec<u64>,
}

/// What a row is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RowKey {
    pub minute: u64,
    pub api: Option<Arc<str>>,
    pub contract: Option<u64>,
}

impl RowKey {
    /// The row of a request decided at `now_ms`.
    pub fn at(now_ms: u64, api: Option<Arc<str>>, contract: Option<u64>) -> Self {
        RowKey {
            minute: now_ms / 60_000 * 60,
            api,
            contract,
        }
    }
}

/// The counts of one row, as a tally keeps them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub decisions: [u64; Reason::ALL.len()],
    pub status: [u64; STATUS_CLASSES.len()],
    pub latency: [u64; LATENCY_BUCKETS],
}

impl Counts {
    fn add(&mut self, other: &Counts) {
        let pairs = (self.decisions.iter_mut().zip(&other.decisions))
            .chain(self.status.iter_mut().zip(&other.status))
            .chain(self.latency.iter_mut().zip(&other.latency));
        for (mine, theirs) in pairs {
            *mine = mine.saturating_add(*theirs);
        }
    }

    fn to_row(&self, key: &RowKey) -> UsageRow {
        let named = |names: &mut dyn Iterator<Item = &'static str>, counts: &[u64]| {
            names
                .zip(counts)
                .filter(|(_, n)| **n > 0)
                .map(|(name, n)| (name.to_owned(), *n))
                .collect::<BTreeMap<_, _>>()
        };
        let measured = self.latency.iter().any(|n| *n > 0);
        UsageRow {
            minute: key.minute,
            api: key.api.as_deref().map(str::to_owned),
            contract: key.contract,
            decisions: named(&mut Reason::ALL.iter().map(|r| r.label()), &self.decisions),
            status: named(&mut STATUS_CLASSES.iter().copied(), &self.status),
            latency_ms: match measured {
                true => self.latency.to_vec(),
                false => Vec::new(),
            },
        }
    }

    /// The counts of a row received from elsewhere; the error names what is wrong with it.
    pub fn from_row(row: &UsageRow) -> Result<Counts, String> {
        let mut counts = Counts::default();
        for (label, n) in &row.decisions {
            let i = Reason::ALL
                .iter()
                .position(|r| r.label() == label)
                .ok_or_else(|| format!("unknown decision '{label}'"))?;
            counts.decisions[i] = *n;
        }
        for (class, n) in &row.status {
            let i = STATUS_CLASSES
                .iter()
                .position(|c| c == class)
                .ok_or_else(|| format!("unknown status class '{class}'"))?;
            counts.status[i] = *n;
        }
        match row.latency_ms.len() {
            0 => {}
            LATENCY_BUCKETS => counts.latency.copy_from_slice(&row.latency_ms),
            n => {
                return Err(format!(
                    "latency_ms has {n} buckets; it needs {LATENCY_BUCKETS} (or none)"
                ))
            }
        }
        if row.minute % 60 != 0 {
            return Err(format!("minute {} is not a multiple of 60", row.minute));
        }
        Ok(counts)
    }
}

/// The latency bucket `ms` falls into.
pub fn latency_bucket(ms: u64) -> usize {
    LATENCY_BOUNDS_MS.partition_point(|bound| *bound < ms)
}

/// The status class of an HTTP status (`None` outside 100–599).
pub fn status_class(status: u16) -> Option<usize> {
    match status {
        100..=599 => Some(usize::from(status / 100 - 1)),
        _ => None,
    }
}

/// The `q`-quantile (0 < q ≤ 1) of a latency histogram, as the upper bound of the bucket it
/// falls in (the last bucket, unbounded, answers the last bound); `None` for an empty one.
pub fn latency_quantile(buckets: &[u64], q: f64) -> Option<u64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    // The rank of the quantile, 1-based: the smallest count whose cumulative share reaches q.
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0u64;
    for (i, n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= rank {
            let last = LATENCY_BOUNDS_MS.len() - 1;
            return LATENCY_BOUNDS_MS.get(i.min(last)).copied();
        }
    }
    LATENCY_BOUNDS_MS.last().copied()
}

/// A worker's (or the singleton's) tally: rows by key, added to per request.
#[derive(Debug, Default)]
pub struct UsageTally {
    rows: HashMap<RowKey, Counts>,
}

impl UsageTally {
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    fn row(&mut self, key: RowKey) -> &mut Counts {
        self.rows.entry(key).or_default()
    }

    /// One decided request.
    pub fn decided(&mut self, key: RowKey, reason: Reason) {
        if let Some(i) = Reason::ALL.iter().position(|r| *r == reason) {
            let n = &mut self.row(key).decisions[i];
            *n = n.saturating_add(1);
        }
    }

    /// The upstream's response to an allowed request: its status and latency.
    pub fn answered(&mut self, key: RowKey, status: Option<u16>, latency_ms: u64) {
        let counts = self.row(key);
        if let Some(class) = status.and_then(status_class) {
            counts.status[class] = counts.status[class].saturating_add(1);
        }
        let bucket = latency_bucket(latency_ms);
        counts.latency[bucket] = counts.latency[bucket].saturating_add(1);
    }

    /// Adds rows (another worker's, or a batch from the queue).
    pub fn add_rows(&mut self, rows: &[UsageRow]) -> Result<(), String> {
        for row in rows {
            let counts = Counts::from_row(row)?;
            let key = RowKey {
                minute: row.minute,
                api: row.api.as_deref().map(Arc::from),
                contract: row.contract,
            };
            self.row(key).add(&counts);
        }
        Ok(())
    }

    /// Everything tallied, as rows in key order; the tally is empty afterwards.
    pub fn take_rows(&mut self) -> Vec<UsageRow> {
        let mut rows: Vec<(RowKey, Counts)> = self.rows.drain().collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows.iter()
            .map(|(key, counts)| counts.to_row(key))
            .collect()
    }

    /// A batch for the singleton's queue (JSON rows).
    pub fn take_batch(&mut self) -> Option<Vec<u8>> {
        if self.rows.is_empty() {
            return None;
        }
        serde_json::to_vec(&self.take_rows()).ok()
    }
}

/// The rows of a queued batch.
pub fn decode_batch(bytes: &[u8]) -> Result<Vec<UsageRow>, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("unreadable usage batch: {e}"))
}

/// The singleton's side: batches merged while no report is due, reports numbered and kept
/// until acknowledged, sent one at a time in order.
///
/// A report, once cut, never changes: if the control plane applied it but its answer was lost,
/// the same (gateway, seq) arrives again and is recognised. What arrives while reports wait is
/// merged into the next one, so an outage costs one report's worth of memory per row key, not
/// one per interval. Beyond `max_rows` rows held (sent or not), new rows are dropped and
/// counted in [`Outbox::dropped_rows`].
#[derive(Debug)]
pub struct Outbox {
    gateway: String,
    next_seq: u64,
    pending: UsageTally,
    /// Cut reports not yet acknowledged, oldest first.
    queued: VecDeque<UsageReport>,
    max_rows: usize,
    dropped_rows: u64,
}

impl Outbox {
    pub fn new(gateway: String, max_rows: usize) -> Self {
        Outbox {
            gateway,
            next_seq: 1,
            pending: UsageTally::default(),
            queued: VecDeque::new(),
            max_rows,
            dropped_rows: 0,
        }
    }

    pub fn gateway(&self) -> &str {
        &self.gateway
    }

    /// Rows dropped because the outbox was full, since it started.
    pub fn dropped_rows(&self) -> u64 {
        self.dropped_rows
    }

    fn held_rows(&self) -> usize {
        self.pending.len() + self.queued.iter().map(|r| r.rows.len()).sum::<usize>()
    }

    /// Merges a worker's batch.
    pub fn add_batch(&mut self, bytes: &[u8]) -> Result<(), String> {
        let rows = decode_batch(bytes)?;
        let room = self.max_rows.saturating_sub(self.held_rows());
        let (kept, dropped) = rows.split_at(rows.len().min(room));
        self.dropped_rows = self.dropped_rows.saturating_add(dropped.len() as u64);
        self.pending.add_rows(kept)
    }

    /// The report to send now: the oldest unacknowledged one, or else what is pending, cut
    /// into reports (at most [`MAX_REPORT_ROWS`] rows each). `None`: nothing to send.
    pub fn next_report(&mut self) -> Option<&UsageReport> {
        if self.queued.is_empty() && !self.pending.is_empty() {
            let rows = self.pending.take_rows();
            for chunk in rows.chunks(MAX_REPORT_ROWS) {
                self.queued.push_back(UsageReport {
                    gateway: self.gateway.clone(),
                    seq: self.next_seq,
                    rows: chunk.to_vec(),
                });
                self.next_seq += 1;
            }
        }
        self.queued.front()
    }

    /// The control plane acknowledged report `seq`.
    pub fn acknowledged(&mut self, seq: u64) {
        if self.queued.front().is_some_and(|r| r.seq == seq) {
            self.queued.pop_front();
        }
    }

    /// Gives up the oldest report (the control plane refused it as malformed); its rows are
    /// counted as dropped. How many rows it had.
    pub fn drop_front(&mut self) -> usize {
        let rows = self.queued.pop_front().map_or(0, |r| r.rows.len());
        self.dropped_rows = self.dropped_rows.saturating_add(rows as u64);
        rows
    }

    /// Reports cut and not yet acknowledged.
    pub fn unacknowledged(&self) -> usize {
        self.queued.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(minute: u64, api: &str, contract: Option<u64>) -> RowKey {
        RowKey {
            minute,
            api: Some(Arc::from(api)),
            contract,
        }
    }

    #[test]
    fn a_tally_counts_decisions_statuses_and_latencies_per_row() {
        let mut tally = UsageTally::default();
        let k = RowKey::at(125_000, Some(Arc::from("acme/orders/1")), Some(7));
        assert_eq!(k.minute, 120);
        tally.decided(k.clone(), Reason::Allow);
        tally.decided(k.clone(), Reason::Allow);
        tally.decided(k.clone(), Reason::RateLimited);
        tally.answered(k.clone(), Some(200), 3);
        tally.answered(k.clone(), Some(503), 70);
        tally.decided(
            RowKey::at(125_000, Some(Arc::from("acme/orders/1")), None),
            Reason::InvalidKey,
        );
        let rows = tally.take_rows();
        assert!(tally.is_empty());
        assert_eq!(rows.len(), 2);
        let contract = rows.iter().find(|r| r.contract == Some(7)).unwrap();
        assert_eq!(contract.decisions["allow"], 2);
        assert_eq!(contract.decisions["rate_limited"], 1);
        assert_eq!(contract.status["2xx"], 1);
        assert_eq!(contract.status["5xx"], 1);
        assert_eq!(contract.latency_ms[latency_bucket(3)], 1);
        assert_eq!(contract.latency_ms[latency_bucket(70)], 1);
        let cause = rows.iter().find(|r| r.contract.is_none()).unwrap();
        assert_eq!(cause.decisions["invalid_key"], 1);
        assert!(cause.latency_ms.is_empty() && cause.status.is_empty());
    }

    #[test]
    fn rows_survive_the_queue_and_add_up() {
        let mut a = UsageTally::default();
        let mut b = UsageTally::default();
        a.decided(key(60, "acme/x/1", Some(1)), Reason::Allow);
        b.decided(key(60, "acme/x/1", Some(1)), Reason::Allow);
        b.answered(key(60, "acme/x/1", Some(1)), Some(204), 0);
        let mut merged = UsageTally::default();
        for batch in [a.take_batch().unwrap(), b.take_batch().unwrap()] {
            merged.add_rows(&decode_batch(&batch).unwrap()).unwrap();
        }
        let rows = merged.take_rows();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].decisions["allow"], 2);
        assert_eq!(rows[0].status["2xx"], 1);
        assert_eq!(Counts::from_row(&rows[0]).unwrap().latency[0], 1);
    }

    #[test]
    fn bad_rows_are_named() {
        let mut row = Counts::default().to_row(&key(60, "a/b/1", None));
        row.decisions.insert("bribed".into(), 1);
        assert!(Counts::from_row(&row).unwrap_err().contains("bribed"));
        let mut row = Counts::default().to_row(&key(61, "a/b/1", None));
        assert!(Counts::from_row(&row)
            .unwrap_err()
            .contains("multiple of 60"));
        row.minute = 60;
        row.latency_ms = vec![1, 2];
        assert!(Counts::from_row(&row).unwrap_err().contains("buckets"));
    }

    #[test]
    fn latency_buckets_and_quantiles() {
        assert_eq!(latency_bucket(0), 0);
        assert_eq!(latency_bucket(1), 0);
        assert_eq!(latency_bucket(2), 1);
        assert_eq!(latency_bucket(3), 2);
        assert_eq!(latency_bucket(60_000), LATENCY_BOUNDS_MS.len() - 1);
        assert_eq!(latency_bucket(60_001), LATENCY_BOUNDS_MS.len());
        let mut h = [0u64; LATENCY_BUCKETS];
        assert_eq!(latency_quantile(&h, 0.5), None);
        h[latency_bucket(4)] = 90;
        h[latency_bucket(150)] = 10;
        assert_eq!(latency_quantile(&h, 0.5), Some(5));
        assert_eq!(latency_quantile(&h, 0.9), Some(5));
        assert_eq!(latency_quantile(&h, 0.95), Some(200));
        assert_eq!(latency_quantile(&h, 1.0), Some(200));
    }

    #[test]
    fn status_classes() {
        assert_eq!(status_class(200), Some(1));
        assert_eq!(status_class(599), Some(4));
        assert_eq!(status_class(99), None);
        assert_eq!(status_class(600), None);
    }

    #[test]
    fn the_outbox_numbers_reports_resends_until_acknowledged_and_merges_meanwhile() {
        let mut outbox = Outbox::new("00000000000000ab".into(), 1_000);
        assert!(outbox.next_report().is_none());
        let mut worker = UsageTally::default();
        worker.decided(key(60, "a/b/1", Some(1)), Reason::Allow);
        outbox.add_batch(&worker.take_batch().unwrap()).unwrap();
        let first = outbox.next_report().unwrap().clone();
        assert_eq!((first.seq, first.rows.len()), (1, 1));
        // Unacknowledged: more arrives, and the same report is offered again, unchanged.
        for _ in 0..3 {
            worker.decided(key(60, "a/b/1", Some(1)), Reason::Allow);
            outbox.add_batch(&worker.take_batch().unwrap()).unwrap();
            assert_eq!(outbox.next_report().unwrap(), &first);
        }
        outbox.acknowledged(1);
        let second = outbox.next_report().unwrap().clone();
        assert_eq!(second.seq, 2);
        assert_eq!(second.rows[0].decisions["allow"], 3);
        // A stale acknowledgement changes nothing.
        outbox.acknowledged(1);
        assert_eq!(outbox.next_report().unwrap().seq, 2);
        outbox.acknowledged(2);
        assert!(outbox.next_report().is_none());
        assert_eq!(outbox.unacknowledged(), 0);
    }

    #[test]
    fn a_large_tally_is_cut_into_reports_and_a_full_outbox_counts_what_it_drops() {
        let mut outbox = Outbox::new("00000000000000ab".into(), MAX_REPORT_ROWS + 10);
        let mut worker = UsageTally::default();
        for c in 0..(MAX_REPORT_ROWS as u64 + 20) {
            worker.decided(key(60, "a/b/1", Some(c)), Reason::Allow);
        }
        outbox.add_batch(&worker.take_batch().unwrap()).unwrap();
        assert_eq!(outbox.dropped_rows(), 10);
        assert_eq!(outbox.next_report().unwrap().rows.len(), MAX_REPORT_ROWS);
        assert_eq!(outbox.unacknowledged(), 2);
        outbox.acknowledged(1);
        assert_eq!(outbox.next_report().unwrap().rows.len(), 10);
        assert_eq!(outbox.next_report().unwrap().seq, 2);
    }
}
