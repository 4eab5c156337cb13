//! Usage reporting in the filter: workers tally, the singleton ships.
//!
//! A worker adds each decided request to its VM's [`UsageTally`] (no host call) and, about once
//! a second, hands the tally to the singleton on the shared queue [`USAGE_QUEUE`] (one host
//! call per second, not per request). The singleton merges what arrives into its [`Outbox`]
//! and posts reports to the control plane every `usage_report_ms`, each again unchanged until
//! the control plane has acknowledged it (see `tollgate_core::usage`).

use std::time::Duration;

use tollgate_core::config::ControlPlane;
use tollgate_core::usage::{Outbox, UsageTally, USAGE_PATH, USAGE_QUEUE};

use crate::host::{self, HeaderMap};
use crate::metrics::{Metric, UsageMetrics};
use tollgate_core::gateway::RequestHeaders;

/// How often a worker hands its tally to the singleton.
const WORKER_FLUSH: Duration = Duration::from_secs(1);

/// Rows a worker keeps while the singleton's queue cannot be reached (beyond: dropped, counted).
const WORKER_MAX_ROWS: usize = 100_000;

/// Rows the singleton keeps, sent or not, while the control plane does not acknowledge them:
/// a minute of 100k contracts, 20 times over.
const OUTBOX_MAX_ROWS: usize = 2_000_000;

/// How long a report may take to be answered.
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// A worker's side.
pub struct WorkerUsage {
    pub tally: UsageTally,
    vm_id: String,
    queue: Option<u32>,
    next_flush_ms: u64,
    dropped: Metric,
}

impl WorkerUsage {
    pub fn new(vm_id: String) -> Self {
        WorkerUsage {
            tally: UsageTally::default(),
            vm_id,
            queue: None,
            next_flush_ms: 0,
            dropped: Metric::counter("tollgate_usage_dropped_rows_total"),
        }
    }

    /// Hands the tally to the singleton if a second has passed; keeps it while the queue is
    /// not there yet (the singleton registers it when it starts).
    pub fn on_tick(&mut self, now_ms: u64) {
        if now_ms < self.next_flush_ms || self.tally.is_empty() {
            return;
        }
        self.next_flush_ms = now_ms + WORKER_FLUSH.as_millis() as u64;
        if self.queue.is_none() {
            self.queue = host::resolve_queue(&self.vm_id, USAGE_QUEUE)
                .map_err(|e| log::warn!("tollgate: usage queue: {}", e.0))
                .ok()
                .flatten();
        }
        let Some(queue) = self.queue else {
            if self.tally.len() > WORKER_MAX_ROWS {
                let dropped = self.tally.take_rows().len();
                self.dropped.add(u32::try_from(dropped).unwrap_or(u32::MAX));
                log::warn!("tollgate: no usage queue to hand {dropped} rows to; dropped");
            }
            return;
        };
        let Some(batch) = self.tally.take_batch() else {
            return;
        };
        if let Err(e) = host::enqueue(queue, &batch) {
            // The singleton went away (a reload): find its queue again next time. These rows
            // cannot be put back unchanged, and are counted as dropped.
            self.queue = None;
            self.dropped.inc();
            log::warn!("tollgate: usage batch not handed over: {}", e.0);
        }
    }
}

/// The singleton's side.
pub struct Shipper {
    /// Dropped rows already counted in the metric.
    counted_dropped: u64,
    outbox: Outbox,
    queue: Option<u32>,
    in_flight: Option<(u32, u64)>,
    next_ship_ms: u64,
    every_ms: u64,
    metrics: UsageMetrics,
}

impl Shipper {
    pub fn new(control_plane: &ControlPlane) -> Self {
        let gateway = format!("{:016x}", crate::fleet::random(0x75_73_61_67_65));
        let queue = host::register_queue(USAGE_QUEUE)
            .map_err(|e| log::warn!("tollgate poller: usage not reported: {}", e.0))
            .ok();
        log::info!("tollgate poller: reporting usage as gateway {gateway}");
        Shipper {
            counted_dropped: 0,
            outbox: Outbox::new(gateway, OUTBOX_MAX_ROWS),
            queue,
            in_flight: None,
            next_ship_ms: 0,
            every_ms: u64::from(control_plane.usage_report_ms),
            metrics: UsageMetrics::define(),
        }
    }

    /// Whether `queue` is the usage queue; then everything on it is merged.
    pub fn on_queue_ready(&mut self, queue: u32) -> bool {
        if self.queue != Some(queue) {
            return false;
        }
        loop {
            match host::dequeue(queue) {
                Ok(Some(batch)) => {
                    if let Err(e) = self.outbox.add_batch(&batch) {
                        log::warn!("tollgate poller: {e}");
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    log::warn!("tollgate poller: usage queue: {}", e.0);
                    break;
                }
            }
        }
        self.count_dropped();
        true
    }

    pub fn on_tick(&mut self, control_plane: &ControlPlane, authorization: &str, now_ms: u64) {
        if self.in_flight.is_none() && now_ms >= self.next_ship_ms {
            self.next_ship_ms = now_ms + self.every_ms;
            self.ship(control_plane, authorization);
        }
    }

    fn ship(&mut self, control_plane: &ControlPlane, authorization: &str) {
        let Some(report) = self.outbox.next_report() else {
            return;
        };
        let seq = report.seq;
        let body = report.to_json();
        match crate::fleet::post(
            control_plane,
            authorization,
            USAGE_PATH,
            &body,
            REPORT_TIMEOUT,
        ) {
            Ok(token) => self.in_flight = Some((token, seq)),
            Err(why) => {
                self.metrics.failures.inc();
                log::warn!("tollgate poller: usage report {seq} not sent: {why}");
            }
        }
        self.metrics
            .unacknowledged
            .set(self.outbox.unacknowledged() as u64);
    }

    /// Whether `token` was a usage report's answer; an acknowledged report is dropped and the
    /// next one, if any, sent at once.
    pub fn on_response(
        &mut self,
        token: u32,
        num_headers: usize,
        control_plane: &ControlPlane,
        authorization: &str,
    ) -> bool {
        let Some((_, seq)) = self.in_flight.take_if(|(t, _)| *t == token) else {
            return false;
        };
        let status = match num_headers {
            0 => None,
            _ => HeaderMap::call_response().get(":status").ok().flatten(),
        };
        match status.as_deref() {
            Some("200") => {
                self.outbox.acknowledged(seq);
                self.metrics.reports.inc();
                if self.outbox.unacknowledged() > 0 {
                    self.ship(control_plane, authorization);
                }
            }
            Some("400") => {
                // Refused as malformed: it would be refused every time.
                let rows = self.outbox.drop_front();
                self.metrics.failures.inc();
                log::warn!("tollgate poller: usage report {seq} refused by the control plane; its {rows} rows dropped");
                self.count_dropped();
            }
            other => {
                // Sent again unchanged at the next interval: the control plane may have
                // applied it, and then recognises it.
                self.metrics.failures.inc();
                log::warn!(
                    "tollgate poller: usage report {seq} not acknowledged ({}); {} waiting",
                    other.unwrap_or("no answer"),
                    self.outbox.unacknowledged()
                );
            }
        }
        self.metrics
            .unacknowledged
            .set(self.outbox.unacknowledged() as u64);
        true
    }

    fn count_dropped(&mut self) {
        let dropped = self.outbox.dropped_rows();
        let new = dropped.saturating_sub(self.counted_dropped);
        self.counted_dropped = dropped;
        self.metrics
            .dropped
            .add(u32::try_from(new).unwrap_or(u32::MAX));
    }
}
