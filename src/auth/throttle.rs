//! Slowing down password guessing: failed password checks are counted per user name
//! and per client address, and past a few free attempts each further one must wait a
//! delay that doubles with every failure (up to a ceiling). A throttled attempt is
//! refused at once with `429` and `Retry-After`, before any argon2 work, so guessing
//! costs the guesser time and berth nothing.
//!
//! Delays per user name stop at a few seconds, those per address at minutes: a guesser
//! spread over many addresses still gets only a few guesses a minute at one user, while
//! a user whose name is under attack is never locked out for long.
//!
//! Only checks that would need argon2 are throttled: a password verified moments ago,
//! a `login-command` credential (a MAC) and a bearer token pass untouched, so a user
//! whose name is under attack keeps working with a remembered password, a derived
//! credential or a token.
//!
//! Memory is bounded: keys are fixed-size hashes, an entry is forgotten once its
//! failures are old, and each table holds at most [`MAX_ENTRIES`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

/// Entries per table; past it, the oldest failures are forgotten first.
pub const MAX_ENTRIES: usize = 50_000;

/// How many failures each key is allowed before delays start, and how they grow.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub free_per_user: u32,
    pub free_per_address: u32,
    pub first_delay: Duration,
    pub max_delay_per_user: Duration,
    pub max_delay_per_address: Duration,
    /// Failures older than this are forgotten.
    pub window: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            free_per_user: 10,
            free_per_address: 10,
            first_delay: Duration::from_secs(1),
            max_delay_per_user: Duration::from_secs(10),
            max_delay_per_address: Duration::from_secs(300),
            window: Duration::from_secs(900),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last_failure: Instant,
    blocked_until: Instant,
}

type Key = [u8; 16];

#[derive(Default)]
struct Table(HashMap<Key, Entry>);

impl Table {
    fn blocked(&self, key: &Key, now: Instant) -> Option<Duration> {
        self.0
            .get(key)
            .filter(|e| e.blocked_until > now)
            .map(|e| e.blocked_until - now)
    }

    fn fail(&mut self, key: Key, free: u32, max_delay: Duration, limits: &Limits, now: Instant) {
        if self.0.len() >= MAX_ENTRIES && !self.0.contains_key(&key) {
            self.0
                .retain(|_, e| now.duration_since(e.last_failure) < limits.window);
            if self.0.len() >= MAX_ENTRIES {
                // Still full of live entries: drop the older half rather than grow.
                let mut ages: Vec<Instant> = self.0.values().map(|e| e.last_failure).collect();
                ages.sort_unstable();
                let cut = ages[ages.len() / 2];
                self.0.retain(|_, e| e.last_failure > cut);
            }
        }
        let entry = self.0.entry(key).or_insert(Entry {
            failures: 0,
            last_failure: now,
            blocked_until: now,
        });
        if now.duration_since(entry.last_failure) >= limits.window {
            entry.failures = 0;
        }
        entry.failures = entry.failures.saturating_add(1);
        entry.last_failure = now;
        if entry.failures > free {
            let doublings = (entry.failures - free - 1).min(20);
            let delay = limits
                .first_delay
                .saturating_mul(1 << doublings)
                .min(max_delay);
            entry.blocked_until = now + delay;
        }
    }

    fn forget(&mut self, key: &Key) {
        self.0.remove(key);
    }
}

/// Failed password checks by user name and by client address.
#[derive(Default)]
pub struct Throttle {
    limits: Limits,
    users: Mutex<Table>,
    addresses: Mutex<Table>,
}

fn user_key(user: &str) -> Key {
    let digest = Sha256::new()
        .chain_update(b"user\0")
        .chain_update(user.as_bytes())
        .finalize();
    digest[..16].try_into().expect("16 of 32 bytes")
}

/// IPv6 clients are counted by their /64: one host usually holds a whole /64.
fn address_key(address: IpAddr) -> Key {
    let mut hasher = Sha256::new().chain_update(b"address\0");
    match address {
        IpAddr::V4(v4) => hasher.update(v4.octets()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => hasher.update(v4.octets()),
            None => hasher.update(&v6.octets()[..8]),
        },
    }
    hasher.finalize()[..16].try_into().expect("16 of 32 bytes")
}

impl Throttle {
    pub fn new(limits: Limits) -> Self {
        Throttle {
            limits,
            ..Default::default()
        }
    }

