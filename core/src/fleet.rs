//! Fleet-wide counting: what a gateway and the control plane's lease broker say to each other.
//!
//! With `tollgate serve --redis`, every snapshot carries [`FleetSettings`] and Redis holds the
//! authoritative count of every (contract, limit, window). A gateway never asks Redis per
//! request: it asks the broker for a *grant* of g units of the current window of every limit
//! of a plan at once ([`LeaseRequest`] → [`LeaseAnswer`]), writes the grant into the
//! contract's counter in shared data as its *allowance* for those windows, and its workers
//! admit from the allowance exactly as they admit from a plan's limit without Redis. The
//! broker grants at most the room left in every window, so, per window, what all gateways
//! were granted never exceeds the limit.
//!
//! Windows are the broker's: it reads Redis `TIME` and answers with each window's bounds and
//! its own clock, from which the gateway keeps the offset of its clock to the broker's
//! ([`clock_offset_ms`]).

use serde::{Deserialize, Serialize};

use crate::snapshot::{Period, RateLimit};

/// Where gateways ask for grants: `POST`, with the gateway token as for snapshots.
pub const LEASE_PATH: &str = "/gateway/v1/leases";

/// What a gateway does for a contract whose allowance is spent while the broker or Redis
/// cannot be reached (grants already held keep admitting exactly).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    /// Each gateway admits at most ⌊L / N⌋ per window, what it was granted included, N being
    /// the gateways the broker saw in the last minute.
    #[default]
    Share,
    /// 429 with `Retry-After` until the broker answers again.
    Closed,
    /// Each gateway counts alone, as without Redis (the fleet admits up to N × L).
    Local,
}

impl Fallback {
    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::Share => "share",
            Fallback::Closed => "closed",
            Fallback::Local => "local",
        }
    }
}

impl std::str::FromStr for Fallback {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "share" => Ok(Fallback::Share),
            "closed" => Ok(Fallback::Closed),
            "local" => Ok(Fallback::Local),
            other => Err(format!(
                "unknown fleet fallback '{other}': expected share, closed or local"
            )),
        }
    }
}

/// Present in a snapshot when counts are fleet-wide (signed with the rest of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct FleetSettings {
    #[serde(default)]
    pub fallback: Fallback,
}

/// A gateway's request for units of a contract's current windows (`POST` [`LEASE_PATH`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    /// The Envoy process asking: 16 lowercase hex digits, random per process.
    pub gateway: String,
    /// The contract's id (its counter in shared data and in Redis).
    pub contract: u64,
    /// The plan's limits, in the plan's order; the grant is the same in every one.
    pub limits: Vec<RateLimit>,
    /// How many units the gateway would like (at least 1); the broker may grant fewer.
    pub want: u64,
}

/// One limit's window as the broker counted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LeaseWindow {
    /// Unix seconds, inclusive.
    pub start: u64,
    /// Unix seconds, exclusive.
    pub end: u64,
    /// What is left in this window for the whole fleet after this grant.
    pub remaining: u64,
}

/// The broker's answer: `granted` units in every window of `windows` (one per limit, in the
/// request's order). `granted` is 0 when some window has no room left (its `remaining` is 0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LeaseAnswer {
    pub granted: u64,
    /// The broker's clock (Redis `TIME`) when it granted, in Unix milliseconds.
    pub now_ms: u64,
    /// Gateways that asked for grants in the last minute (this one included): the N of the
    /// `share` fallback.
    pub gateways: u32,
    pub windows: Vec<LeaseWindow>,
}

impl LeaseRequest {
    /// Whether the request is one a broker can answer, or what is wrong with it.
    pub fn check(&self) -> Result<(), String> {
        if self.gateway.len() != 16 || !self.gateway.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("gateway must be 16 hex digits".into());
        }
        if self.limits.is_empty() || self.limits.len() > 8 {
            return Err("limits must list between 1 and 8 limits".into());
        }
        if self.limits.iter().any(|l| l.requests == 0) {
            return Err("every limit allows at least 1 request".into());
        }
        let mut periods: Vec<Period> = self.limits.iter().map(|l| l.per).collect();
        periods.sort();
        periods.dedup();
        if periods.len() != self.limits.len() {
            return Err("limits name a period twice".into());
        }
        if self.want == 0 {
            return Err("want must be at least 1".into());
        }
        Ok(())
    }
}

/// The offset to add to a gateway's clock to read the broker's, from an answer stamped
/// `broker_now_ms` to a request sent at `sent_ms` (gateway clock). The broker read its clock
/// after the request was sent, so the gateway's clock plus this offset runs ahead of the
/// broker's by at most the round trip, never behind: by the gateway's reckoning a window ends
/// no later than it does for the broker.
pub fn clock_offset_ms(sent_ms: u64, broker_now_ms: u64) -> i64 {
    let diff = i128::from(broker_now_ms) - i128::from(sent_ms);
    diff.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

#[cfg(test)]
mod tests {
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
}
