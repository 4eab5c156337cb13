//! The lease broker of `tollgate serve --redis`: grants gateways units of a contract's current
//! windows from counts kept in Redis, so that a limit holds for the whole fleet of gateways.
//!
//! A grant is one atomic Redis step, [`GRANT_SCRIPT`]: for every limit of the request it checks
//! that Redis's own clock (`TIME`) is inside the window the broker computed, reads the count,
//! finds how many more requests the tightest window lets the gateway admit (what it holds
//! there plus the room left), allows `a = min(want, that, sizing)` and adds to each window
//! what the gateway lacks there for `a`. Scripts run one at a time on a Redis server, so grants made by
//! any number of brokers at once never add up to more than a window's limit.
//!
//! Every counter of one contract carries the hash tag `{c<id>}`: on Redis Cluster they live in
//! one slot, as a script's keys must. The gateways seen in the last minute (the N that sizes
//! grants and the `share` fallback) are a sorted set of their own, outside any contract's slot,
//! updated by a separate command alongside each grant.

use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use tollgate_core::fleet::{LeaseAnswer, LeaseRequest, LeaseWindow, ReturnRequest};
use tollgate_core::snapshot::Period;
use tollgate_core::time::{window, Window};

use crate::error::Error;

/// How long one Redis call may take before the broker answers 503: a gateway waiting on a
/// grant holds requests, and a dead Redis must cost it this much, not a TCP timeout.
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(100);

/// The sorted set of gateway ids scored by when the broker last heard from them (Unix ms).
pub const GATEWAYS_KEY: &str = "tollgate:fleet:gateways";

/// A gateway counts towards N while it asked within this long.
const SEEN_MS: u64 = 60_000;

/// A counter outlives its window by this long (a grant that arrives late finds it, then it goes).
const COUNTER_GRACE_SECONDS: u64 = 60;

/// Grant attempts when windows move between the broker's computation and the script: the
/// second uses the script's own clock, so a third is needed only at a second boundary crossed
/// in between.
const ATTEMPTS: usize = 4;

/// Lua numbers are doubles: counts stay exact up to 2^53. A limit or a wish above that is
/// counted as 2^53, which can only grant less, never more.
const EXACT_UP_TO: u64 = 1 << 53;

/// The grant step. KEYS: per limit, its counter and the hash of what each gateway holds of it
/// ([`held_key`]). ARGV: want, gateways (N ≥ 1), the gateway's id, then for each limit its
/// requests, window start, window end (Unix seconds), when its keys expire (Unix ms) and what
/// the gateway holds unused in it. With `reach` the fewest requests any limit lets the gateway
/// admit (held plus room), it allows `a = min(want, reach, max(1, ⌊reach / 2N⌋))` more and
/// grants `max(0, a − held)` in each window — never more than the window's room — adding it to
/// the window's count and to the gateway's share of it. Answers `{-1, now_ms}` when Redis's
/// clock is outside a window (the broker recomputes them from `now_ms`), else `{a, now_ms,
/// granted_1, remaining_1, …}` with each window's grant and what it has left after it.
pub const GRANT_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1])
local now_ms = now * 1000 + math.floor(tonumber(t[2]) / 1000)
local want = tonumber(ARGV[1])
local gateways = math.max(1, tonumber(ARGV[2]))
local gateway = ARGV[3]
local limits = #KEYS / 2
local counted = {}
local reach = nil
for i = 1, limits do
  local base = 5 * i - 1
  local requests = tonumber(ARGV[base])
  if now < tonumber(ARGV[base + 1]) or now >= tonumber(ARGV[base + 2]) then
    return {-1, now_ms}
  end
  counted[i] = tonumber(redis.call('GET', KEYS[2 * i - 1]) or '0')
  local here = tonumber(ARGV[base + 4]) + math.max(0, requests - counted[i])
  if reach == nil or here < reach then
    reach = here
  end
end
local allowed = 0
if reach > 0 then
  allowed = math.min(want, reach, math.max(1, math.floor(reach / (2 * gateways))))
