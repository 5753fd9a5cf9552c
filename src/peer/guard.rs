//! The reconnect guard's schedule: when a peer connection re-offers.
//!
//! Upstream: first tick at once; then 3 s doubling with 10 % jitter up to the peer's timeout
//! (random 30–45 s); after an event (path lost, signal or relay reconnected) tick at once, then
//! back off from 800 ms (upstream's backoff ticker always ticks once immediately).
//! A relay-only peer re-offers at most 3 more times, then hourly.

use super::{RELAY_ONLY_OFFER_LIMIT, RELAY_ONLY_SLOW_INTERVAL};
use std::time::{Duration, Instant};

const NORMAL_START: Duration = Duration::from_secs(3);
const FAST_START: Duration = Duration::from_millis(800);

/// Offer schedule of one peer connection.
#[derive(Debug, Clone)]
pub struct Guard {
    next: Instant,
    interval: Duration,
    cap: Duration,
    relay_only_offers: usize,
}

impl Guard {
    /// A guard that fires at `now`.
    pub fn new(now: Instant) -> Self {
        Guard {
            next: now,
            interval: NORMAL_START,
            cap: Duration::from_secs(30),
            relay_only_offers: 0,
        }
    }

    /// When the next tick is due.
    pub fn next_tick(&self) -> Instant {
        self.next
    }

    /// Schedules the tick after this one.
    pub fn schedule_next(&mut self, now: Instant, rng: &mut impl rand::Rng) {
        if self.cap == Duration::from_secs(30) {
            self.cap = Duration::from_secs(rng.gen_range(30..=45));
        }
        let jitter = rng.gen_range(0.9..=1.1);
        let wait = self.interval.mul_f64(jitter).min(self.cap);
        self.next = now + wait;
        self.interval = (self.interval * 2).min(self.cap);
    }

    /// After an event: tick at once, then back off from 800 ms again.
    pub fn restart_fast(&mut self, now: Instant) {
        self.next = now;
        self.interval = FAST_START;
        self.relay_only_offers = 0;
    }

    /// Whether a relay-only peer should offer on this tick (3 more times, then hourly).
    pub fn take_relay_only_offer(&mut self) -> bool {
        if self.relay_only_offers < RELAY_ONLY_OFFER_LIMIT {
            self.relay_only_offers += 1;
            true
        } else {
            self.interval = RELAY_ONLY_SLOW_INTERVAL;
            self.cap = RELAY_ONLY_SLOW_INTERVAL;
            false
        }
    }
}
