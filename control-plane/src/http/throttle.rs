//! Throttling of `POST /oauth/token`: a source address may send so many token requests a
//! minute, and a `client_id` may fail authentication so many times a minute; past either, the
//! endpoint answers 429 with `Retry-After` until the minute ends. Memory is bounded: counts
//! live for one fixed minute, and at most [`MAX_TRACKED`] sources and client ids are tracked in
//! one (a minute that sees more refuses the untracked ones).
//!
//! Locking out by failures per client id lets anyone who knows a `client_id` delay that
//! client's token requests for the rest of a minute; the secret can no longer be guessed at
//! speed, which is the better side of that trade.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// Sources, and client ids, tracked in one minute.
pub const MAX_TRACKED: usize = 65_536;
/// Longest `client_id` counted as itself; longer ones share one count (no real one is).
const MAX_CLIENT_ID: usize = 128;

/// Why a token request was throttled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttled {
    Source,
    Client,
}

impl Throttled {
    pub fn as_str(self) -> &'static str {
        match self {
            Throttled::Source => "throttled_source",
            Throttled::Client => "throttled_client",
        }
    }
}

pub struct TokenThrottle {
    requests_per_source: u32,
    failures_per_client: u32,
    window: Mutex<Window>,
}

#[derive(Default)]
struct Window {
    minute: u64,
    sources: HashMap<IpAddr, u32>,
    failures: HashMap<String, u32>,
}

impl TokenThrottle {
    pub fn new(requests_per_source: u32, failures_per_client: u32) -> Self {
        TokenThrottle {
            requests_per_source,
            failures_per_client,
            window: Mutex::new(Window::default()),
        }
    }

    fn window(&self, now_s: u64) -> std::sync::MutexGuard<'_, Window> {
        let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        if window.minute != now_s / 60 {
            *window = Window {
                minute: now_s / 60,
                ..Window::default()
            };
        }
        window
    }

    /// Counts one request from `source` for `client_id`; refuses it when the source has sent
    /// its share this minute or the client id has failed too often.
    pub fn admit(&self, source: IpAddr, client_id: &str, now_s: u64) -> Result<(), Throttled> {
        let mut window = self.window(now_s);
        let source = source_key(source);
        let tracked = window.sources.len();
        let sent = match window.sources.get_mut(&source) {
            Some(sent) => sent,
            None if tracked >= MAX_TRACKED => return Err(Throttled::Source),
            None => window.sources.entry(source).or_insert(0),
        };
        *sent = sent.saturating_add(1);
        if *sent > self.requests_per_source {
            return Err(Throttled::Source);
        }
        if window
            .failures
            .get(client_key(client_id))
            .is_some_and(|&failed| failed >= self.failures_per_client)
        {
            return Err(Throttled::Client);
        }
        Ok(())
    }

    /// Counts a failed authentication of `client_id`.
    pub fn failed(&self, client_id: &str, now_s: u64) {
        let mut window = self.window(now_s);
        let key = client_key(client_id);
        let tracked = window.failures.len();
        match window.failures.get_mut(key) {
            Some(failed) => *failed = failed.saturating_add(1),
            None if tracked >= MAX_TRACKED => {}
            None => {
                window.failures.insert(key.to_owned(), 1);
            }
        }
    }

    /// Seconds until the current minute ends.
    pub fn retry_after(now_s: u64) -> u64 {
        60 - now_s % 60
    }
}

/// IPv6 sources by their /64, the block one host usually holds.
fn source_key(source: IpAddr) -> IpAddr {
    match source {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut octets = v6.octets();
                octets[8..].fill(0);
                IpAddr::V6(octets.into())
            }
        },
        v4 => v4,
    }
}

fn client_key(client_id: &str) -> &str {
    if client_id.len() > MAX_CLIENT_ID {
        "<long>"
    } else {
        client_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The start of a minute (1_800_000_000 is one).
    const T: u64 = 1_800_000_000;

    #[test]
    fn a_source_gets_its_share_per_minute() {
        let throttle = TokenThrottle::new(3, 10);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(throttle.admit(ip, "a", T), Ok(()));
        }
        assert_eq!(throttle.admit(ip, "a", T + 59), Err(Throttled::Source));
        assert_eq!(throttle.admit("192.0.2.2".parse().unwrap(), "a", T), Ok(()));
        assert_eq!(throttle.admit(ip, "a", T + 60), Ok(()));
    }

    #[test]
    fn failures_lock_a_client_id_for_the_minute() {
        let throttle = TokenThrottle::new(100, 2);
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        throttle.failed("tgc_x", T);
        assert_eq!(throttle.admit(ip, "tgc_x", T), Ok(()));
        throttle.failed("tgc_x", T);
        assert_eq!(throttle.admit(ip, "tgc_x", T), Err(Throttled::Client));
        assert_eq!(throttle.admit(ip, "tgc_y", T), Ok(()));
        assert_eq!(throttle.admit(ip, "tgc_x", T + 60), Ok(()));
    }

    #[test]
    fn ipv6_sources_count_by_their_64() {
        let throttle = TokenThrottle::new(1, 10);
        assert_eq!(
            throttle.admit("2001:db8::1".parse().unwrap(), "a", T),
            Ok(())
        );
        assert_eq!(
            throttle.admit("2001:db8::2".parse().unwrap(), "a", T),
            Err(Throttled::Source)
        );
    }
}