end
local answer = {allowed, now_ms}
for i = 1, limits do
  local base = 5 * i - 1
  local granted = math.max(0, allowed - tonumber(ARGV[base + 4]))
  if granted > 0 then
    -- Formatted as integers: Lua would write large doubles in exponent form.
    redis.call('INCRBY', KEYS[2 * i - 1], string.format('%d', granted))
    redis.call('PEXPIREAT', KEYS[2 * i - 1], ARGV[base + 3])
    redis.call('HINCRBY', KEYS[2 * i], gateway, string.format('%d', granted))
    redis.call('PEXPIREAT', KEYS[2 * i], ARGV[base + 3])
  end
  answer[2 * i + 1] = granted
  answer[2 * i + 2] = math.max(0, tonumber(ARGV[base]) - counted[i] - granted)
end
return answer
"#;

/// The return step. KEYS: the return's marker (one per gateway and return id, in the contract's
/// slot), then per window handed back its counter and its [`held_key`] hash. ARGV: the
/// gateway's id, when the marker expires (Unix ms), then the units per window. A marker that
/// exists already means the return was applied: it answers 0 and subtracts nothing. Otherwise
/// each window gets back at most what was granted to this gateway in it and not yet returned
/// (a return cannot give the fleet units it never held), and never goes below 0.
pub const RETURN_SCRIPT: &str = r#"
if not redis.call('SET', KEYS[1], '1', 'NX', 'PXAT', ARGV[2]) then
  return 0