    /// `Err(wait)` when this user name or this address must wait before its next check.
    pub fn check(&self, user: &str, address: Option<IpAddr>, now: Instant) -> Result<(), Duration> {
        let by_user = self
            .users
            .lock()
            .expect("throttle poisoned")
            .blocked(&user_key(user), now);
        let by_address = address.and_then(|a| {
            self.addresses
                .lock()
                .expect("throttle poisoned")
                .blocked(&address_key(a), now)
        });
        match by_user.max(by_address) {
            Some(wait) => Err(wait),
            None => Ok(()),
        }
    }

    pub fn failed(&self, user: &str, address: Option<IpAddr>, now: Instant) {
        let limits = self.limits;
        self.users.lock().expect("throttle poisoned").fail(
            user_key(user),
            limits.free_per_user,
            limits.max_delay_per_user,
            &limits,
            now,
        );
        if let Some(a) = address {
            self.addresses.lock().expect("throttle poisoned").fail(
                address_key(a),
                limits.free_per_address,
                limits.max_delay_per_address,
                &limits,
                now,
            );
        }
    }

    /// A correct password clears the user's and the address's record.
    pub fn succeeded(&self, user: &str, address: Option<IpAddr>) {
        self.users
            .lock()
            .expect("throttle poisoned")
            .forget(&user_key(user));
        if let Some(a) = address {
            self.addresses
                .lock()
                .expect("throttle poisoned")
                .forget(&address_key(a));
        }
    }

    #[cfg(test)]
    fn entries(&self) -> usize {
        self.users.lock().unwrap().0.len() + self.addresses.lock().unwrap().0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn delays_start_after_the_free_attempts_and_double() {
        let t = Throttle::new(Limits::default());
        let now = Instant::now();
        for _ in 0..10 {
            assert!(t.check("alice", ip("10.0.0.1"), now).is_ok());
            t.failed("alice", ip("10.0.0.1"), now);
        }
        assert!(t.check("alice", ip("10.0.0.1"), now).is_ok());
        t.failed("alice", ip("10.0.0.1"), now);
        assert_eq!(
            t.check("alice", ip("10.0.0.1"), now),
            Err(Duration::from_secs(1))
        );
        t.failed("alice", ip("10.0.0.1"), now);
        assert_eq!(
            t.check("alice", ip("10.0.0.1"), now),
            Err(Duration::from_secs(2))
        );
        let later = now + Duration::from_secs(3);
        assert!(t.check("alice", ip("10.0.0.1"), later).is_ok());
    }

    #[test]
    fn a_user_name_is_never_locked_out_for_long() {
        let t = Throttle::new(Limits::default());
        let now = Instant::now();
        for n in 0..500u32 {
            let address = format!("10.1.{}.{}", n / 200, n % 200);
            t.failed("alice", ip(&address), now);
        }
        let wait = t.check("alice", ip("10.9.9.9"), now).unwrap_err();
        assert!(wait <= Duration::from_secs(10), "{wait:?}");
    }

    #[test]
    fn an_address_guessing_many_names_is_throttled_by_address() {
        let t = Throttle::new(Limits::default());
        let now = Instant::now();
        for n in 0..11 {
            t.failed(&format!("user{n}"), ip("192.0.2.7"), now);
        }
        assert!(t.check("someone-else", ip("192.0.2.7"), now).is_err());
        assert!(t.check("someone-else", ip("192.0.2.8"), now).is_ok());
        // One IPv6 host holds its /64.
        for n in 0..11 {
            t.failed(&format!("v6-{n}"), ip(&format!("2001:db8::{n:x}")), now);
        }
        assert!(t.check("x", ip("2001:db8::ffff"), now).is_err());
    }

    #[test]
    fn a_success_clears_the_record_and_old_failures_are_forgotten() {
        let t = Throttle::new(Limits::default());
        let now = Instant::now();
        for _ in 0..12 {
            t.failed("bob", None, now);
        }
        assert!(t.check("bob", None, now).is_err());
        t.succeeded("bob", None);
        assert!(t.check("bob", None, now).is_ok());
        for _ in 0..12 {
            t.failed("carol", None, now);
        }
        let much_later = now + Duration::from_secs(3600);
        t.failed("carol", None, much_later);
        assert!(
            t.check("carol", None, much_later).is_ok(),
            "window restarted"
        );
    }

    #[test]
    fn the_tables_stay_bounded_under_a_flood_of_names() {
        let t = Throttle::new(Limits::default());
        let now = Instant::now();
        for n in 0..(MAX_ENTRIES + 5_000) {
            t.failed(&format!("guess-{n}"), None, now);
        }
        assert!(t.entries() <= MAX_ENTRIES);
    }
}