end
for i = 1, (#KEYS - 1) / 2 do
  local counter, held = KEYS[2 * i], KEYS[2 * i + 1]
  local back = math.min(
    tonumber(redis.call('GET', counter) or '0'),
    tonumber(redis.call('HGET', held, ARGV[1]) or '0'),
    tonumber(ARGV[i + 2]))
  if back > 0 then
    redis.call('DECRBY', counter, string.format('%d', back))
    redis.call('HINCRBY', held, ARGV[1], string.format('%d', -back))
  end
end
return 1
"#;

/// The Redis hash of what each gateway was granted of one window's counter, less what it
/// handed back: `counter`'s key with `:held`.
pub fn held_key(contract: u64, period: Period, start: u64) -> String {
    format!("{}:held", counter_key(contract, period, start))
}

/// The Redis key marking that `gateway`'s return `id` for `contract` was applied.
pub fn return_key(contract: u64, gateway: &str, id: &str) -> String {
    format!("tollgate:{{c{contract}}}:return:{gateway}:{id}")
}

/// The Redis key counting `contract`'s `period` window that starts at `start` (Unix seconds).
pub fn counter_key(contract: u64, period: Period, start: u64) -> String {
    let period = match period {
        Period::Second => "second",
        Period::Minute => "minute",
        Period::Hour => "hour",
        Period::Day => "day",
        Period::Month => "month",
    };
    format!("tollgate:{{c{contract}}}:{period}:{start}")
}

pub struct Broker {
    redis: ConnectionManager,
    script: Script,
    return_script: Script,
    /// Redis's clock minus this process's, in ms, as of the latest grant: the windows of the
    /// next grant are computed from this guess of Redis's time (the script checks it).
    clock_offset_ms: AtomicI64,
    /// N as of the previous call (at least 1): sizes a grant without waiting for this call's
    /// count, so a grant is one round trip.
    gateways: AtomicU32,
}

/// A grant as the broker made it.
#[derive(Debug, Clone)]
pub struct Granted {
    pub answer: LeaseAnswer,
    /// Times the script found a window already over and the broker recomputed them.
    pub window_retries: u32,
}

fn unavailable(detail: String) -> Error {
    Error::Unavailable {
        kind: "redis-unavailable",
        detail,
    }
}

fn local_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Broker {
    /// A broker for the Redis at `url` (`redis://HOST:PORT[/DB]`). Connects on the first grant
    /// and reconnects after a failure, so the control plane starts and serves snapshots while
    /// Redis is down; grants answer 503 until it is back. Must run inside the Tokio runtime.
    pub fn connect(url: &str) -> Result<Broker, Error> {
        // The URL is not echoed: it may carry a password.
        let client = redis::Client::open(url).map_err(|e| {
            Error::Internal(format!(
                "--redis (TOLLGATE_REDIS_URL) must be a Redis URL, redis://HOST:PORT[/DB]: {e}"
            ))
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let redis = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| Error::Internal(format!("the Redis connection: {e}")))?;
        Ok(Broker {
            redis,
            script: Script::new(GRANT_SCRIPT),
            return_script: Script::new(RETURN_SCRIPT),
            clock_offset_ms: AtomicI64::new(0),
            gateways: AtomicU32::new(1),
        })
    }

    /// Subtracts the units of `request` from the fleet's counts, once per (gateway, id):
    /// `Ok(false)` when that return was applied before. `request` must have passed
    /// [`ReturnRequest::check`].
    pub async fn give_back(&self, request: &ReturnRequest) -> Result<bool, Error> {
        let mut invocation = self.return_script.prepare_invoke();
        invocation.key(return_key(request.contract, &request.gateway, &request.id));
        invocation.arg(&request.gateway);
        // The marker outlives every window it names: a replay after that finds no counter.
        let ends = request
            .windows
            .iter()
            .map(|w| window(w.per, w.start.saturating_mul(1000)).end)
            .max()
            .unwrap_or(0);
        invocation.arg((ends + COUNTER_GRACE_SECONDS) * 1000);
        for w in &request.windows {
            invocation.key(counter_key(request.contract, w.per, w.start));
            invocation.key(held_key(request.contract, w.per, w.start));
            invocation.arg(w.units.min(EXACT_UP_TO));
        }
        let mut conn = self.redis.clone();
        let applied: i64 = tokio::time::timeout(REDIS_TIMEOUT, invocation.invoke_async(&mut conn))
            .await
            .map_err(|_| {
                unavailable(format!(
                    "Redis did not answer the return within {} ms",
                    REDIS_TIMEOUT.as_millis()
                ))
            })?
            .map_err(|e| unavailable(format!("Redis failed the return: {e}")))?;
        Ok(applied == 1)
    }

    /// Grants `request` units of its contract's current windows. `request` must have passed
    /// [`LeaseRequest::check`].
    pub async fn grant(&self, request: &LeaseRequest) -> Result<Granted, Error> {
        let guess = local_ms().saturating_add_signed(self.clock_offset_ms.load(Ordering::Relaxed));
        self.grant_from(request, guess).await
    }

    /// [`Broker::grant`] with the windows first computed from `guess_ms` as Redis's time: when
    /// the guess is off by a window boundary, the script refuses and the broker recomputes
    /// from Redis's clock.
    pub async fn grant_from(
        &self,
        request: &LeaseRequest,
        guess_ms: u64,
    ) -> Result<Granted, Error> {
        let sizing_gateways = self.gateways.load(Ordering::Relaxed).max(1);
        let (seen, granted) = tokio::join!(
            self.see(&request.gateway, guess_ms),
            self.grant_windows(request, guess_ms, sizing_gateways)
        );
        let (granted, now_ms, windows, window_retries) = granted?;
        // The units are taken: the grant is answered even when the count of gateways failed.
        let gateways = match seen {
            Ok(n) => {
                self.gateways.store(n.max(1), Ordering::Relaxed);
                n.max(1)
            }
            Err(e) => {
                tracing::warn!(error = %e, "counting the fleet's gateways in Redis");
                sizing_gateways
            }
        };
        Ok(Granted {
            answer: LeaseAnswer {
                allowed: granted,
                now_ms,
                gateways,
                windows,
            },
            window_retries,
        })
    }

    async fn grant_windows(
        &self,
        request: &LeaseRequest,
        mut now_ms: u64,
        gateways: u32,
    ) -> Result<(u64, u64, Vec<LeaseWindow>, u32), Error> {
        for attempt in 0..ATTEMPTS {
            let windows: Vec<Window> = request
                .limits
                .iter()
                .map(|limit| window(limit.per, now_ms))
                .collect();
            let mut invocation = self.script.prepare_invoke();
            for (limit, w) in request.limits.iter().zip(&windows) {
                invocation.key(counter_key(request.contract, limit.per, w.start));
                invocation.key(held_key(request.contract, limit.per, w.start));
            }
            invocation
                .arg(request.want.min(EXACT_UP_TO))
                .arg(gateways)
                .arg(&request.gateway);
            for (i, (limit, w)) in request.limits.iter().zip(&windows).enumerate() {
                let held = request.held.get(i).copied().unwrap_or(0);
                invocation
                    .arg(limit.requests.min(EXACT_UP_TO))
                    .arg(w.start)
                    .arg(w.end)
                    .arg((w.end + COUNTER_GRACE_SECONDS) * 1000)
                    .arg(held.min(EXACT_UP_TO));
            }
            let mut conn = self.redis.clone();
            let reply: Vec<i64> =
                tokio::time::timeout(REDIS_TIMEOUT, invocation.invoke_async(&mut conn))
                    .await
                    .map_err(|_| {
                        unavailable(format!(
                            "Redis did not answer the grant within {} ms",
                            REDIS_TIMEOUT.as_millis()
                        ))
                    })?
                    .map_err(|e| unavailable(format!("Redis failed the grant: {e}")))?;
            let (&allowed, &redis_now_ms) = match (reply.first(), reply.get(1)) {
                (Some(g), Some(t)) if *t >= 0 => (g, t),
                _ => return Err(Error::Internal(format!("grant script answered {reply:?}"))),
            };
            let redis_now_ms = redis_now_ms as u64;
            self.clock_offset_ms.store(
                (redis_now_ms as i64).saturating_sub(local_ms() as i64),
                Ordering::Relaxed,
            );
            if allowed < 0 {
                now_ms = redis_now_ms;
                continue;
            }
            let per_window = reply.get(2..).unwrap_or_default();
            if per_window.len() != 2 * windows.len() {
                return Err(Error::Internal(format!("grant script answered {reply:?}")));
            }
            let windows = windows
                .iter()
                .zip(per_window.chunks_exact(2))
                .map(|(w, answer)| LeaseWindow {
                    start: w.start,
                    end: w.end,
                    granted: answer[0].max(0) as u64,
                    remaining: answer[1].max(0) as u64,
                })
                .collect();
            return Ok((allowed as u64, redis_now_ms, windows, attempt as u32));
        }
        Err(unavailable(format!(
            "the windows moved on {ATTEMPTS} times while granting; try again"
        )))
    }

    /// Notes that `gateway` asked at `now_ms`, forgets those silent for a minute, and answers
    /// how many are left (N).
    async fn see(&self, gateway: &str, now_ms: u64) -> Result<u32, Error> {
        let mut pipe = redis::pipe();
        pipe.cmd("ZADD")
            .arg(GATEWAYS_KEY)
            .arg(now_ms)
            .arg(gateway)
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(GATEWAYS_KEY)
            .arg("-inf")
            .arg(format!("({}", now_ms.saturating_sub(SEEN_MS)))
            .ignore()
            // The set goes when the fleet does.
            .cmd("PEXPIRE")
            .arg(GATEWAYS_KEY)
            .arg(2 * SEEN_MS)
            .ignore()
            .cmd("ZCARD")
            .arg(GATEWAYS_KEY);
        let mut conn = self.redis.clone();
        let (n,): (u32,) = tokio::time::timeout(REDIS_TIMEOUT, pipe.query_async(&mut conn))
            .await
            .map_err(|_| unavailable("Redis did not count the gateways in time".into()))?
            .map_err(|e| unavailable(format!("Redis failed counting the gateways: {e}")))?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_contracts_counters_share_a_cluster_slot() {
        let second = counter_key(42, Period::Second, 1_764_650_000);
        let month = counter_key(42, Period::Month, 1_764_547_200);
        assert_eq!(second, "tollgate:{c42}:second:1764650000");
        assert_eq!(month, "tollgate:{c42}:month:1764547200");
        // Redis Cluster hashes only what is between the first braces.
        let tag = |k: &str| k[k.find('{').unwrap()..=k.find('}').unwrap()].to_owned();
        assert_eq!(tag(&second), tag(&month));
        assert_ne!(tag(&second), tag(&counter_key(4, Period::Second, 0)));
    }
}
